"""The runner under failure, on real Ray: dead actors, hung decoders, lost nodes, a killed driver.

Faults come from the documented test-only switch `VLC_TEST_FAULTS` (pipeline/fault_injection.py).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.encode_settings import EncodeSettings, RunSettings
from pipeline.fault_injection import FAULTS_ENV
from pipeline.manifest import MANIFEST_NAME
from pipeline.runner import run_encode_job
from tests.cache_checks import assert_every_sample_once
from tests.media import write_video_shards

ROOT = Path(__file__).resolve().parents[1]
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


def test_actor_killed_mid_shard_is_retried_by_a_new_actor(shards, tmp_path, monkeypatch, local_ray):
    report, manifest = _run(shards, tmp_path, monkeypatch, "exit:shard-00001:0")
    assert report.exit_status == 0 and report.retries == 1
    assert_every_sample_once(tmp_path, shards[1])
    assert "actor died" in manifest["shards"]["shard-00001"]["failed_attempts"][0]


def test_hung_decoder_is_killed_by_the_shard_timeout_and_retried(shards, tmp_path, monkeypatch, local_ray):
    started = time.monotonic()
    report, manifest = _run(shards, tmp_path, monkeypatch, "hang:shard-00000:0", shard_timeout=8)
    assert report.exit_status == 0 and report.retries == 1
    assert time.monotonic() - started < 60
    assert_every_sample_once(tmp_path, shards[1])
    assert "timed out after 8 s" in manifest["shards"]["shard-00000"]["failed_attempts"][0]


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


def _encode_process(shards_root: Path, cache: Path, *extra: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.encode", "--input", str(shards_root / "shard-*.tar"), "--output", str(cache),
         *ENCODE_ARGS, *extra],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def _wait_for(condition, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _temporary_files(cache: Path) -> list[Path]:
    return [path for path in (cache / "_tmp").glob("*")] if (cache / "_tmp").exists() else []


def test_driver_killed_mid_job_then_the_same_command_completes(shards, tmp_path):
    root, expected = shards
    slow = ",".join(f"sleep=4:shard-{i:05d}:0" for i in range(3))
    process = _encode_process(root, tmp_path, "--num-actors", "1", "--cpus-per-actor", "1",
                              env={FAULTS_ENV: slow})
    try:
        _wait_for(lambda: list(tmp_path.glob("*.parquet")) and _temporary_files(tmp_path))
    finally:
        # The whole process group: the driver and the embedded Ray it started, as a crash would.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert 1 <= len(list(tmp_path.glob("*.parquet"))) < 3
    rerun = _encode_process(root, tmp_path, env={FAULTS_ENV: ""})
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err
    assert "already committed before this run" in out
    assert_every_sample_once(tmp_path, expected)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["totals"]["committed"] == 3


def test_node_removed_mid_job_the_job_completes(shards, tmp_path):
    from ray.cluster_utils import Cluster

    root, expected = shards
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    slow = ",".join(f"sleep=6:shard-{i:05d}:0" for i in range(3))
    try:
        process = _encode_process(root, tmp_path, "--address", cluster.address, "--num-actors", "2",
                                  "--cpus-per-actor", "1", "--shard-timeout", "60", env={FAULTS_ENV: slow})
        # Both actors are mid-shard once two temporary files exist; then one node goes away.
        _wait_for(lambda: len(_temporary_files(tmp_path)) >= 2)
        cluster.remove_node(workers[0])
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        assert_every_sample_once(tmp_path, expected)
        manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
        assert any("failed_attempts" in entry for entry in manifest["shards"].values())
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        cluster.shutdown()
