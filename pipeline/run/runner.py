"""The encode job's driver: keep a pool of Ray actors busy with shards and record every outcome.

Steps live in `pipeline.encode.shard_encoder` and planning in `job_plan`; this module only decides which actor
processes which shard, when an attempt has failed (error, dead actor or node, timeout), when to
retry, when to recycle an actor, and what the manifest says.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from pipeline.cache.manifest import summarize, write_manifest
from pipeline.cache.output_lock import OutputLock
from pipeline.cache.shard_writer import discard_attempt_files, remove_empty_tmp_dir
from pipeline.encode.fault_injection import FAULTS_ENV
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.encode.shard_encoder import ShardEncoder, ShardOutcome, ShardTask
from pipeline.errors import UsageError
from pipeline.interrupts import Interrupted, deferred_interrupts, raise_if_interrupted
from pipeline.run.job_plan import EncodePlan, ResumeCheck, manifest_document, plan_job
from pipeline.run.progress import JobProgress
from pipeline.run.ray_session import actors_that_fit, connect, node_resources
from pipeline.storage import locate

# How often the driver wakes to check timeouts when no shard finishes.
POLL_SECONDS = 1.0


@dataclass
class JobReport:
    output: str
    shards: dict[str, dict[str, Any]]
    skipped: list[str]
    elapsed_s: float
    retries: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    resume: ResumeCheck = field(default_factory=ResumeCheck)

    @property
    def totals(self) -> dict[str, int]:
        return summarize(self.shards)

    @property
    def exit_status(self) -> int:
        return 3 if self.failed else 0


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


@dataclass
class _Attempt:
    actor: Any
    task: ShardTask
    submitted: float


class ShardEncoderActor(ShardEncoder):
    """The Ray actor: a ShardEncoder that reports each finished sample to the driver's progress board."""

    def ready(self) -> None:
        """Returns once the constructor (the model load) has finished: shard timeouts count from then."""

    def process_reporting(self, task: ShardTask, board: Any) -> ShardOutcome:
        def report(clips: int, error_rows: int) -> None:
            board.update.remote(task.name, task.attempt, clips, error_rows)

        return self.process(task, on_progress=report if board is not None else None)


class ProgressBoard:
    """Clips and error rows of each running attempt, so the driver's progress moves per sample, not
    per shard (a 3D VAE can take many minutes over one shard)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], tuple[int, int]] = {}

    def update(self, name: str, attempt: int, clips: int, error_rows: int) -> None:
        self._counts[(name, attempt)] = (clips, error_rows)

    def snapshot(self) -> dict[tuple[str, int], tuple[int, int]]:
        return dict(self._counts)


class ActorPool:
    """Actors that each hold the model. A dead, hung or recycled actor is killed and replaced while
    the cluster can still place one, so a lost node shrinks the pool instead of stranding shards.

    An actor is started when its `ready()` call returns; until then (Ray placing it, the model
    loading) no timeout runs against the shard sent to it, however slow the machine."""

    def __init__(self, make_actor: Callable[[], Any], size: int, cpus: float, gpus: float, max_shards: int) -> None:
        import ray

        self._ray = ray
        self._make_actor = make_actor
        self._cpus, self._gpus = cpus, gpus
        self.max_shards = max_shards
        self.starting: dict[Any, Any] = {}  # ready() ref -> actor
        self.ready_at: dict[Any, float] = {}
        self.idle: list[Any] = [self._start() for _ in range(size)]
        self.busy = 0
        self._shards_done: dict[Any, int] = {}

    def _start(self) -> Any:
        actor = self._make_actor()
        self.starting[actor.ready.remote()] = actor
        return actor

    def mark_ready(self, ref: Any) -> None:
        """The actor's constructor finished (or failed: its shard's call then reports the death)."""
        self.ready_at[self.starting.pop(ref)] = time.monotonic()

    def clock_start(self, attempt: _Attempt) -> float | None:
        """When the attempt's timeout started counting: not before its actor was ready."""
        ready = self.ready_at.get(attempt.actor)
        return None if ready is None else max(ready, attempt.submitted)

    @property
    def size(self) -> int:
        return len(self.idle) + self.busy

    def take(self) -> Any:
        self.busy += 1
        return self.idle.pop()

    def give_back(self, actor: Any) -> None:
        """Return a healthy actor; after `max_shards` shards it is recycled to contain decoder leaks."""
        self.busy -= 1
        done = self._shards_done.get(actor, 0) + 1
        if self.max_shards and done >= self.max_shards:
            self._forget(actor)
            self.idle.append(self._start())
            return
        self._shards_done[actor] = done
        self.idle.append(actor)

    def discard(self, actor: Any) -> None:
        """Kill a dead or hung actor; replace it only if the cluster can still place another."""
        self.busy -= 1
        self._forget(actor)
        if actors_that_fit(self._cpus, self._gpus) > self.size:
            self.idle.append(self._start())

    def _forget(self, actor: Any) -> None:
        self._shards_done.pop(actor, None)
        self.ready_at.pop(actor, None)
        for ref in [ref for ref, starting in self.starting.items() if starting == actor]:
            del self.starting[ref]
        self._ray.kill(actor)

    def shutdown(self, in_flight: list[Any]) -> None:
        for actor in [*self.idle, *in_flight]:
            self._ray.kill(actor)


class ShardScheduler:
    """Hands shards to idle actors, one at a time, and turns every result into a manifest entry."""

    def __init__(self, plan: EncodePlan, input_spec: str, output: str, run: RunSettings, pool: ActorPool,
                 report: JobReport) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        self._ray = ray
        self._actor_errors, self._task_errors = RayActorError, RayTaskError
        self.plan, self.input_spec, self.output, self.run, self.pool, self.report = (
            plan, input_spec, output, run, pool, report)
        self.pending = deque(plan.tasks)
        self.attempts: dict[str, list[str]] = {task.name: [] for task in plan.tasks}
        self.in_flight: dict[Any, _Attempt] = {}
        self.progress = JobProgress(len(plan.tasks), enabled=run.progress)
        # Only a visible progress bar needs per-sample counts: no board, no extra actor.
        self.board = ray.remote(ProgressBoard).options(num_cpus=0).remote() if run.progress else None
        self._board_snapshot: Any = None
        self._board_counts: dict[tuple[str, int], tuple[int, int]] = {}

    def run_to_completion(self) -> None:
        try:
            with deferred_interrupts():
                self._schedule()
        except Interrupted as interrupt:
            self._stop_attempts()
            committed = sum(entry["status"] != "failed" for entry in self.report.shards.values())
            interrupt.progress = (f"{committed} of {len(self.report.shards) + len(self.pending)} shards committed "
                                  f"({committed - len(self.report.skipped)} in this run)")
            raise
        finally:
            self.progress.close()
            self.pool.shutdown([attempt.actor for attempt in self.in_flight.values()])
            if self.board is not None:
                self._ray.kill(self.board)
            remove_empty_tmp_dir(self.output)

    def _schedule(self) -> None:
        while self.pending or self.in_flight:
            raise_if_interrupted()
            self._dispatch()
            if not self.in_flight:
                self._fail_remaining("no actor left: no node of the cluster can hold one any more")
                break
            waiting = [*self.in_flight, *self.pool.starting]
            done, _ = self._ray.wait(waiting, num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                if ref in self.pool.starting:
                    self.pool.mark_ready(ref)
                else:
                    self._finish(ref)
            self._expire_timeouts()
            self._show_running_clips()

    def _stop_attempts(self) -> None:
        """Kill the running attempts' actors and remove their temporary files; what is committed stays."""
        for ref, attempt in list(self.in_flight.items()):
            self._ray.kill(attempt.actor)
            discard_attempt_files(attempt.task.output_dir, attempt.task.name, attempt.task.attempt)
            self.pending.appendleft(attempt.task)
            del self.in_flight[ref]

    def _dispatch(self) -> None:
        while self.pending and self.pool.idle:
            actor = self.pool.take()
            task = self.pending.popleft()
            task = replace(task, attempt=len(self.attempts[task.name]))
            self.in_flight[actor.process_reporting.remote(task, self.board)] = _Attempt(actor, task, time.monotonic())

    def _show_running_clips(self) -> None:
        """Poll the board without waiting: one request in flight at a time."""
        if self.board is None:
            return
        if self._board_snapshot is not None:
            ready, _ = self._ray.wait([self._board_snapshot], timeout=0)
            if not ready:
                return
            self._board_counts = self._ray.get(self._board_snapshot)
            self.progress.running(*self._running_counts())
        self._board_snapshot = self.board.snapshot.remote()

    def _running_counts(self) -> tuple[int, int]:
        """Clips and error rows encoded by the attempts in flight, as of the board's last snapshot."""
        running = [self._board_counts.get((attempt.task.name, attempt.task.attempt), (0, 0))
                   for attempt in self.in_flight.values()]
        return sum(clips for clips, _ in running), sum(errors for _, errors in running)

    def _finish(self, ref: Any) -> None:
        attempt = self.in_flight.pop(ref)
        try:
            outcome: ShardOutcome = self._ray.get(ref)
        except self._actor_errors as exc:
            self._abandon(attempt, f"actor died: {_last_line(str(exc))}")
        except self._task_errors as exc:
            self.pool.give_back(attempt.actor)
            cause = exc.cause
            self._failed_attempt(attempt.task, f"{type(cause).__name__}: {cause}" if cause else _last_line(str(exc)))
        else:
            self.pool.give_back(attempt.actor)
            entry = outcome.to_dict()
            if self.attempts[attempt.task.name]:
                entry["failed_attempts"] = self.attempts[attempt.task.name]
            self.report.shards[attempt.task.name] = entry
            self._board_counts.pop((attempt.task.name, attempt.task.attempt), None)
            self.progress.shard_done(outcome.clips, outcome.error_rows, self._running_counts())
            self._write_manifest()

    def _expire_timeouts(self) -> None:
        if not self.run.shard_timeout:
            return
        now = time.monotonic()
        for ref, attempt in list(self.in_flight.items()):
            started = self.pool.clock_start(attempt)
            if started is not None and now - started > self.run.shard_timeout:
                del self.in_flight[ref]
                # A hung decoder may hold the GIL in native code: only killing the process frees it.
                self._abandon(attempt, f"timed out after {self.run.shard_timeout:g} s (--shard-timeout)")

    def _abandon(self, attempt: _Attempt, reason: str) -> None:
        """The attempt's actor is dead or hung: kill it, drop its temporary file, retry the shard."""
        self.pool.discard(attempt.actor)
        discard_attempt_files(attempt.task.output_dir, attempt.task.name, attempt.task.attempt)
        self._failed_attempt(attempt.task, reason)

    def _failed_attempt(self, task: ShardTask, reason: str) -> None:
        history = self.attempts[task.name]
        history.append(reason[:2000])
        if len(history) <= self.run.max_retries:
            self.report.retries += 1
            self.progress.retry()
            self.pending.append(task)
            return
        self._record_failure(task, history[-1])

    def _record_failure(self, task: ShardTask, reason: str) -> None:
        entry = {"url": task.url, "name": task.name, "status": "failed", "reason": reason,
                 "attempts": self.attempts[task.name]}
        if task.name in self.plan.resume.reencoded:
            # Its committed file holds rows of the input as it was: stale, so gone, like the shard's rows.
            locate(self.output).child(f"{task.name}.parquet").remove()
        self.report.shards[task.name] = entry
        self.report.failed.append(entry)
        self.progress.shard_failed()
        self._write_manifest()

    def _fail_remaining(self, reason: str) -> None:
        while self.pending:
            self._record_failure(self.pending.popleft(), reason)

    def _write_manifest(self) -> None:
        write_manifest(self.output, manifest_document(self.plan, self.input_spec, self.report.shards))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def run_encode_job(
    input_spec: str,
    output: str,
    settings: EncodeSettings,
    run: RunSettings,
    cpus_per_actor_explicit: bool = True,
) -> JobReport:
    """Holds the output's lock, plans, then drives actors until every shard is committed or has
    failed `max_retries + 1` times. A Ray this call started is shut down when it returns."""
    started = time.perf_counter()
    with OutputLock(output, "jobs.encode") as lock:
        if lock.takeover_notice:
            print(lock.takeover_notice, file=sys.stderr)
        plan = plan_job(input_spec, output, settings, run.overwrite, run.trust_committed, run.rethreshold)
        report = JobReport(locate(output).url, dict(plan.committed), plan.skipped, 0.0, resume=plan.resume)
        for name, reason in plan.scoring.null_reasons.items():
            if name in settings.scoring.scores:
                print(f"warning: {name} scores will be null: {reason}", file=sys.stderr)
        if plan.scoring.random_weights:
            print(f"WARNING: {', '.join(plan.scoring.random_weights)} scored with RANDOM weights "
                  "(--allow-random-weights): those scores are meaningless; the cache metadata records this.",
                  file=sys.stderr)
        if plan.tasks:
            started_ray = connect(run.address, run.verbose)
            try:
                _encode_on_ray(plan, input_spec, output, run, cpus_per_actor_explicit, report)
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()
        else:
            write_manifest(output, manifest_document(plan, input_spec, report.shards))
    report.elapsed_s = time.perf_counter() - started
    return report


def _encode_on_ray(plan: EncodePlan, input_spec: str, output: str, run: RunSettings, cpus_per_actor_explicit: bool,
                   report: JobReport) -> None:
    import ray

    cpus, num_actors = _actor_shape(run, cpus_per_actor_explicit)
    # The test-only fault switch travels to actors on other nodes too.
    env_vars = {FAULTS_ENV: os.environ[FAULTS_ENV]} if FAULTS_ENV in os.environ else {}
    actor_class = ray.remote(ShardEncoderActor).options(
        num_cpus=cpus, num_gpus=run.gpus_per_actor, max_restarts=0, max_concurrency=1,
        runtime_env={"env_vars": env_vars} if env_vars else None,
    )

    def make_actor() -> Any:
        return actor_class.remote(
            plan.settings, plan.cache_fields, plan.scoring, run.batch_size, run.prefetch_samples,
            max(1, int(cpus)), conv3d_chunk_elements=run.conv3d_chunk_elements, decoder=run.decoder,
            decode_workers=run.decode_workers, decode_buffer_mb=run.decode_buffer_mb)

    pool = ActorPool(make_actor, min(num_actors, len(plan.tasks)), cpus, run.gpus_per_actor,
                     run.max_shards_per_actor)
    ShardScheduler(plan, input_spec, output, run, pool, report).run_to_completion()
