"""Peak memory of tiled 3D VAE encoding for a long and a short clip, and tiled-vs-untiled agreement.

    python -m benchmarks.vae3d_tiling_memory

Each memory case runs in its own process (peak RSS is per process). The architecture is hunyuan-vae's
at half width (block_out_channels 64/128/256/256; the full width costs ~4x the time) with random
weights; tiling uses the default config (temporal tiles of 1+16 frames, 4 frames overlap; 128x128 fits
one spatial tile).
"""

import argparse
import json
import math
import time

import torch

from benchmarks._common import moving_pattern, peak_rss_mb, run_child

MODULE = "benchmarks.vae3d_tiling_memory"
HALF_WIDTH = {"_class_name": "AutoencoderKLHunyuanVideo", "block_out_channels": [64, 128, 256, 256]}
SIZE = 128


def _model(use_tiling: bool = True):
    import vae

    torch.manual_seed(0)
    return vae.load_model({**HALF_WIDTH, "use_tiling": use_tiling}).to(memory_format=torch.channels_last_3d)


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d)


def memory_case(frames: int) -> dict:
    model = _model()
    x = _layout(moving_pattern(frames, SIZE, SIZE))
    before = peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        moments = model.encode_moments(x)
    return {"frames": frames, "latent_shape": list(moments.shape), "seconds": time.perf_counter() - start,
            "rss_before_mb": before, "peak_rss_mb": peak_rss_mb()}


def agreement(frames: int) -> dict:
    tiled, untiled = _model(True), _model(False)
    untiled.load_state_dict(tiled.state_dict())
    x = _layout(moving_pattern(frames, SIZE, SIZE))
    with torch.inference_mode():
        z_tiled, _ = tiled.encode(x)
        z_untiled, _ = untiled.encode(x)
        video_tiled = untiled.decode(z_tiled).clamp(-1, 1)
        video_untiled = untiled.decode(z_untiled).clamp(-1, 1)
    mse = (video_tiled - video_untiled).double().pow(2).mean().item()
    return {
        "frames": frames,
        "latent_max_abs_diff": (z_tiled - z_untiled).abs().max().item(),
        "latent_max_abs": z_untiled.abs().max().item(),
        "latent_rel_rms": ((z_tiled - z_untiled).norm() / z_untiled.norm()).item(),
        "decode_psnr_db": 100.0 if mse == 0 else min(100.0, 10 * math.log10(4.0 / mse)),  # data range 2 ([-1, 1])
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["memory", "agreement"], help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case == "memory":
        print(json.dumps(memory_case(args.frames)))
        return
    if args.case == "agreement":
        print(json.dumps(agreement(args.frames)))
        return
    print(f"hunyuan-vae layout at half width (block_out_channels 64/128/256/256), random weights, fp32 CPU, "
          f"{torch.get_num_threads()} threads, {SIZE}x{SIZE}, default tiling")
    results = {frames: run_child(MODULE, "--case", "memory", "--frames", str(frames)) for frames in (17, 129)}
    for frames, r in results.items():
        print(f"encode {frames:3d} frames tiled: peak RSS {r['peak_rss_mb']:.0f} MiB "
              f"(before encode {r['rss_before_mb']:.0f} MiB), {r['seconds']:.1f} s, latent {r['latent_shape']}")
    ratio = results[129]["peak_rss_mb"] / results[17]["peak_rss_mb"]
    print(f"peak RSS ratio 129/17 frames: {ratio:.2f}x (must be < 1.5x)")
    a = run_child(MODULE, "--case", "agreement", "--frames", "33")
    print(f"tiled vs untiled at 33 frames {SIZE}x{SIZE}: latent max abs diff {a['latent_max_abs_diff']:.4f} "
          f"(max |latent| {a['latent_max_abs']:.3f}, relative RMS {a['latent_rel_rms']:.4f}), "
          f"PSNR of decodes {a['decode_psnr_db']:.2f} dB")


if __name__ == "__main__":
    main()
