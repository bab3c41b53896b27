"""Shards read from and caches written to S3, against a real S3 API on loopback (moto's server mode).

The job runs in its own process with its own embedded Ray: the driver and the actors reach the
server over HTTP, as they would reach S3, not through an in-process mock.
"""

import json
import subprocess

import pytest

from pipeline.encode.fault_injection import FAULTS_ENV
from tests.media import write_video_shards
from tests.processes import run_job


@pytest.fixture(scope="module")
def s3(s3_endpoint, tmp_path_factory):
    """Bucket `videos` holding three shards."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("videos")
    local = tmp_path_factory.mktemp("s3-shards")
    expected = write_video_shards(local, num_shards=3, samples_per_shard=2)
    for shard in sorted(local.glob("*.tar")):
        fs.put_file(str(shard), f"videos/shards/{shard.name}")
    return fs, s3_endpoint, expected


def _encode(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_job("jobs.encode", "--vae", "tiny", "--allow-random-weights", "--num-frames", "4", "--resolution", "32",
                   "--scores", "psnr", "--no-progress", "--num-actors", "2", "--cpus-per-actor", "1", *args, env=env)


@pytest.mark.slow
def test_s3_in_s3_out_with_atomic_commit_and_resume(s3):
    fs, env, expected = s3
    # The first attempt at one shard dies mid-shard: its temporary object must not survive.
    result = _encode({**env, FAULTS_ENV: "exit:shard-00001:0"},
                     "--input", "s3://videos/shards/shard-{00000..00002}.tar", "--output", "s3://videos/cache")
    assert result.returncode == 0, result.stderr
    fs.invalidate_cache()
    assert sorted(fs.ls("videos/cache", detail=False)) == [
        "videos/cache/_manifest.json", "videos/cache/shard-00000.parquet", "videos/cache/shard-00001.parquet",
        "videos/cache/shard-00002.parquet"]  # no `_tmp/` objects left behind
    manifest = json.loads(fs.cat_file("videos/cache/_manifest.json"))
    assert manifest["totals"]["committed"] == 3 and manifest["totals"]["clips"] == 6
    assert "failed_attempts" in manifest["shards"]["shard-00001"]
    import pyarrow.dataset as ds

    rows = ds.dataset("videos/cache", filesystem=fs, format="parquet").to_table(columns=["sample_key", "psnr"]).to_pylist()
    assert sorted(row["sample_key"] for row in rows) == sorted(k for keys in expected.values() for k in keys)
    assert all(row["psnr"] is not None for row in rows)
    # The manifest's checksum is the committed object's.
    import hashlib

    assert manifest["shards"]["shard-00000"]["sha256"] == hashlib.sha256(
        fs.cat_file("videos/cache/shard-00000.parquet")).hexdigest()

    again = _encode(env, "--input", "s3://videos/shards/*.tar", "--output", "s3://videos/cache")
    assert again.returncode == 0, again.stderr
    assert "3 already committed" in again.stdout


def test_missing_s3_objects_are_a_usage_error(s3):
    _, env, _ = s3
    result = _encode(env, "--input", "s3://videos/shards/nothing-*.tar", "--output", "s3://videos/other")
    assert result.returncode == 2
    assert "glob matches no object" in result.stderr
