"""python -m benchmarks [--quick] [--json PATH]

One table of ratios, each measured in this one run against a named baseline on the same weights, inputs and
threads, with the goal beside it, plus the machine, threads and library versions; the same as JSON (default
`benchmarks/latest.json`, or `latest-quick.json`). Each figure comes from a module that also runs alone
(`python -m benchmarks.<module>`) with more options.

`--quick` (a few minutes here): 2D at 256² (flux-ae, sd-ae), 3D on a 9-frame 64² clip, no peak-memory children.
The full run: 2D at 256² and 512², 3D on a 17-frame 96² clip with each variant's peak memory.
"""

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from benchmarks import encode_2d_vs_diffusers, vae3d_vs_diffusers


def _machine() -> dict[str, str | int]:
    import diffusers

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}


def run(quick: bool) -> list[dict[str, object]]:
    """Rows of {figure, value, baseline, ratio, goal}; ratio is ours over the baseline's, higher is better."""
    rows: list[dict[str, object]] = []
    sizes = (256,) if quick else (256, 512)
    for preset in ("flux-ae", "sd-ae"):
        for size in sizes:
            result = encode_2d_vs_diffusers.measure(preset, size, frames=2, repeats=2)
            ours = result["production_fps"]
            baselines = {"diffusers": ("diffusers AutoencoderKL (as shipped)", "≥ 1.5" if size == 256 else "-"),
                         "diffusers_channels_last": ("diffusers AutoencoderKL moved to channels-last", "> 1.0")}
            for baseline, (name, goal) in baselines.items():
                rows.append({"figure": f"2D encode {preset} {size}², frames/s", "value": ours,
                             "baseline": f"{name} {result[baseline + '_fps']:.3g}",
                             "ratio": ours / result[f"{baseline}_fps"], "goal": goal})
            rows.append({"figure": f"2D encode {preset} {size}², time its convolutions take alone",
                         "value": result["conv_share"],
                         "baseline": f"its convolutions alone, {result['conv_ceiling_gflops']:.0f} GFLOP/s",
                         "ratio": result["conv_share"], "goal": "≥ 0.6"})
    frames, size = (9, 64) if quick else (17, 96)
    result = vae3d_vs_diffusers.measure(frames, size, repeats=2, with_rss=not quick)
    ours, theirs = result["ours"], result["diffusers"]
    rows.append({"figure": f"3D encode hunyuan-vae {frames}×{size}², frames/s", "value": frames / ours["seconds"],
                 "baseline": f"diffusers AutoencoderKLHunyuanVideo {frames / theirs['seconds']:.3g}",
                 "ratio": theirs["seconds"] / ours["seconds"], "goal": "≥ 1.2"})
    if not quick:
        rows.append({"figure": f"3D encode hunyuan-vae {frames}×{size}², peak RSS MiB", "value": ours["peak_rss_mb"],
                     "baseline": f"diffusers {theirs['peak_rss_mb']:.0f} MiB",
                     "ratio": theirs["peak_rss_mb"] / ours["peak_rss_mb"], "goal": "≥ 1.0"})
    return rows


def format_table(rows: list[dict[str, object]], machine: dict[str, object]) -> str:
    lines = [f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads, GPU {machine['gpu']}; "
             f"torch {machine['torch']}, diffusers {machine['diffusers']}, Python {machine['python']}", "",
             "| figure | ours | baseline | ratio | goal |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['figure']} | {row['value']:.3g} | {row['baseline']} | {row['ratio']:.2f} | {row['goal']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small sizes only (a few minutes)")
    parser.add_argument("--json", help="where to write the table as JSON (default: benchmarks/latest[-quick].json)")
    args = parser.parse_args()
    machine = _machine()
    rows = run(args.quick)
    print(format_table(rows, machine))
    path = Path(args.json or Path(__file__).parent / f"latest{'-quick' if args.quick else ''}.json")
    path.write_text(json.dumps({"machine": machine, "quick": args.quick, "rows": rows}, indent=1) + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
