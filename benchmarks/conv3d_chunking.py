"""Peak memory and time of 3D VAE encoding with every Conv3d chunked over channels, against the same model
unchunked (`--conv3d-chunk-elements off`), in one run.

    python -m benchmarks.conv3d_chunking [--frames 17] [--size 128]

Models, random weights, fp32 on CPU: the native causal 3D VAE in hunyuan-vae's layout at half width
(block_out_channels 64/128/256/256) and untiled, so its largest activations are whole-clip; and diffusers'
`AutoencoderKLWan` at Wan 2.1's published size (base_dim 96, z_dim 16), which encodes frame chunk by frame
chunk through its causal-conv cache. Each case runs in its own process (peak RSS is per process); the limit
is elements per conv call's input or output chunk, for one sample.
"""

import argparse
import json
import time

import torch

from benchmarks._common import moving_pattern, peak_rss_mb, run_child

MODULE = "benchmarks.conv3d_chunking"
MODELS = {
    "hunyuan-half-width": {"_class_name": "AutoencoderKLHunyuanVideo", "block_out_channels": [64, 128, 256, 256],
                           "use_tiling": False},
    "wan2.1": {"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
               "num_res_blocks": 2, "temperal_downsample": [False, True, True]},
}
LIMITS = ("off", str(2**24), str(2**22))


def case(model_name: str, limit: str, frames: int, size: int) -> dict:
    import vae

    torch.manual_seed(0)
    model = vae.load_model(MODELS[model_name]).eval()
    if isinstance(model, vae.AutoEncoder3D):
        model = model.to(memory_format=torch.channels_last_3d)  # as the job runs native models on CPU
    changed = 0 if limit == "off" else vae.chunk_conv3d_layers(model, int(limit))
    x = moving_pattern(frames, size, size)
    before = peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        moments = model.encode_moments(x)
    return {"seconds": time.perf_counter() - start, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
            "chunked_convs": changed, "checksum": moments.double().abs().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(*args.case, args.frames, args.size)))
        return
    print(f"encode_moments of {args.frames} frames at {args.size}x{args.size}, fp32 CPU, "
          f"{torch.get_num_threads()} threads, random weights; baseline: the same model unchunked")
    for name in MODELS:
        results = {limit: run_child(MODULE, "--case", name, limit, "--frames", str(args.frames),
                                    "--size", str(args.size)) for limit in LIMITS}
        base = results["off"]
        for limit, r in results.items():
            growth = r["peak_rss_mb"] - r["rss_before_mb"]
            base_growth = base["peak_rss_mb"] - base["rss_before_mb"]
            print(f"{name:20s} limit {limit:>9s} ({r['chunked_convs']:3d} convs): peak RSS {r['peak_rss_mb']:7.0f} MiB "
                  f"(+{growth:6.0f} during encode, {growth / base_growth:5.2f}x baseline), {r['seconds']:6.2f} s "
                  f"({r['seconds'] / base['seconds']:4.2f}x), same output: "
                  f"{abs(r['checksum'] - base['checksum']) <= 1e-6 * abs(base['checksum'])}")


if __name__ == "__main__":
    main()
