"""A threshold change is not a re-encode: the refusal names what differs, `--rethreshold` rewrites only `passed`."""

import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.encode import main as encode_main
from pipeline.cache.manifest import MANIFEST_NAME
from pipeline.cache.schema import read_cache_metadata
from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.run.job_summary import format_summary
from pipeline.run.runner import run_encode_job
from tests.media import encode_mp4, moving_pattern, write_tar

SETTINGS = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=4, resolution="32",
                          scoring=ScoreSettings(scores=("psnr", "ssim")))
RUN = RunSettings(num_actors=2, cpus_per_actor=1, progress=False)
ARGS = ["--vae", "tiny", "--allow-random-weights", "--num-frames", "4", "--resolution", "32", "--scores", "psnr,ssim",
        "--no-progress"]


@pytest.fixture
def shards(tmp_path) -> Path:
    """Two shards of three good videos and one that is not a video (an error row)."""
    root = tmp_path / "shards"
    root.mkdir()
    for shard in range(2):
        samples = [(f"s{shard}v{i}", {"mp4": encode_mp4(moving_pattern(8, 48, 64, seed=10 * shard + i))})
                   for i in range(3)]
        write_tar(root / f"shard-{shard:05d}.tar", [*samples, (f"s{shard}junk", {"mp4": b"\x00junk" * 40})])
    return root


def _table(path: Path):
    return pq.read_table(path)


def test_a_changed_threshold_is_refused_naming_each_difference(shards, tmp_path, local_ray, capsys):
    cache = tmp_path / "cache"
    assert run_encode_job(str(shards / "shard-00000.tar"), str(cache), SETTINGS, RUN).exit_status == 0
    common = ["--input", str(shards / "shard-00000.tar"), "--output", str(cache), *ARGS]

    assert encode_main([*common, "--min-psnr", "30"]) == 2
    err = capsys.readouterr().err
    assert "scoring.min_psnr: None → 30" in err
    assert "Only thresholds differ" in err and "--rethreshold" in err and "python -m jobs.filter" in err

    assert encode_main([*common, "--min-psnr", "30", "--frame-stride", "2"]) == 2
    err = capsys.readouterr().err
    assert "frame_stride: 1 → 2" in err and "scoring.min_psnr: None → 30" in err and "Only thresholds" not in err
    assert encode_main([*common, "--min-psnr", "30", "--frame-stride", "2", "--rethreshold"]) == 2
    err = capsys.readouterr().err
    assert "differs in more than its thresholds: frame_stride: 1 → 2." in err

    # Without the manifest, the files' metadata still says what differs.
    (cache / MANIFEST_NAME).unlink()
    assert encode_main([*common, "--max-lpips", "0.5", "--scores", "psnr,ssim,lpips"]) == 2
    err = capsys.readouterr().err
    assert "scores_computed: " in err and "thresholds.lpips: unset → '<= 0.5'" in err


def test_rethreshold_rewrites_only_passed_then_the_job_goes_on(shards, tmp_path, local_ray):
    cache = tmp_path / "cache"
    assert run_encode_job(str(shards / "shard-00000.tar"), str(cache), SETTINGS, RUN).exit_status == 0
    before = _table(cache / "shard-00000.parquet")
    scores = sorted(row["psnr"] for row in before.to_pylist() if row["status"] == "ok")
    bound = scores[len(scores) // 2]  # a stored score itself: `>=` must keep it
    settings = replace(SETTINGS, scoring=replace(SETTINGS.scoring, min_psnr=bound))

    # shard-00001 is new: after the rewrite, the job encodes it with the new thresholds.
    report = run_encode_job(str(shards / "shard-*.tar"), str(cache), settings, replace(RUN, rethreshold=True))
    assert report.exit_status == 0 and report.resume.rethresholded == ["shard-00000"]
    assert "rethresholded     1 committed file(s)" in format_summary(report)
    after = _table(cache / "shard-00000.parquet")
    assert after.drop_columns(["passed"]).equals(before.drop_columns(["passed"]))
    assert after.column("latent").to_pylist() == before.column("latent").to_pylist()
    for row in after.to_pylist():
        assert row["passed"] == (None if row["status"] == "error" else row["psnr"] >= bound)
    assert {row["passed"] for row in after.to_pylist()} == {True, False, None}

    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    for name in ("shard-00000", "shard-00001"):
        rows = _table(cache / f"{name}.parquet").to_pylist()
        metadata = read_cache_metadata(pq.read_schema(cache / f"{name}.parquet").metadata)
        assert metadata["thresholds"] == {"psnr": f">= {bound:g}"} and metadata["job_hash"] == manifest["job"]["hash"]
        assert manifest["shards"][name]["rejected"] == sum(row["passed"] is False for row in rows)
    assert manifest["job"]["identity"]["scoring"]["min_psnr"] == bound
    assert manifest["totals"]["rejected"] == sum(entry["rejected"] for entry in manifest["shards"].values())

    # The same thresholds again: everything is committed, nothing is written.
    files = {path.name: path.stat().st_mtime_ns for path in cache.glob("*.parquet")}
    report = run_encode_job(str(shards / "shard-*.tar"), str(cache), settings, RUN)
    assert report.exit_status == 0 and len(report.skipped) == 2 and not report.resume.rethresholded
    assert {path.name: path.stat().st_mtime_ns for path in cache.glob("*.parquet")} == files
