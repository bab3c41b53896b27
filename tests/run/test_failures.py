"""The runner under failure, on real Ray: dead actors, hung decoders, lost nodes, a killed driver.

Faults come from the documented test-only switch `VLC_TEST_FAULTS` (pipeline/encode/fault_injection.py).
"""

import json
import math
from contextlib import AbstractContextManager
from pathlib import Path
from subprocess import Popen

import pytest

from pipeline.cache.manifest import MANIFEST_NAME
from pipeline.encode.fault_injection import FAULTS_ENV
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.run.runner import run_encode_job
from tests.cache_checks import assert_every_sample_once
from tests.media import write_video_shards
from tests.processes import (
    HUNG_AFTER_S,
    job_process,
    kill_group,
    start_cluster,
    wait_for,
)

# Real Ray failures (dead actors, hung decoders, lost nodes, a killed driver): tens of seconds each.
pytestmark = pytest.mark.slow

SETTINGS = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=4, resolution="32")
ENCODE_ARGS = ["--vae", "tiny", "--allow-random-weights", "--num-frames", "4", "--resolution", "32", "--no-progress"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return root, write_video_shards(root, num_shards=3, samples_per_shard=2)


def _run(shards, cache, monkeypatch, faults: str, **run) -> tuple:
    root, expected = shards
    monkeypatch.setenv(FAULTS_ENV, faults)
    settings = RunSettings(**{"num_actors": 2, "cpus_per_actor": 1, "progress": False, **run})
    report = run_encode_job(str(root / "shard-*.tar"), str(cache), SETTINGS, settings)
    return report, json.loads((cache / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def healthy_job_s(shards, tmp_path_factory, local_ray) -> float:
    """Seconds a healthy encode of these shards takes on this machine, as fast and as loaded as it is now."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        report, _ = _run(shards, tmp_path_factory.mktemp("healthy"), monkeypatch, "")
    assert report.exit_status == 0
    return report.elapsed_s


def test_actor_killed_mid_shard_is_retried_by_a_new_actor(shards, tmp_path, monkeypatch, local_ray):
    report, manifest = _run(shards, tmp_path, monkeypatch, "exit:shard-00001:0")
    assert report.exit_status == 0 and report.retries == 1
    assert_every_sample_once(tmp_path, shards[1])
    assert "actor died" in manifest["shards"]["shard-00001"]["failed_attempts"][0]


def test_hung_decoder_is_killed_by_the_shard_timeout_and_retried(shards, tmp_path, monkeypatch, healthy_job_s):
    # The healthy job placed actors, loaded models and encoded every shard, two of them on one actor:
    # twice that outlasts one healthy attempt on any machine, wherever the timeout clock starts. Whole
    # seconds keep the reason string exact.
    timeout = math.ceil(2 * healthy_job_s)
    report, manifest = _run(shards, tmp_path, monkeypatch, "hang:shard-00000:0", shard_timeout=timeout)
    assert report.exit_status == 0 and report.retries == 1
    assert_every_sample_once(tmp_path, shards[1])
    assert f"timed out after {timeout} s" in manifest["shards"]["shard-00000"]["failed_attempts"][0]


def test_a_shard_failing_every_attempt_is_recorded_and_the_job_goes_on(shards, tmp_path, monkeypatch, local_ray):
    faults = ",".join(f"exit:shard-00002:{attempt}" for attempt in range(2))
    report, manifest = _run(shards, tmp_path, monkeypatch, faults, max_retries=1)
    assert report.exit_status == 3
    entry = manifest["shards"]["shard-00002"]
    assert entry["status"] == "failed" and len(entry["attempts"]) == 2 and "actor died" in entry["reason"]
    assert manifest["totals"]["committed"] == 2
    # Rerunning (without the fault) retries just that shard and completes the cache.
    report, _ = _run(shards, tmp_path, monkeypatch, "")
    assert report.exit_status == 0 and len(report.skipped) == 2
    assert_every_sample_once(tmp_path, shards[1])


def test_actors_are_recycled_after_max_shards(shards, tmp_path, monkeypatch, local_ray):
    report, manifest = _run(shards, tmp_path, monkeypatch, "", num_actors=1, max_shards_per_actor=1)
    assert report.exit_status == 0
    assert len({entry["pid"] for entry in manifest["shards"].values()}) == 3
    assert_every_sample_once(tmp_path, shards[1])


def _encode_process(shards_root: Path, cache: Path, *extra: str, env: dict) -> AbstractContextManager[Popen]:
    return job_process("jobs.encode", "--input", str(shards_root / "shard-*.tar"), "--output", str(cache),
                       *ENCODE_ARGS, *extra, env=env)


def _temporary_files(cache: Path) -> list[Path]:
    return [path for path in (cache / "_tmp").glob("*")] if (cache / "_tmp").exists() else []


def _held_until(release: Path, shards: range) -> str:
    """Faults that hold the first attempt of each of these shards mid-shard until `release` exists."""
    return ",".join(f"wait-for-file={release}:shard-{i:05d}:0" for i in shards)


def test_driver_killed_mid_job_then_the_same_command_completes(shards, tmp_path):
    root, expected = shards
    cache = tmp_path / "cache"
    # Shard 0 commits; the next shard's attempt then waits for a file nobody creates, so the driver is
    # killed mid-shard however long it takes to get there.
    with _encode_process(root, cache, "--num-actors", "1", "--cpus-per-actor", "1",
                         env={FAULTS_ENV: _held_until(tmp_path / "never", range(1, 3))}) as process:
        wait_for(lambda: list(cache.glob("*.parquet")) and _temporary_files(cache), process)
        kill_group(process)
    assert [path.name for path in cache.glob("*.parquet")] == ["shard-00000.parquet"]
    with _encode_process(root, cache, env={FAULTS_ENV: ""}) as rerun:
        out, err = rerun.communicate(timeout=HUNG_AFTER_S)
    assert rerun.returncode == 0, err
    assert "already committed before this run" in out
    assert_every_sample_once(cache, expected)
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    assert manifest["totals"]["committed"] == 3


def test_node_removed_mid_job_the_job_completes(shards, tmp_path):
    root, expected = shards
    cache, release = tmp_path / "cache", tmp_path / "release"
    cluster = start_cluster()
    try:
        with _encode_process(root, cache, "--address", cluster.address, "--num-actors", "2", "--cpus-per-actor", "1",
                             env={FAULTS_ENV: _held_until(release, range(3))}) as process:
            # Both actors are held mid-shard once two temporary files exist; one node goes, then the
            # other actor is let go on.
            wait_for(lambda: len(_temporary_files(cache)) >= 2, process)
            cluster.remove_node(next(iter(cluster.worker_nodes)))
            release.touch()
            _, err = process.communicate(timeout=HUNG_AFTER_S)
        assert process.returncode == 0, err
        assert_every_sample_once(cache, expected)
        manifest = json.loads((cache / MANIFEST_NAME).read_text())
        assert any("failed_attempts" in entry for entry in manifest["shards"].values())
    finally:
        cluster.shutdown()
