"""One training worker's whole run: models, data, steps, validation, checkpoints, resume.

`run_training` is a plain function: Ray Train calls it in every worker (after setting up the process group),
and a test can call it in one process. Rank 0 writes logs and checkpoints; every rank reads its own shards.
"""

import json
import os
import socket
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vae as vae_models
from pipeline.encode.model_loading import check_num_frames
from pipeline.errors import UsageError
from pipeline.source.video_decode import ClipSampling
from pipeline.train.batches import BatchStream, cursors_from
from pipeline.train.checkpoints import (
    DISC_FILE,
    VAE_FILE,
    list_checkpoints,
    read_meta,
    restore_checkpoint,
    save_checkpoint,
)
from pipeline.train.clip_source import ClipSource, CropSettings, shards_of_worker
from pipeline.train.data_parallel import DataParallel
from pipeline.train.settings import TrainJob
from pipeline.train.steps import NonFiniteLossError, VAETrainer
from pipeline.train.training_log import (
    append_metrics,
    save_reconstruction_grid,
    write_metrics_plot,
)
from pipeline.train.validation import ValidationSet, load_validation_set, validate
from vae.checkpoint import load_state_dict_file, load_weights_strictly
from vae.discriminator import NLayerDiscriminator3D, load_discriminator
from vae.lpips import LPIPS

METRICS_FILE, BAD_STEPS_FILE, PLOT_FILE, SKIPPED_FILE = "metrics.jsonl", "bad_steps.jsonl", "metrics.html", "skipped.jsonl"
RECONSTRUCTIONS_DIR = "reconstructions"
# Names the run that owns OUT. Workers of a killed driver can outlive it by seconds; they stop at their next
# step once a resumed run has put its own id here, instead of writing checkpoints beside it.
RUN_OWNER_FILE = "_run.json"


class RunSuperseded(RuntimeError):
    """Another run (a resume of a killed one) has taken over OUT; this worker must not write there."""


def claim_output(out: Path, run_id: str) -> None:
    temporary = out / f".{RUN_OWNER_FILE}.{run_id}"
    temporary.write_text(json.dumps({"run_id": run_id}))
    os.replace(temporary, out / RUN_OWNER_FILE)


def _check_owner(out: Path, run_id: str) -> None:
    owner = json.loads((out / RUN_OWNER_FILE).read_text())["run_id"]
    if owner != run_id:
        raise RunSuperseded(f"run {owner} has taken over {out}; this worker of run {run_id} stops")


class TooManyBadSteps(RuntimeError):
    """More than `--max-bad-steps` steps had a non-finite loss; `OUT/bad_steps.jsonl` names their batches."""


def build_models(job: TrainJob, device: torch.device,
                 with_lpips: bool = True) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """The VAE, the discriminator and LPIPS (None without its weights), identical on every worker: random
    initialisations are seeded by the job's seed alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        vae = vae_models.load_model(job.vae, weights=job.weights)
        if job.disc_weights is not None:
            discriminator = load_discriminator(job.disc_weights, input_nc=3)
        else:
            discriminator = NLayerDiscriminator3D(input_nc=3, ndf=job.disc_ndf, n_layers=job.disc_layers)
    lpips = None
    if with_lpips and job.lpips_backbone and job.lpips_heads:
        lpips = LPIPS().load_vgg16_backbone(job.lpips_backbone).load_linear_heads(job.lpips_heads)
        lpips = lpips.to(device).eval().requires_grad_(False)
    return vae.to(device), discriminator.to(device), lpips


def discriminator_size(discriminator: nn.Module) -> dict[str, int]:
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv3d)]
    return {"ndf": convs[0].out_channels, "n_layers": len(convs) - 2}


def check_before_start(job: TrainJob, world_size: int) -> None:
    """On the driver, before any worker starts: the models build from --vae/--weights/--disc-weights, and the
    checkpoint to resume fits them and this worker count. Anything wrong is a UsageError naming it."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            vae, discriminator, _ = build_models(job, torch.device("meta"), with_lpips=False)
            check_num_frames(job.num_frames, vae.temporal_factor)
            checkpoint = _checkpoint_to_resume(job)
            if checkpoint is None:
                return
            _check_world_size(checkpoint, world_size)
            for model, name in ((vae, VAE_FILE), (discriminator, DISC_FILE)):
                load_weights_strictly(model, load_state_dict_file(checkpoint / name), str(checkpoint / name))
    except (ValueError, KeyError, OSError, TypeError, RuntimeError) as error:
        raise UsageError(str(error)) from error


def _check_world_size(checkpoint: Path, world_size: int) -> dict[str, Any]:
    meta = read_meta(checkpoint)
    if meta["world_size"] != world_size:
        raise UsageError(f"{checkpoint} was written by {meta['world_size']} workers; resume it with "
                         f"--num-workers {meta['world_size']} so each worker continues its own shards")
    return meta


def _checkpoint_to_resume(job: TrainJob) -> Path | None:
    """The newest checkpoint when resuming, or when Ray Train restarted this same run after a failure."""
    checkpoints = list_checkpoints(Path(job.out))
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    return latest if job.resume or read_meta(latest).get("run_id") == job.run_id else None


class _Recorder:
    """Rank 0's files in OUT: metrics, bad steps, skipped samples, plot, reconstruction images."""

    def __init__(self, out: Path, active: bool):
        self.out, self.active = out, active
        if active:
            (out / RECONSTRUCTIONS_DIR).mkdir(parents=True, exist_ok=True)

    def append(self, name: str, record: dict[str, Any]) -> None:
        if self.active:
            append_metrics(self.out / name, record)

    def validation(self, step: int, metrics: dict[str, float], val: ValidationSet, reconstruction: torch.Tensor,
                   seconds: float) -> None:
        if not self.active:
            return
        self.append(METRICS_FILE, {"step": step, "kind": "val", **metrics, "seconds": seconds})
        save_reconstruction_grid(val.real, reconstruction, self.out / RECONSTRUCTIONS_DIR / f"step-{step:08d}.png")
        write_metrics_plot(self.out / METRICS_FILE, self.out / PLOT_FILE)
        shown = "  ".join(f"{name} {value:.4g}" for name, value in metrics.items())
        print(f"validation at step {step}: {shown}", flush=True)


def run_training(job: TrainJob, device: torch.device | None = None) -> int:
    """Train from the start or the checkpoint to resume up to `job.max_steps`; returns the last step."""
    parallel = DataParallel()
    rank, world = parallel.rank, parallel.world_size
    device = device or torch.device("cpu")
    out = Path(job.out)
    recorder = _Recorder(out, active=rank == 0)
    if rank == 0:
        claim_output(out, job.run_id)
    parallel.barrier()
    vae, discriminator, lpips = build_models(job, device)
    trainer = VAETrainer(vae, discriminator, job.settings, lpips, job.degrade_fakes, parallel,
                         seed=job.seed * 1000 + rank)
    # Posterior samples and Dropout differ per worker (as DDP workers' do) but repeat on a rerun.
    torch.manual_seed(job.seed * 1000 + rank)
    start, cursors, bad_steps = 0, {}, []
    clips_read: Counter[str] = Counter()  # per shard URL: the evidence that workers read disjoint shards
    checkpoint = _checkpoint_to_resume(job)
    if checkpoint is not None:
        meta = _check_world_size(checkpoint, world)
        state = restore_checkpoint(checkpoint, trainer)
        worker = state["workers"][rank]
        torch.set_rng_state(worker["torch_rng"])
        trainer.fake_generator.set_state(worker["fake_rng"])
        cursors = worker["cursors"]
        clips_read.update(worker.get("clips_read", {}))  # absent in checkpoints of earlier versions
        start, bad_steps = meta["step"], meta.get("bad_steps", [])
        recorder.append(METRICS_FILE, {"step": start, "kind": "resume", "checkpoint": str(checkpoint)})
    if start >= job.max_steps:
        return start
    skipped: Counter[str] = Counter()

    def on_skip(key: str, reason: str) -> None:
        skipped["samples"] += 1
        if rank == 0 or world > 1:
            append_metrics(out / SKIPPED_FILE, {"rank": rank, "key": key, "reason": reason})

    sampling = ClipSampling(job.num_frames, job.frame_stride, job.clips_per_video)
    crop = CropSettings(job.resolution, job.crop)
    positions = cursors_from(cursors)
    shards = shards_of_worker(list(job.data), rank, world)
    sources = {"video": ClipSource(shards, "video", sampling, crop, job.seed, positions["video"], on_skip=on_skip)}
    if job.image_ratio > 0:
        image_sampling = ClipSampling(1, 1, 1)
        sources["image"] = ClipSource(shards, "image", image_sampling, crop, job.seed, positions["image"],
                                      on_skip=on_skip)
    batches = BatchStream(sources, job.batch_size, job.image_ratio, job.seed)
    val = None
    if rank == 0 and job.val_data:
        val = load_validation_set(list(job.val_data), sampling, job.resolution, job.crop, job.val_clips)

    def run_validation(step: int) -> None:
        if val is not None:
            began = time.perf_counter()
            metrics, reconstruction = validate(trainer.vae, trainer.discriminator, val, job.batch_size, lpips)
            recorder.validation(step, metrics, val, reconstruction, time.perf_counter() - began)
        parallel.barrier()

    def save(step: int) -> None:
        workers = parallel.all_gather({
            "torch_rng": torch.get_rng_state(), "fake_rng": trainer.fake_generator.get_state(),
            "cursors": batches.cursors(), "shards": shards, "clips_read": dict(clips_read),
            "host": socket.gethostname(), "pid": os.getpid(),
        })
        if rank == 0:
            meta = {"run_id": job.run_id, "world_size": world, "bad_steps": bad_steps,
                    "discriminator": discriminator_size(trainer.discriminator), "time": time.time()}
            path = save_checkpoint(out, step, trainer, workers, meta, job.keep_checkpoints)
            print(f"checkpoint: {path}", flush=True)
        parallel.barrier()

    if start == 0:
        run_validation(0)
    window_began, window_clips, sums = time.perf_counter(), 0, Counter()
    for step in range(start, job.max_steps):
        _check_owner(out, job.run_id)
        batch = batches.next_batch(step)
        clips_read.update(key.split("#", 1)[0] for key in batch.keys)
        try:
            losses = trainer.step(batch.model_input(device), step)
        except NonFiniteLossError as error:
            keys = [key for worker_keys in parallel.all_gather(batch.keys) for key in worker_keys]
            bad_steps.append({"step": step, "keys": keys, "values": error.values})
            recorder.append(BAD_STEPS_FILE, bad_steps[-1])
            if len(bad_steps) > job.max_bad_steps:
                listed = "; ".join(f"step {bad['step']}: {', '.join(bad['keys'])}" for bad in bad_steps)
                raise TooManyBadSteps(f"{len(bad_steps)} steps had a non-finite loss, over --max-bad-steps "
                                      f"{job.max_bad_steps}: {listed}") from error
            losses = None
        done = step + 1
        if losses is not None:
            sums.update(losses)
            window_clips += len(batch.keys) * world
        if done % job.log_every == 0 or done == job.max_steps:
            counted = max(1, done - max(start, done - job.log_every) - sum(b["step"] >= done - job.log_every
                                                                            for b in bad_steps))
            seconds = time.perf_counter() - window_began
            skipped_total = sum(parallel.all_gather(skipped["samples"]))
            record = {name: value / counted for name, value in sums.items()}
            recorder.append(METRICS_FILE, {"step": done, "kind": "train", **record, "clips_per_s": window_clips / seconds,
                                           "skipped_samples": skipped_total, "bad_steps": len(bad_steps),
                                           "time": time.time()})
            window_began, window_clips, sums = time.perf_counter(), 0, Counter()
        if done % job.val_every == 0 or done == job.max_steps:
            run_validation(done)
        if done % job.checkpoint_every == 0 or done == job.max_steps:
            save(done)
    return job.max_steps


def read_bad_steps(out: Path) -> list[dict[str, Any]]:
    path = out / BAD_STEPS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
