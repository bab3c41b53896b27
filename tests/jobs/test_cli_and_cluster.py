"""The jobs as a user runs them: separate processes, a multi-node Ray cluster, the demo."""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cache.manifest import MANIFEST_NAME
from tests.media import encode_mp4, moving_pattern
from tests.processes import HUNG_AFTER_S, ROOT, run_job, start_cluster

# Whole jobs as processes and on a multi-node cluster: tens of seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for index in range(4):
        (folder / f"clip{index}.mp4").write_bytes(encode_mp4(moving_pattern(12, 48, 64, seed=index)))
        (folder / f"clip{index}.txt").write_text(f"caption {index}")
    return folder


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster()
    yield cluster
    cluster.shutdown()


def test_make_shards_then_encode_on_a_multi_node_cluster(video_folder, cluster, tmp_path):
    packed = run_job("jobs.make_shards", str(video_folder), str(tmp_path / "shards"), "--samples-per-shard", "1")
    assert packed.returncode == 0, packed.stderr
    cache = tmp_path / "cache"
    encode_args = [
        "jobs.encode", "--input", str(tmp_path / "shards" / "shard-{00000..00003}.tar"), "--output", str(cache),
        "--vae", "tiny", "--allow-random-weights", "--num-frames", "4", "--resolution", "32",
        "--num-actors", "2", "--cpus-per-actor", "1", "--no-progress",
    ]
    # No --address: RAY_ADDRESS names the cluster, as `ray job submit` does for the jobs it runs.
    result = run_job(*encode_args, env={"RAY_ADDRESS": cluster.address})
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    assert manifest["totals"] == {"shards": 4, "committed": 4, "partial": 0, "failed": 0, "clips": 4, "rejected": 0,
                                  "error_rows": 0}
    rows = [row for path in sorted(cache.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert sorted(row["caption"] for row in rows) == [f"caption {i}" for i in range(4)]

    again = run_job(*encode_args, "--address", cluster.address)
    assert again.returncode == 0, again.stderr
    assert "4 already committed" in again.stdout


def test_demo_runs_on_shipped_footage(tmp_path):
    result = run_job("jobs.demo", "--workdir", str(tmp_path), "--vae", "tiny", "--resolution", "32",
                     "--num-frames", "4", "--clips-per-video", "1")
    assert result.returncode == 0, result.stderr
    assert "errors by reason (1 rows" in result.stdout and "cannot decode video" in result.stdout
    assert "-> (4, 4, 16, 16) torch.float16" in result.stdout
    assert "RANDOM" in result.stdout
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 3
    # The command the demo prints next works as printed, from where the demo was run.
    (next_line,) = [line for line in result.stdout.splitlines() if line.startswith("next: ")]
    command = shlex.split(next_line.removeprefix("next: "))
    assert command[1:3] == ["-m", "jobs.report"]
    shown = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert shown.returncode == 0, shown.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
    # A second demo run starts again from scratch (its shards are replaced, not refused), and by default uses
    # the shipped small-f8 VAE and discriminator: every ok clip gets a disc_score, nothing random.
    default = run_job("jobs.demo", "--workdir", str(tmp_path), "--resolution", "64", "--num-frames", "4",
                      "--clips-per-video", "1")
    assert default.returncode == 0, default.stderr
    assert "RANDOM" not in default.stdout + default.stderr
    assert "autoencoder_2d 'small-f8'" in default.stdout
    assert re.search(r"^disc_score +4 ", default.stdout, re.MULTILINE)
    assert "-> (4, 4, 8, 8) torch.float16" in default.stdout
