"""The encode job's driver: plan shards, keep a pool of Ray actors busy, record every outcome.

Steps live in `shard_processing`; this module only decides who processes which shard, when to
retry, and what the manifest says.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.cache_schema import SCORE_DEFINITIONS, cache_metadata
from pipeline.decode import parse_resolution
from pipeline.encode_settings import EncodeSettings, RunSettings, UsageError, identity_hash
from pipeline.manifest import committed_files, load_manifest, read_committed_shard, summarize, write_manifest
from pipeline.model_loading import check_num_frames, default_num_frames, describe_vae
from pipeline.ray_session import actors_that_fit, connect, node_resources
from pipeline.shard_processing import ShardEncoder, ShardTask
from pipeline.shard_writer import TMP_DIR_NAME
from pipeline.shard_urls import InputSpecError, check_unique_names, expand_input_spec
from pipeline.version import code_version

NULL_SCORE_REASON = "not computed: this version of the encode job does not score clips"


@dataclass
class JobReport:
    output: str
    shards: dict[str, dict[str, Any]]
    skipped: list[str]
    elapsed_s: float
    retries: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return summarize(self.shards)

    @property
    def exit_status(self) -> int:
        return 3 if self.failed else 0


@dataclass(frozen=True)
class EncodePlan:
    settings: EncodeSettings
    vae: dict[str, Any]
    identity: dict[str, Any]
    job_hash: str
    tasks: list[ShardTask]
    skipped: list[str]
    committed: dict[str, dict[str, Any]]
    cache_fields: dict[bytes, bytes]


def cache_identity(settings: EncodeSettings, vae_description: dict[str, Any]) -> dict[str, Any]:
    """What a rerun must match to add to an existing cache."""
    produced = dataclasses.asdict(settings)
    del produced["vae"], produced["weights"]
    return {"vae": {k: v for k, v in vae_description.items() if k not in ("spec", "weights")}, **produced}


def _prepare_output(output: Path, job_hash: str, overwrite: bool) -> dict[str, dict[str, Any]]:
    """Create OUTPUT, clear `_tmp/`, and return the shards already committed by the same job."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--output {str(output)!r} is not writable: {exc}") from exc
    shutil.rmtree(output / TMP_DIR_NAME, ignore_errors=True)
    manifest = load_manifest(output)
    committed: dict[str, dict[str, Any]] = {}
    foreign = []
    for path in committed_files(output):
        metadata, shard = read_committed_shard(path)
        if metadata.get("job_hash") != job_hash:
            foreign.append(path.name)
        committed[path.stem] = {**shard, "status": shard.get("status", "committed")}
    if manifest is not None and manifest.get("job", {}).get("hash") != job_hash:
        foreign.append("_manifest.json")
    if foreign and not overwrite:
        raise UsageError(
            f"{output} already holds a cache made with a different job configuration "
            f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}). "
            "Use another --output, or --overwrite to delete that cache and start again."
        )
    if foreign:
        for path in committed_files(output):
            path.unlink()
        (output / "_manifest.json").unlink(missing_ok=True)
        committed = {}
    return committed


def _check_resolution(text: str, spatial_factor: int) -> None:
    try:
        resolution = parse_resolution(text)
    except ValueError as exc:
        raise UsageError(f"--resolution: {exc}") from exc
    if not resolution.is_native and (resolution.height % spatial_factor or resolution.width % spatial_factor):
        raise UsageError(
            f"--resolution {text}: height and width must be multiples of the VAE's spatial factor {spatial_factor}"
        )


def plan_job(input_spec: str, output: str, settings: EncodeSettings, overwrite: bool = False) -> EncodePlan:
    vae_description = describe_vae(settings)
    if settings.num_frames is None:
        settings = replace(settings, num_frames=default_num_frames(vae_description["temporal_factor"]))
    check_num_frames(settings.num_frames, vae_description["temporal_factor"])
    _check_resolution(settings.resolution, vae_description["spatial_factor"])
    try:
        urls = expand_input_spec(input_spec)
        names = check_unique_names(urls)
    except InputSpecError as exc:
        raise UsageError(f"--input {input_spec!r}: {exc}") from exc
    identity = cache_identity(settings, vae_description)
    job_hash = identity_hash(identity)
    output_path = Path(output).resolve()
    committed = _prepare_output(output_path, job_hash, overwrite)
    tasks = [ShardTask(url, name, str(output_path)) for url, name in names.items() if name not in committed]
    skipped = [url for url, name in names.items() if name in committed]
    fields = {
        "job_hash": job_hash,
        "vae": vae_description,
        "latent_dtype": settings.latent_dtype,
        "sampling": {
            "num_frames": settings.num_frames,
            "frame_stride": settings.frame_stride,
            "clips_per_video": settings.clips_per_video,
            "resolution": settings.resolution,
        },
        "compute_dtype": settings.compute_dtype,
        "store_moments": settings.store_moments,
        "allow_random_weights": settings.allow_random_weights,
        "score_definitions": SCORE_DEFINITIONS,
        "thresholds": {},
        "null_scores": dict.fromkeys(SCORE_DEFINITIONS, NULL_SCORE_REASON),
        "code_version": code_version(),
    }
    return EncodePlan(
        settings, vae_description, identity, job_hash, tasks, skipped, committed, cache_metadata(fields)
    )


def _manifest(plan: EncodePlan, input_spec: str, shards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "contract_version": 1,
        "job": {
            "hash": plan.job_hash,
            "input": input_spec,
            "settings": dataclasses.asdict(plan.settings),
            "identity": plan.identity,
            "code_version": code_version(),
        },
        "model": plan.vae,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "totals": summarize(shards),
        "shards": dict(sorted(shards.items())),
    }


def _actor_shape(run: RunSettings, cpus_explicit: bool) -> tuple[float, int]:
    """CPUs per actor (by default the cluster's CPUs shared among the actors, within one node) and
    how many actors to start; a shape no node can hold is a usage error, not a hang."""
    cpus = run.cpus_per_actor
    if not cpus_explicit:
        node_cpus = [resources.get("CPU", 0.0) for resources in node_resources()]
        cpus = float(max(1, min(int(sum(node_cpus) // run.num_actors), int(max(node_cpus, default=1)))))
    fit = actors_that_fit(cpus, run.gpus_per_actor)
    if fit == 0:
        raise UsageError(
            f"no node of the Ray cluster can hold an actor with {cpus:g} CPUs and {run.gpus_per_actor:g} GPUs; "
            "lower --cpus-per-actor / --gpus-per-actor, or add nodes"
        )
    if fit < run.num_actors:
        print(f"warning: the cluster holds {fit} actors of {cpus:g} CPUs and {run.gpus_per_actor:g} GPUs, "
              f"not {run.num_actors}; starting {fit}", file=sys.stderr)
    return cpus, min(run.num_actors, fit)


def run_encode_job(
    input_spec: str,
    output: str,
    settings: EncodeSettings,
    run: RunSettings,
    cpus_per_actor_explicit: bool = True,
) -> JobReport:
    """Plans, then drives actors until every shard is committed or has failed `max_retries + 1` times."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    from pipeline.progress import JobProgress

    started = time.perf_counter()
    plan = plan_job(input_spec, output, settings, run.overwrite)
    shards = dict(plan.committed)
    report = JobReport(str(Path(output).resolve()), shards, plan.skipped, 0.0)
    if not plan.tasks:
        write_manifest(output, _manifest(plan, input_spec, shards))
        report.elapsed_s = time.perf_counter() - started
        return report

    connect(run.address, run.verbose)
    cpus, num_actors = _actor_shape(run, cpus_per_actor_explicit)
    actor_class = ray.remote(ShardEncoder).options(
        num_cpus=cpus, num_gpus=run.gpus_per_actor, max_restarts=0, max_concurrency=1
    )

    def new_actor() -> Any:
        return actor_class.remote(plan.settings, plan.cache_fields, run.batch_size, run.prefetch_samples, max(1, int(cpus)))

    pending = deque(plan.tasks)
    attempts: dict[str, list[str]] = {task.name: [] for task in plan.tasks}
    idle = [new_actor() for _ in range(min(num_actors, len(plan.tasks)))]
    in_flight: dict[Any, tuple[Any, ShardTask]] = {}
    progress = JobProgress(len(plan.tasks), enabled=run.progress)
    try:
        while pending or in_flight:
            while pending and idle:
                actor, task = idle.pop(), pending.popleft()
                in_flight[actor.process.remote(task)] = (actor, task)
            (done,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, task = in_flight.pop(done)
            try:
                outcome = ray.get(done)
            except RayActorError as exc:
                ray.kill(actor)
                idle.append(new_actor())
                failure = f"actor died: {exc}"
            except RayTaskError as exc:
                idle.append(actor)
                failure = f"{type(exc.cause).__name__}: {exc.cause}" if exc.cause else str(exc)
            else:
                idle.append(actor)
                shards[task.name] = outcome.to_dict()
                progress.shard_done(outcome.clips, outcome.error_rows)
                write_manifest(output, _manifest(plan, input_spec, shards))
                continue
            attempts[task.name].append(failure.strip().splitlines()[-1][:2000])
            if len(attempts[task.name]) <= run.max_retries:
                report.retries += 1
                progress.retry()
                pending.append(task)
                continue
            shards[task.name] = {
                "url": task.url,
                "name": task.name,
                "status": "failed",
                "reason": attempts[task.name][-1],
                "attempts": attempts[task.name],
            }
            report.failed.append(shards[task.name])
            progress.shard_failed()
            write_manifest(output, _manifest(plan, input_spec, shards))
    finally:
        progress.close()
        for actor, _ in in_flight.values():
            ray.kill(actor)
        for actor in idle:
            ray.kill(actor)
    report.elapsed_s = time.perf_counter() - started
    return report
