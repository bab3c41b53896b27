"""Peak memory and time of 3D VAE encoding with every Conv3d chunked over channels, against the same model
unchunked (`--conv3d-chunk-elements off`), in one run.

    python -m benchmarks.conv3d_chunking [--frames 17] [--size 128] [--models hunyuan-half-width,wan2.1]

Models, random weights, fp32 on CPU: the native causal 3D VAE in hunyuan-vae's layout at half width
(block_out_channels 64/128/256/256) and untiled, so its largest activations are whole-clip; and diffusers'
`AutoencoderKLWan` at Wan 2.1's published size (base_dim 96, z_dim 16), which encodes frame chunk by frame
chunk through its causal-conv cache. Each case runs in its own process (peak RSS is per process); the limit
is elements per conv call's input or output chunk, for one sample.

`table_rows(quick)` gives the rows of `python -m benchmarks`, per model and limit: unchunked over chunked time,
and over chunked peak RSS growth during encode (no goals: chunking trades time for memory); `quick` uses
`--frames 5 --models hunyuan-half-width` (5 frames at 128² still exceed 2^22 elements, not 2^24; a Wan 2.1
process alone takes ~17 s here, most of it importing diffusers and initialising its weights).
"""

import argparse
import json
import time

import torch

from benchmarks._common import moving_pattern, peak_rss_mb, rss_growth_mb, run_child, table_row

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
    start = time.perf_counter()
    with torch.inference_mode():
        moments, growth = rss_growth_mb(lambda: model.encode_moments(x))
    return {"seconds": time.perf_counter() - start, "rss_growth_mb": growth, "peak_rss_mb": peak_rss_mb(),
            "chunked_convs": changed, "checksum": moments.double().abs().mean().item()}


def measure(frames: int = 17, size: int = 128, models: tuple[str, ...] = tuple(MODELS)) -> dict[str, dict[str, dict]]:
    """Per model, per limit ("off" first): the `case` result, each from its own process."""
    return {name: {limit: run_child(MODULE, "--case", name, limit, "--frames", str(frames), "--size", str(size))
                   for limit in LIMITS} for name in models}


def _growth(result: dict) -> float:
    return result["rss_growth_mb"]


def table_rows(quick: bool) -> list[dict[str, object]]:
    """Per model and chunking limit: unchunked over chunked time, and over chunked peak RSS growth."""
    frames, size, models = (5, 128, ("hunyuan-half-width",)) if quick else (17, 128, tuple(MODELS))
    rows = []
    for name, results in measure(frames, size, models).items():
        base = results["off"]
        for limit, r in results.items():
            if limit == "off":
                continue
            what = f"{name} encode {frames}×{size}², Conv3d chunked at 2^{int(limit).bit_length() - 1} elements"
            rows.append(table_row(f"{what}, s", r["seconds"], f"unchunked {base['seconds']:.3g} s",
                                  base["seconds"] / r["seconds"], "-"))
            rows.append(table_row(f"{what}, peak RSS growth during encode MiB", _growth(r),
                                  f"unchunked {_growth(base):.0f} MiB", _growth(base) / _growth(r), "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(*args.case, args.frames, args.size)))
        return
    models = tuple(args.models.split(","))
    if unknown := sorted(set(models) - set(MODELS)):
        parser.error(f"unknown models: {', '.join(unknown)}")
    print(f"encode_moments of {args.frames} frames at {args.size}x{args.size}, fp32 CPU, "
          f"{torch.get_num_threads()} threads, random weights; baseline: the same model unchunked")
    for name, results in measure(args.frames, args.size, models).items():
        base = results["off"]
        for limit, r in results.items():
            print(f"{name:20s} limit {limit:>9s} ({r['chunked_convs']:3d} convs): peak RSS {r['peak_rss_mb']:7.0f} MiB "
                  f"(+{_growth(r):6.0f} during encode, {_growth(r) / _growth(base):5.2f}x baseline), "
                  f"{r['seconds']:6.2f} s ({r['seconds'] / base['seconds']:4.2f}x), same output: "
                  f"{abs(r['checksum'] - base['checksum']) <= 1e-6 * abs(base['checksum'])}")


if __name__ == "__main__":
    main()
