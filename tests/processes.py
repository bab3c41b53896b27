"""Jobs and Ray nodes as separate processes, as a user runs them, under limits no healthy run comes near."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]

# Only stops a hung process: a healthy job stays far below it even on a slow, loaded machine, so it
# never decides whether a test passes; anything that may be slow is waited for, not timed.
HUNG_AFTER_S = 20 * 60


def run_job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repository root, with this process's environment plus `env`."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=HUNG_AFTER_S,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def job_process(*args: str, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """`python -m ARGS` running in its own process group, output piped; the group is killed if the job
    still runs on leaving."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """The job and the embedded Ray it started, all at once, as a crash takes them."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_for(condition: Callable[[], object], process: subprocess.Popen) -> None:
    """Polls until `condition()` holds, however long a slow machine takes; fails at once if the job ends first."""
    deadline = time.monotonic() + HUNG_AFTER_S
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the job exited with {process.returncode} before the awaited state: {err}")
        assert time.monotonic() < deadline, f"still waiting after {HUNG_AFTER_S} s: the job is hung"
        time.sleep(0.2)


def start_cluster(worker_nodes: int = 2):
    """A head without CPUs and one-CPU worker nodes on this machine, as `ray.cluster_utils.Cluster`
    simulates them; returns once every node has registered."""
    from ray.cluster_utils import Cluster

    # Not Ray's per-node wait: its fixed 30 s would decide the test on a slow machine.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "wait": False})
    for _ in range(worker_nodes):
        cluster.add_node(num_cpus=1, wait=False)
    cluster.wait_for_nodes(timeout=HUNG_AFTER_S)
    return cluster
