"""python -m benchmarks [--quick] [--json PATH]

One table of ratios, each measured in this one run against a named baseline on the same weights, inputs and
threads, with the goal beside it, plus the machine, threads and library versions; the same as JSON (default
`benchmarks/latest.json`, or `latest-quick.json`). The rows come from the modules below, each of which also
runs alone (`python -m benchmarks.<module>`) with more options and says how it measures.

`--quick` (under 5 minutes here) has every comparison at small sizes; the full run (under 20) adds 512² 2D,
a larger 3D clip with peak memory, every decode case, the scores' cost, buckets and Conv3d
chunking.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks import (
    bucket_encoding,
    conv3d_chunking,
    decode_throughput,
    diffusers_overhead,
    encode_2d_vs_diffusers,
    pipeline_throughput,
    reader_throughput,
    scoring_cost,
    vae3d_tiling_memory,
    vae3d_vs_diffusers,
)

# In table order; the last three only in the full run.
MODULES = [encode_2d_vs_diffusers, vae3d_vs_diffusers, diffusers_overhead, pipeline_throughput, decode_throughput,
           vae3d_tiling_memory, reader_throughput, scoring_cost, bucket_encoding, conv3d_chunking]
FULL_RUN_ONLY = {scoring_cost, bucket_encoding, conv3d_chunking}


def _machine() -> dict[str, str | int]:
    import diffusers

    cpu, flags = platform.processor() or "?", set()
    try:
        lines = (line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        info = {key.strip(): value.strip() for key, value in lines}
        cpu, flags = info["model name"], set(info["flags"].split())
    except (OSError, KeyError):
        pass
    # bf16 figures depend on it: AMX makes oneDNN's bf16 convolutions several times its fp32 ones.
    capability = torch.backends.cpu.get_cpu_capability() + (" + AMX" if "amx_bf16" in flags else "")
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "threads": torch.get_num_threads(),
            "cpu_capability": capability, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}


def run(quick: bool) -> tuple[list[dict[str, object]], dict[str, float]]:
    """Every module's rows (ratio: ours over the baseline's, higher is better), and each module's seconds."""
    rows: list[dict[str, object]] = []
    seconds: dict[str, float] = {}
    for module in MODULES:
        if quick and module in FULL_RUN_ONLY:
            continue
        began = time.perf_counter()
        rows.extend(module.table_rows(quick))
        seconds[module.__name__.rsplit(".", 1)[-1]] = time.perf_counter() - began
    return rows, seconds


def _number(value: float) -> str:
    """Three significant digits, without an exponent for large values (clips/s of a reader)."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def format_table(rows: list[dict[str, object]], machine: dict[str, object]) -> str:
    lines = [f"{machine['cpu']} ({machine['cpu_capability']}), {machine['cores']} cores, {machine['threads']} torch "
             f"threads, GPU {machine['gpu']}; torch {machine['torch']}, diffusers {machine['diffusers']}, "
             f"Python {machine['python']}", "",
             "| figure | ours | baseline | ratio | goal |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['figure']} | {_number(row['value'])} | {row['baseline']} | {row['ratio']:.2f} | {row['goal']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every comparison at small sizes (under 5 minutes)")
    parser.add_argument("--json", help="where to write the table as JSON (default: benchmarks/latest[-quick].json)")
    args = parser.parse_args()
    machine = _machine()
    began = time.perf_counter()
    rows, seconds = run(args.quick)
    total = time.perf_counter() - began
    print(format_table(rows, machine))
    print(f"\n{total / 60:.1f} minutes: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items()))
    path = Path(args.json or Path(__file__).parent / f"latest{'-quick' if args.quick else ''}.json")
    path.write_text(json.dumps({"machine": machine, "quick": args.quick, "minutes": total / 60, "seconds": seconds,
                                "rows": rows}, indent=1) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
