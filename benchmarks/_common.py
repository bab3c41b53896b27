"""Helpers shared by the benchmarks: child processes, peak RSS, a synthetic clip."""

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), reported in KiB, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB. VmHWM, not getrusage's ru_maxrss, which a child keeps
    from its parent across fork and exec: a child of `python -m benchmarks` would report the parent's peak."""
    return _status_mb("VmHWM")


Result = TypeVar("Result")


def rss_growth_mb(run: Callable[[], Result]) -> tuple[Result, float]:
    """`run()`'s result and how far this process's resident set rose above where it stood just before, in MiB.
    The peak (VmHWM) is reset first (`clear_refs` 5), so an earlier, higher peak, such as building the model's
    random weights, cannot hide the peak of `run()`."""
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    result = run()
    return result, _status_mb("VmHWM") - before


def interleaved_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each function over `repeats` rounds, the functions taking turns, so a slow spell of a shared
    machine does not fall on one of them only. No warm-up: the caller's first calls are that."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            began = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - began)
    return times


def best_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` interleaved rounds after a warm-up call."""
    for function in functions.values():
        function()  # warm-up: oneDNN primitive creation, the allocator
    return {name: min(times) for name, times in interleaved_times(functions, repeats).items()}


def run_child(module: str, *args: str) -> dict:
    """Run `python -m module args...` in a fresh process; it prints one JSON line last."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def moving_pattern(frames: int, height: int, width: int) -> torch.Tensor:
    """A smooth moving RGB pattern in [-1, 1], (1, 3, T, H, W): something like video, not noise."""
    t = torch.arange(frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.arange(height, dtype=torch.float32).view(1, -1, 1) / height
    x = torch.arange(width, dtype=torch.float32).view(1, 1, -1) / width
    channels = [
        torch.sin(2 * math.pi * (3 * x + 2 * y) + 0.3 * t),
        torch.cos(2 * math.pi * (4 * y - x) - 0.2 * t),
        torch.sin(2 * math.pi * 5 * x * y + 0.1 * t),
    ]
    return torch.stack(channels).unsqueeze(0)


def uint8_clip(frames: int, size: int) -> torch.Tensor:
    """Seeded random uint8 (1, T, H, W, 3) frames, as the decoder hands them to the encoder."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, frames, size, size, 3), dtype=torch.uint8, generator=generator)


def table_row(figure: str, value: float, baseline: str, ratio: float, goal: str) -> dict[str, object]:
    """One row of `python -m benchmarks`: what was measured, our value, the named baseline (with its value),
    ours over the baseline's with higher better, and the goal it is held to ("-" where there is none)."""
    return {"figure": figure, "value": value, "baseline": baseline, "ratio": ratio, "goal": goal}
