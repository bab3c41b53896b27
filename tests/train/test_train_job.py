"""`python -m jobs.train_vae` as users run it: usage errors before Ray starts, and a 2-worker Ray Train run
that is killed, resumed, and whose checkpoints then drive an encode job."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs import train_vae
from pipeline.cache.manifest import load_manifest
from pipeline.cache.shard_writer import sha256_of_file
from pipeline.train.checkpoints import (
    DISC_FILE,
    STATE_FILE,
    VAE_CONFIG_FILE,
    VAE_FILE,
    list_checkpoints,
    read_meta,
)
from pipeline.train.settings import TrainJob, TrainSettings
from pipeline.train.training_log import read_metrics
from pipeline.train.training_run import METRICS_FILE, run_training
from tests.media import write_video_shards
from tests.processes import HUNG_AFTER_S, job_process, kill_group, run_job, wait_for

TINY = ["--vae", "tiny", "--num-frames", "4", "--clips-per-video", "2", "--resolution", "32", "--crop", "16",
        "--disc-ndf", "8", "--disc-layers", "2", "--disc-start", "1", "--lr", "1e-3", "--val-clips", "2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("job_shards")
    keys = write_video_shards(root / "train", num_shards=4, samples_per_shard=2)
    write_video_shards(root / "val", num_shards=1, samples_per_shard=1)
    return {"train": root / "train", "val": root / "val", "keys": keys}


def _one_step_run(shards, out: Path) -> None:
    job = TrainJob(data=tuple(str(p) for p in sorted(Path(shards["train"]).glob("*.tar"))), val_data=(),
                   out=str(out), vae="tiny", disc_ndf=8, disc_layers=2, num_frames=4, resolution=32, crop=16,
                   max_steps=1, checkpoint_every=1, run_id="earlier",
                   settings=TrainSettings(perceptual_loss_weight=0.0))
    run_training(job)


def test_usage_errors_exit_2_before_any_training(shards, tmp_path, capsys):
    out = tmp_path / "out"
    _one_step_run(shards, out)
    data = ["--data", f"{shards['train']}/*.tar", "--out", str(out)]

    def exit_status(*extra: str) -> tuple[int, str]:
        status = train_vae.main([*data, *TINY, *extra])
        return status, capsys.readouterr().err

    status, err = exit_status()
    assert status == 2 and "--resume" in err and "--overwrite" in err
    status, err = exit_status("--resume", "--disc-ndf", "16")
    assert status == 2 and "shape mismatches" in err and "main.0.weight" in err
    status, err = exit_status("--resume", "--num-workers", "2")
    assert status == 2 and "--num-workers 1" in err
    status, err = exit_status("--val-data", f"{shards['train']}/shard-00000.tar")
    assert status == 2 and "held out" in err
    status, err = exit_status("--overwrite", "--num-workers", "5")
    assert status == 2 and "between 1 and the number of --data shards (4)" in err
    status, err = exit_status("--overwrite", "--crop", "64")
    assert status == 2 and "--crop 64 is larger than --resolution 32" in err
    status, err = exit_status("--overwrite", "--vae", "tiny-3d", "--num-frames", "4")
    assert status == 2 and "use 5" in err
    # Nothing was trained over or deleted by the refused runs.
    assert [p.name for p in list_checkpoints(out)] == ["step-00000001"]


@pytest.mark.slow
def test_two_workers_on_ray_train_killed_resumed_and_encoded_with(shards, tmp_path):
    out = tmp_path / "run"
    args = ["jobs.train_vae", "--data", f"{shards['train']}/*.tar", "--val-data", f"{shards['val']}/*.tar",
            "--out", str(out), *TINY, "--num-workers", "2", "--checkpoint-every", "2", "--val-every", "4",
            "--log-every", "1", "--degrade-fakes", "0.5"]
    with job_process(*args, "--max-steps", "1000") as process:
        wait_for(lambda: list_checkpoints(out), process)
        kill_group(process)  # SIGKILL of the driver and the embedded Ray with its workers
    # Workers of the killed driver may finish a step or checkpoint more before they notice; the resumed run
    # takes over OUT and continues from the newest whole checkpoint, whichever that is.
    resumed = run_job(*args, "--max-steps", "24", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = list_checkpoints(out)[-1]
    assert read_meta(final)["step"] == 24
    records = read_metrics(out / METRICS_FILE)
    resume = max(i for i, r in enumerate(records) if r["kind"] == "resume")
    resumed_at = records[resume]["step"]
    assert 2 <= resumed_at < 24 and records[resume]["checkpoint"].endswith(f"step-{resumed_at:08d}")
    train_steps = [r["step"] for r in records[resume:] if r["kind"] == "train"]
    assert train_steps == list(range(resumed_at + 1, 25))  # every step after the checkpoint, none lost

    workers = torch.load(final / STATE_FILE, weights_only=True)["workers"]
    assert len(workers) == 2
    own = [set(worker["shards"]) for worker in workers]
    read = [set(worker["clips_read"]) for worker in workers]
    assert own[0].isdisjoint(own[1]) and len(own[0] | own[1]) == 4
    assert all(read[rank] and read[rank] <= own[rank] for rank in range(2))

    cache = tmp_path / "cache"
    encoded = run_job("jobs.encode", "--input", f"{shards['train']}/*.tar", "--output", str(cache),
                      "--vae", str(final / VAE_CONFIG_FILE), "--weights", str(final / VAE_FILE),
                      "--disc-weights", str(final / DISC_FILE), "--num-frames", "4", "--resolution", "32",
                      "--scores", "psnr,ssim,disc")
    assert encoded.returncode == 0, encoded.stderr
    manifest = json.dumps(load_manifest(str(cache)))
    assert str(final / VAE_FILE) in manifest
    assert sha256_of_file(final / VAE_FILE) in manifest and sha256_of_file(final / DISC_FILE) in manifest
    assert set(load_file(final / VAE_FILE)) == set(load_file(final / "vae_ema.safetensors"))


def _replaced_and_checkpointed_since(out: Path) -> bool:
    """A worker group restarted from a checkpoint (a resume record) and has since written a newer one."""
    if not (out / METRICS_FILE).exists():
        return False
    resumed = [r["step"] for r in read_metrics(out / METRICS_FILE) if r["kind"] == "resume"]
    return bool(resumed) and read_meta(list_checkpoints(out)[-1])["step"] > resumed[-1]


def _train_steps_after_each_resume(out: Path) -> list[tuple[int, list[int]]]:
    """(resumed at step, the train steps logged from then until the next resume) for each resume."""
    records = read_metrics(out / METRICS_FILE)
    starts = [i for i, r in enumerate(records) if r["kind"] == "resume"]
    return [(records[i]["step"], [r["step"] for r in records[i:j] if r["kind"] == "train"])
            for i, j in zip(starts, [*starts[1:], len(records)])]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_then_sigterm_stops_the_job_with_143_and_it_resumes(shards, tmp_path):
    # One run for both: a Ray Train start is most of either test's time.
    out = tmp_path / "run"
    args = ["jobs.train_vae", "--data", f"{shards['train']}/*.tar", "--out", str(out), *TINY, "--num-workers", "2",
            "--checkpoint-every", "2", "--log-every", "1", "--max-failures", "1"]
    with job_process(*args, "--max-steps", "100000") as process:
        wait_for(lambda: list_checkpoints(out), process)
        worker = torch.load(list_checkpoints(out)[-1] / STATE_FILE, weights_only=True)["workers"][1]
        os.kill(worker["pid"], signal.SIGKILL)
        wait_for(lambda: _replaced_and_checkpointed_since(out), process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=HUNG_AFTER_S)
    assert process.returncode == 143, err
    assert "--resume" in err
    [(replaced_at, steps)] = _train_steps_after_each_resume(out)
    assert steps and steps == list(range(replaced_at + 1, replaced_at + 1 + len(steps)))  # none lost or repeated

    last = read_meta(list_checkpoints(out)[-1])["step"] + 2
    resumed = run_job(*args, "--max-steps", str(last), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    (_, _), (resumed_at, after) = _train_steps_after_each_resume(out)
    assert after == list(range(resumed_at + 1, last + 1)) and resumed_at > replaced_at
    assert read_meta(list_checkpoints(out)[-1])["step"] == last
