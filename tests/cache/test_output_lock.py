"""One job per output: a second job is refused naming the holder; a dead job's lock is taken over."""

import json
import socket
import subprocess
import sys
import time

import pytest

from pipeline.cache.output_lock import LOCK_NAME, OutputLock, OutputLockedError
from tests.processes import run_job


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _holder(pid: int, host: str, expires: float | None = None) -> bytes:
    return json.dumps({"job": "jobs.encode", "host": host, "pid": pid, "started": "2026-01-01T00:00:00+00:00",
                       "token": "t", "expires": expires}).encode()


def test_a_second_lock_on_a_local_output_names_the_holder_and_release_frees_it(tmp_path):
    with OutputLock(str(tmp_path), "jobs.encode") as first:
        assert first.took_over is None
        with pytest.raises(OutputLockedError, match=rf"in use by jobs.encode \(pid \d+ on {socket.gethostname()}"):
            OutputLock(str(tmp_path), "jobs.filter").acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with OutputLock(str(tmp_path), "jobs.filter"):
        pass


def test_a_lock_file_left_by_a_dead_job_is_taken_over(tmp_path):
    pid = _dead_pid()
    (tmp_path / LOCK_NAME).write_bytes(_holder(pid, socket.gethostname()))
    with OutputLock(str(tmp_path), "jobs.encode") as lock:
        assert lock.took_over is not None and lock.took_over.pid == pid
        assert f"pid {pid}" in lock.takeover_notice


def test_a_second_encode_job_on_a_locked_output_exits_2_naming_the_holder(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    with OutputLock(str(tmp_path / "cache"), "jobs.encode"):
        for job in (["jobs.encode", "--input", str(shards / "*.tar"), "--vae", "tiny", "--allow-random-weights"],
                    ["jobs.filter", "--cache", str(tmp_path / "source"), "--where", "passed"]):
            refused = run_job(*job, "--output", str(tmp_path / "cache"))
            assert refused.returncode == 2, refused.stderr
            assert "is in use by jobs.encode (pid" in refused.stderr and "Traceback" not in refused.stderr


def test_leases_on_an_object_store(s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("lease-bucket")
    output = "s3://lease-bucket/cache"
    with OutputLock(output, "jobs.encode") as first:
        assert first.took_over is None
        with pytest.raises(OutputLockedError, match="in use by jobs.encode .*once its lease lapses"):
            OutputLock(output, "jobs.filter").acquire()
    assert not fs.exists(f"lease-bucket/cache/{LOCK_NAME}")
    # A lease whose holder ran elsewhere is taken over only once it has lapsed.
    fs.pipe_file(f"lease-bucket/cache/{LOCK_NAME}", _holder(1, "another-host", expires=time.time() + 3600))
    with pytest.raises(OutputLockedError, match="another-host"):
        OutputLock(output, "jobs.encode").acquire()
    fs.pipe_file(f"lease-bucket/cache/{LOCK_NAME}", _holder(1, "another-host", expires=time.time() - 1))
    with OutputLock(output, "jobs.encode") as lock:
        assert lock.took_over.host == "another-host"
    # One whose holder ran here and is gone is taken over at once.
    fs.pipe_file(f"lease-bucket/cache/{LOCK_NAME}", _holder(_dead_pid(), socket.gethostname(),
                                                             expires=time.time() + 3600))
    with OutputLock(output, "jobs.encode") as lock:
        assert lock.took_over is not None


def test_a_lease_is_renewed_while_its_job_runs(s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("renew-bucket")
    path = f"renew-bucket/cache/{LOCK_NAME}"
    with OutputLock("s3://renew-bucket/cache", "jobs.encode", lease_seconds=0.6):
        first = json.loads(fs.cat_file(path))["expires"]
        deadline = time.monotonic() + 600
        while json.loads(fs.cat_file(path))["expires"] == first:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.05)
