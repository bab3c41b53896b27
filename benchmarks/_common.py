"""Helpers shared by the benchmarks: child processes, peak RSS, a synthetic clip."""

import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over `repeats` rounds after a warm-up call, the functions taking turns, so
    a slow spell of a shared machine does not fall on one of them only."""
    for function in functions.values():
        function()  # warm-up: oneDNN primitive creation, the allocator
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            began = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - began)
    return best


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
