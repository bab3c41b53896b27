"""Ctrl-C and SIGTERM: one line, exit 130 / 143, no temporary file, and a rerun that completes the cache."""

import os
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.encode.fault_injection import FAULTS_ENV
from tests.cache_checks import assert_every_sample_once
from tests.media import write_video_shards
from tests.processes import HUNG_AFTER_S, job_process, run_job, wait_for

# Whole jobs as processes, interrupted and rerun: tens of seconds each.
pytestmark = pytest.mark.slow

ENCODE_ARGS = ["--vae", "tiny", "--allow-random-weights", "--num-frames", "4", "--resolution", "32",
               "--num-actors", "1", "--cpus-per-actor", "1", "--no-progress"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return root, write_video_shards(root, num_shards=3, samples_per_shard=2)


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("uninterrupted")
    done = run_job("jobs.encode", "--input", str(shards[0] / "shard-*.tar"), "--output", str(cache), *ENCODE_ARGS)
    assert done.returncode == 0, done.stderr
    return cache


def _content(cache: Path) -> dict[str, list[dict]]:
    """Every row of every file; file footers hold timings and pids, which differ between runs."""
    return {path.name: pq.read_table(path).to_pylist() for path in sorted(cache.glob("*.parquet"))}


@pytest.mark.parametrize(("signum", "status", "whole_group"), [
    (signal.SIGINT, 130, True),    # Ctrl-C in a terminal signals the whole foreground process group
    (signal.SIGTERM, 143, False),  # a scheduler's kill signals the job's process
])
def test_a_signal_mid_job_stops_cleanly_and_the_rerun_completes_the_same_cache(
        shards, uninterrupted, tmp_path, signum, status, whole_group):
    root, expected = shards
    cache = tmp_path / "cache"
    # shard-00000 commits; shard-00001's attempt then stays mid-shard until the signal ends the job.
    held = f"wait-for-file={tmp_path / 'never'}:shard-00001:0"
    with job_process("jobs.encode", "--input", str(root / "shard-*.tar"), "--output", str(cache), *ENCODE_ARGS,
                     env={FAULTS_ENV: held}) as process:
        wait_for(lambda: (cache / "shard-00000.parquet").exists() and any((cache / "_tmp").glob("*")), process)
        if whole_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        out, err = process.communicate(timeout=HUNG_AFTER_S)
    assert process.returncode == status, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last == "interrupted: 1 of 3 shards committed (1 in this run); rerun the same command to resume"
    assert not (cache / "_tmp").exists()
    assert sorted(path.name for path in cache.iterdir()) == ["_manifest.json", "shard-00000.parquet"]

    rerun = run_job("jobs.encode", "--input", str(root / "shard-*.tar"), "--output", str(cache), *ENCODE_ARGS)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 already committed before this run" in rerun.stdout
    assert_every_sample_once(cache, expected)
    assert _content(cache) == _content(uninterrupted)
