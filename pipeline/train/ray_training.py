"""Runs `run_training` data-parallel on Ray Train (gloo on CPU, NCCL on GPUs) and shows its progress.

The driver only schedules: workers write metrics and checkpoints into OUT, and the progress bar is drawn
from OUT/metrics.jsonl, so it shows the same numbers the file keeps.
"""

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.run.ray_session import connect
from pipeline.train.settings import TrainJob
from pipeline.train.training_log import read_metrics
from pipeline.train.training_run import METRICS_FILE, run_training


@dataclass(frozen=True)
class TrainScaling:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None
    # Ray Train restarts the worker group this many times after a worker dies; each restart resumes from
    # the newest checkpoint of this run.
    max_failures: int = 0


def _worker(config: dict[str, Any]) -> None:
    import ray.train.torch

    job: TrainJob = config["job"]
    torch.set_num_threads(job.threads_per_worker)
    device = ray.train.torch.get_device() if job.use_gpu else torch.device("cpu")
    run_training(job, device)


class _ProgressFromMetrics:
    """Follows OUT/metrics.jsonl on a thread: a bar of steps with loss and clips/s, and validation lines."""

    def __init__(self, path: Path, total: int):
        self.path, self.total = path, total
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="train-progress", daemon=True)

    def __enter__(self) -> "_ProgressFromMetrics":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _follow(self) -> None:
        seen = len(read_metrics(self.path)) if self.path.exists() else 0
        with tqdm(total=self.total, unit="step", dynamic_ncols=True, mininterval=1.0) as bar:
            while True:
                stopping = self.stop.wait(1.0)
                records = read_metrics(self.path) if self.path.exists() else []
                for record in records[seen:]:
                    self._show(bar, record)
                seen = len(records)
                if stopping:
                    return

    @staticmethod
    def _show(bar: tqdm, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "resume":
            bar.n = record["step"]
            bar.write(f"resumed from {record['checkpoint']} at step {record['step']}")
        elif kind == "train":
            bar.n = record["step"]
            bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                            clips_s=f"{record.get('clips_per_s', 0.0):.2f}")
        elif kind == "val":
            shown = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                              if isinstance(v, float) and k != "seconds")
            bar.write(f"validation at step {record['step']}: {shown}")


def _fit_interruptibly(trainer: Any) -> None:
    """`trainer.fit()` on a thread: Ray Train's fit blocks where Python signal handlers never run, so SIGINT and
    SIGTERM would wait for the end of training. The main thread waits in short joins and takes the signal;
    the caller's `ray.shutdown()` then stops the workers."""
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # re-raised on the main thread
            failure.append(error)

    thread = threading.Thread(target=fit, name="train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if failure:
        raise failure[0]


def run_train_job(job: TrainJob, scaling: TrainScaling, verbose: bool = False) -> None:
    """Train on Ray (an embedded local one unless `scaling.address` or RAY_ADDRESS names a cluster)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = connect(scaling.address, verbose=verbose)
    try:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"job": job},
            scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                         resources_per_worker={"CPU": scaling.cpus_per_worker}),
            run_config=RunConfig(name=f"train_vae-{job.run_id}", storage_path=os.path.abspath(Path(job.out) / "ray"),
                                 failure_config=FailureConfig(max_failures=scaling.max_failures)),
        )
        with _ProgressFromMetrics(Path(job.out) / METRICS_FILE, job.max_steps):
            began = time.perf_counter()
            _fit_interruptibly(trainer)
        print(f"trained to step {job.max_steps} in {time.perf_counter() - began:.0f} s")
    finally:
        if started:
            ray.shutdown()
