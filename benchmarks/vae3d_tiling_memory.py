"""Peak memory of tiled 3D VAE encoding of a long clip, against the same clip untiled and a one-tile clip, and
tiled-vs-untiled agreement.

    python -m benchmarks.vae3d_tiling_memory [--size 128] [--long-frames 129]

Each memory case runs in its own process (peak RSS is per process). The architecture is hunyuan-vae's
at half width (block_out_channels 64/128/256/256; the full width costs ~4x the time) with random
weights; tiling uses the default config (temporal tiles of 1+16 frames, 4 frames overlap; up to 256x256
fits one spatial tile). The short clip (17 frames) is one temporal tile; agreement is measured at 33 frames.

`table_rows(quick)` gives the rows of `python -m benchmarks`: untiled over tiled peak RSS growth during the
long clip's encode (what tiling bounds; the ~0.5 GiB before it, torch and the model, is the same for both),
the one-tile clip's peak RSS over the long clip's (goal ≥ 0.67: the long clip within 1.5x), and the PSNR
between decodes of tiled and untiled latents; `quick` uses `--size 32`.
"""

import argparse
import json
import math
import time

import torch

from benchmarks._common import moving_pattern, peak_rss_mb, rss_growth_mb, run_child, table_row

MODULE = "benchmarks.vae3d_tiling_memory"
HALF_WIDTH = {"_class_name": "AutoencoderKLHunyuanVideo", "block_out_channels": [64, 128, 256, 256]}
SHORT_FRAMES = 17
AGREEMENT_FRAMES = 33


def _model(use_tiling: bool = True):
    import vae

    torch.manual_seed(0)
    return vae.load_model({**HALF_WIDTH, "use_tiling": use_tiling}).to(memory_format=torch.channels_last_3d)


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d)


def memory_case(frames: int, size: int, use_tiling: bool) -> dict:
    model = _model(use_tiling)
    x = _layout(moving_pattern(frames, size, size))
    start = time.perf_counter()
    with torch.inference_mode():
        moments, growth = rss_growth_mb(lambda: model.encode_moments(x))
    return {"frames": frames, "latent_shape": list(moments.shape), "seconds": time.perf_counter() - start,
            "rss_growth_mb": growth, "peak_rss_mb": peak_rss_mb()}


def agreement(frames: int, size: int) -> dict:
    tiled, untiled = _model(True), _model(False)
    untiled.load_state_dict(tiled.state_dict())
    x = _layout(moving_pattern(frames, size, size))
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


def _child(case: str, frames: int, size: int) -> dict:
    return run_child(MODULE, "--case", case, str(frames), "--size", str(size))


def measure(size: int = 128, long_frames: int = 129) -> dict[str, dict]:
    """The memory cases (tiled short, tiled long, untiled long) and the agreement, each from its own process."""
    return {"tiled_short": _child("tiled", SHORT_FRAMES, size), "tiled_long": _child("tiled", long_frames, size),
            "untiled_long": _child("untiled", long_frames, size),
            "agreement": _child("agreement", AGREEMENT_FRAMES, size)}


def _growth(case: dict) -> float:
    return case["rss_growth_mb"]


def table_rows(quick: bool) -> list[dict[str, object]]:
    """Untiled/tiled peak RSS growth of the long clip, one-tile/long clip peak RSS tiled, and the tiled-vs-untiled
    decode PSNR."""
    size = 32 if quick else 64
    r = measure(size)
    tiled, untiled, short, a = r["tiled_long"], r["untiled_long"], r["tiled_short"], r["agreement"]
    clip = f"{tiled['frames']}×{size}²"
    return [
        table_row(f"3D encode tiled, {clip}, peak RSS growth during encode MiB", _growth(tiled),
                  f"the same clip untiled {_growth(untiled):.0f} MiB", _growth(untiled) / _growth(tiled), "≥ 1.5"),
        table_row(f"3D encode tiled, {clip}, peak RSS MiB", tiled["peak_rss_mb"],
                  f"a one-tile {short['frames']}×{size}² clip tiled {short['peak_rss_mb']:.0f} MiB",
                  short["peak_rss_mb"] / tiled["peak_rss_mb"], "≥ 0.67"),
        table_row(f"3D encode tiled vs untiled, {a['frames']}×{size}², PSNR dB of their decodes "
                  f"(ratio = the value; random weights)", a["decode_psnr_db"],
                  f"untiled latent (latents differ by up to {a['latent_max_abs_diff']:.3g}, largest "
                  f"{a['latent_max_abs']:.3g})", a["decode_psnr_db"], "-"),
    ]


def _print(r: dict[str, dict], size: int) -> None:
    for name in ("tiled_short", "tiled_long", "untiled_long"):
        case = r[name]
        print(f"encode {case['frames']:3d} frames {name.split('_')[0]:>7s}: peak RSS {case['peak_rss_mb']:.0f} MiB "
              f"(+{case['rss_growth_mb']:.0f} MiB during encode), {case['seconds']:.1f} s, "
              f"latent {case['latent_shape']}")
    tiled, short, untiled = r["tiled_long"], r["tiled_short"], r["untiled_long"]
    print(f"peak RSS ratio {tiled['frames']}/{short['frames']} frames tiled: "
          f"{tiled['peak_rss_mb'] / short['peak_rss_mb']:.2f}x (must be < 1.5x)")
    print(f"peak RSS growth during encode, untiled/tiled at {tiled['frames']} frames: "
          f"{_growth(untiled) / _growth(tiled):.2f}x")
    a = r["agreement"]
    print(f"tiled vs untiled at {a['frames']} frames {size}x{size}: latent max abs diff "
          f"{a['latent_max_abs_diff']:.4f} (max |latent| {a['latent_max_abs']:.3f}, relative RMS "
          f"{a['latent_rel_rms']:.4f}), PSNR of decodes {a['decode_psnr_db']:.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--long-frames", type=int, default=129)
    parser.add_argument("--case", nargs=2, metavar=("KIND", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        kind, frames = args.case[0], int(args.case[1])
        if kind == "agreement":
            print(json.dumps(agreement(frames, args.size)))
        else:
            print(json.dumps(memory_case(frames, args.size, use_tiling=kind == "tiled")))
        return
    print(f"hunyuan-vae layout at half width (block_out_channels 64/128/256/256), random weights, fp32 CPU, "
          f"{torch.get_num_threads()} threads, {args.size}x{args.size}, default tiling")
    _print(measure(args.size, args.long_frames), args.size)


if __name__ == "__main__":
    main()
