"""The training job's metrics file, its HTML plot and its reconstruction grids, as real files in tmp_path."""

import json
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.train.training_log import (
    append_metrics,
    read_metrics,
    save_reconstruction_grid,
    write_metrics_plot,
)


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, {"step": 0, "kind": "train", "loss": 1.5, "lr": np.float32(0.25)})
    append_metrics(path, {"step": 10, "kind": "val", "psnr": 31.0, "lpips": None})
    assert read_metrics(path) == [
        {"step": 0, "kind": "train", "loss": 1.5, "lr": 0.25},
        {"step": 10, "kind": "val", "psnr": 31.0, "lpips": None},
    ]


def test_non_finite_floats_are_written_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, {"step": 3, "kind": "train", "loss": math.nan, "kl": math.inf, "gen": -math.inf})
    line = path.read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"step": 3, "kind": "train", "loss": None, "kl": None, "gen": None}


def test_nested_values_are_kept_and_their_non_finite_floats_nulled(tmp_path):
    # The trainer's bad-steps log: which clips, and the losses that were not finite.
    path = tmp_path / "bad_steps.jsonl"
    append_metrics(path, {"step": 7, "keys": ["a", "b"], "values": {"loss": math.nan, "kl": (1.0, math.inf)}})
    assert read_metrics(path) == [{"step": 7, "keys": ["a", "b"], "values": {"loss": None, "kl": [1.0, None]}}]


def test_a_torn_last_line_is_skipped_and_cut_by_the_next_append(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, {"step": 1, "kind": "train", "loss": 1.0})
    with open(path, "a") as f:  # what a writer killed mid-line leaves
        f.write('{"step": 2, "kind": "tra')
    assert read_metrics(path) == [{"step": 1, "kind": "train", "loss": 1.0}]

    append_metrics(path, {"step": 2, "kind": "train", "loss": 0.5})
    assert path.read_text().count("\n") == 2
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_a_complete_line_that_is_not_json_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train"}\nnot json\n{"step": 2, "kind": "train"}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2 is not a JSON line"):
        read_metrics(path)


def test_metrics_plot(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in range(0, 100, 10):
        append_metrics(path, {"step": step, "kind": "train", "loss": 2.0 - step / 100, "kl_loss": 0.5})
    for step, psnr in [(0, 20.0), (50, 25.5), (90, math.nan)]:
        append_metrics(path, {"step": step, "kind": "val", "loss": 1.8, "psnr": psnr, "ssim": 0.8, "lpips": 0.2,
                              "disc_accuracy": 0.5, "note": "text is not a metric"})
    append_metrics(path, {"rank": 0, "key": "clip-3", "reason": "not a metrics record"})
    append_metrics(path, {"step": 5, "kind": "test", "other": 1.0})
    out = tmp_path / "metrics.html"
    write_metrics_plot(path, out)

    page = out.read_text()
    names = ["loss", "kl_loss", "psnr", "ssim", "lpips", "disc_accuracy"]
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) == len(names)
    charts = {ET.fromstring(svg).get("aria-label"): ET.fromstring(svg) for svg in svgs}  # well-formed XML
    assert list(charts) == names
    assert "http" not in page and "<script" not in page and "src=" not in page
    assert "note" not in charts and "rank" not in charts and "other" not in charts

    # train and val of one name share a chart; axis labels give the extremes of step and value.
    assert len(charts["loss"].findall("polyline")) == 2
    labels = [text.text for text in charts["loss"].iter("text")]
    assert {"0", "90", "2", "1.1", "step", "train", "val"} <= set(labels)
    # The NaN PSNR is a gap: two points, from 20 to 25.5 over steps 0..50.
    psnr = charts["psnr"]
    assert len(psnr.find("polyline").get("points").split()) == 2
    assert {"20", "25.5", "0", "50"} <= {text.text for text in psnr.iter("text")}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_metrics_plot_of_an_empty_file(tmp_path):
    (tmp_path / "metrics.jsonl").touch()
    write_metrics_plot(tmp_path / "metrics.jsonl", tmp_path / "metrics.html")
    assert "No metrics yet" in (tmp_path / "metrics.html").read_text()


def constant_clips(colors: list[tuple[float, float, float]], frames: int = 6, size: int = 8) -> torch.Tensor:
    rgb = torch.tensor(colors).view(len(colors), 3, 1, 1, 1)
    return rgb.expand(len(colors), 3, frames, size, size).clone()


def to_pixel(color: tuple[float, float, float]) -> tuple[int, ...]:
    return tuple(round((c + 1) * 127.5) for c in color)


def test_reconstruction_grid_puts_each_clip_in_its_cells(tmp_path):
    real_colors = [(1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (-1.0, 1.0, -1.0)]
    fake_colors = [(-1.0, 1.0, -1.0), (1.0, 1.0, -1.0), (0.5, -0.5, 0.0), (-1.0, -1.0, -1.0), (0.0, 1.0, 1.0)]
    real, fake = constant_clips(real_colors), constant_clips(fake_colors)
    fake[1] = 3.0  # out of range: clipped to white
    path = tmp_path / "recon.png"
    save_reconstruction_grid(real, fake, path, max_clips=4, max_frames=3)

    image = Image.open(path)
    assert image.mode == "RGB" and image.size == (3 * 8, 2 * 4 * 8)  # 3 frames wide; 4 clips, real over fake
    pixels = np.asarray(image)
    for clip in range(4):
        expected_fake = (255, 255, 255) if clip == 1 else to_pixel(fake_colors[clip])
        for frame in range(3):
            real_cell = pixels[16 * clip : 16 * clip + 8, 8 * frame : 8 * frame + 8]
            fake_cell = pixels[16 * clip + 8 : 16 * clip + 16, 8 * frame : 8 * frame + 8]
            assert (real_cell == to_pixel(real_colors[clip])).all(), (clip, frame)
            assert (fake_cell == expected_fake).all(), (clip, frame)
    assert [p.name for p in tmp_path.iterdir()] == ["recon.png"]


def test_reconstruction_grid_spreads_its_frames_over_the_clip(tmp_path):
    # Brightness rises from -1 to 1 over 9 frames: the grid must show frames 0, 4 and 8.
    brightness = torch.linspace(-1, 1, 9)
    real = brightness.view(1, 1, 9, 1, 1).expand(1, 3, 9, 4, 4).clone()
    save_reconstruction_grid(real, -real, tmp_path / "recon.png", max_frames=3)
    pixels = np.asarray(Image.open(tmp_path / "recon.png"))
    assert pixels.shape == (8, 12, 3)
    for column, t in enumerate([0, 4, 8]):
        assert (pixels[:4, 4 * column : 4 * column + 4] == round((brightness[t].item() + 1) * 127.5)).all()
        assert (pixels[4:, 4 * column : 4 * column + 4] == round((1 - brightness[t].item()) * 127.5)).all()

    # Fewer frames and clips than the maximum: all of them.
    save_reconstruction_grid(real[:, :, :2], real[:, :, :2], tmp_path / "short.png")
    assert Image.open(tmp_path / "short.png").size == (2 * 4, 2 * 4)


def test_reconstruction_grid_refuses_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        save_reconstruction_grid(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 3, 2, 4, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        save_reconstruction_grid(torch.zeros(1, 1, 2, 4, 4), torch.zeros(1, 1, 2, 4, 4), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
