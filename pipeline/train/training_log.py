"""What a VAE training job leaves in its output folder besides checkpoints: `metrics.jsonl` (one JSON object
per line, appended as training goes), an HTML page of its curves, and PNG grids of real vs reconstructed frames.

A line of `metrics.jsonl` counts once its newline is on disk: a job killed mid-write leaves at most one torn
line at the end, which `read_metrics` skips and the next `append_metrics` cuts off. The HTML page and the PNGs
are replaced atomically, so a reader never sees half of one.
"""

import html
import json
import math
import numbers
import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import torch
from einops import rearrange
from PIL import Image

KINDS = ("train", "val")

# Chart geometry in SVG pixels; the margins leave room for the axis labels.
_WIDTH, _HEIGHT = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 30, 40
_COLORS = {"train": "#1f77b4", "val": "#d62728"}
# Sparse series (validation every few thousand steps) get a dot per point; dense ones would be a smear.
_MAX_DOTTED_POINTS = 60


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one line of the JSON Lines file `path` and fsync it.

    In OUT/metrics.jsonl a record has an int "step", a "kind" in `KINDS` and its metrics, which is what
    `write_metrics_plot` reads; other logs (bad steps, skipped samples) may hold any JSON values. NaN and
    infinite floats, nested ones included, are written as null so the file stays valid JSON.
    """
    line = json.dumps(_finite_json(record), allow_nan=False) + "\n"
    with open(path, "a+b") as f:
        _cut_torn_line(f)
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of `path` in file order, without a torn last line (one whose newline never got written)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    records = []
    # The piece after the last newline is empty, or a torn line.
    for number, line in enumerate(lines[:-1], start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not a JSON line: {error}") from None
    return records


def write_metrics_plot(metrics_path: Path, out_html: Path) -> None:
    """Write `out_html`: one SVG line chart per numeric metric of `metrics_path` against the step, train and
    val records of the same name as two series of one chart (records without a step and kind are left out).
    The page has no scripts and loads nothing."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for record in read_metrics(metrics_path):
        if record.get("kind") not in KINDS or not isinstance(record.get("step"), int):
            continue
        for name, value in record.items():
            if name in ("step", "kind") or isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
                continue
            points = series.setdefault(name, {}).setdefault(record["kind"], [])
            if value is not None:  # a non-finite value: a gap in the curve, not a point
                points.append((record["step"], float(value)))
    charts = "\n".join(_chart(name, by_kind) for name, by_kind in series.items()) or "<p>No metrics yet.</p>"
    title = html.escape(f"Training metrics: {Path(metrics_path).name}")
    page = f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>body {{ font-family: sans-serif; }} svg {{ display: block; margin-bottom: 16px; }}</style>
</head>
<body>
<h1>{title}</h1>
{charts}
</body>
</html>
"""
    _write_atomically(Path(out_html), page.encode("utf-8"))


def save_reconstruction_grid(
    real: torch.Tensor, reconstruction: torch.Tensor, path: Path, max_clips: int = 4, max_frames: int = 4
) -> None:
    """Write a PNG to `path`: for each of the first `max_clips` clips, a row of `max_frames` frames spread evenly
    over the clip (first and last included) above the same frames of its reconstruction.

    `real` and `reconstruction` are float (B, 3, T, H, W) in [-1, 1] (values outside are clipped); the image is
    (max_frames * W) wide and (2 * max_clips * H) high, or smaller when B or T is.
    """
    if real.shape != reconstruction.shape or real.ndim != 5 or real.shape[1] != 3:
        raise ValueError(f"expected two (B, 3, T, H, W) tensors of one shape, got {tuple(real.shape)} and "
                         f"{tuple(reconstruction.shape)}")
    clips, frames = min(real.shape[0], max_clips), min(real.shape[2], max_frames)
    picked = torch.linspace(0, real.shape[2] - 1, frames).round().long()
    pairs = torch.stack([real[:clips, :, picked], reconstruction[:clips, :, picked]], dim=1)
    grid = rearrange(pairs, "n pair c f h w -> (n pair h) (f w) c")
    pixels = ((grid.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    _write_atomically(Path(path), buffer.getvalue())


def _finite_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _finite_json(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(item) for item in value]
    # numbers.Real also catches numpy's scalars, which json cannot write as they are.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def _cut_torn_line(f: BinaryIO) -> None:
    """Truncate `f` (opened "a+b") after its last newline: the rest is a line a killed writer never finished."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    f.seek(0)
    f.truncate(f.read().rfind(b"\n") + 1)


def _chart(name: str, by_kind: dict[str, list[tuple[int, float]]]) -> str:
    by_kind = {kind: sorted(points) for kind, points in by_kind.items() if points}
    header = f'<svg width="{_WIDTH}" height="{_HEIGHT}" role="img" aria-label="{html.escape(name)}">'
    title = f'<text x="{_LEFT}" y="18" font-weight="bold">{html.escape(name)}</text>'
    if not by_kind:
        return f'{header}\n{title}\n<text x="{_LEFT}" y="{_HEIGHT // 2}">no finite values</text>\n</svg>'
    steps = [step for points in by_kind.values() for step, _ in points]
    values = [value for points in by_kind.values() for _, value in points]
    x_min, x_max, y_min, y_max = min(steps), max(steps), min(values), max(values)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    bottom, right = _TOP + plot_h, _LEFT + plot_w

    def xy(step: int, value: float) -> tuple[float, float]:
        return _LEFT + _fraction(step, x_min, x_max) * plot_w, bottom - _fraction(value, y_min, y_max) * plot_h

    parts = [
        header,
        title,
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
        f'<text x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end" font-size="12">{y_max:.4g}</text>',
        f'<text x="{_LEFT - 6}" y="{bottom}" text-anchor="end" font-size="12">{y_min:.4g}</text>',
        f'<text x="{_LEFT}" y="{bottom + 16}" text-anchor="middle" font-size="12">{x_min}</text>',
        f'<text x="{right}" y="{bottom + 16}" text-anchor="middle" font-size="12">{x_max}</text>',
        f'<text x="{_LEFT + plot_w / 2}" y="{bottom + 32}" text-anchor="middle" font-size="12">step</text>',
    ]
    for i, (kind, points) in enumerate(by_kind.items()):
        color = _COLORS[kind]
        coords = [xy(step, value) for step, value in points]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        if len(coords) <= _MAX_DOTTED_POINTS:
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in coords]
        parts.append(f'<text x="{right - 50 * (i + 1)}" y="18" fill="{color}" font-size="12">{kind}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _fraction(value: float, low: float, high: float) -> float:
    # A single step or a flat curve has no range to spread over: it sits in the middle.
    return 0.5 if high == low else (value - low) / (high - low)


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the page from anyone serving the folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
