"""One shard, end to end: read samples → decode clips (a CPU thread, ahead) → encode → commit.

`ShardEncoder` loads the VAE once and processes many shards; the Ray runner only schedules it.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch

from pipeline.cache_schema import SampleIdentity, clip_row, error_row
from pipeline.clip_encoding import ClipEncoder, resolve_compute
from pipeline.decode import ClipSampling, DecodedClip, VideoDecodeError, decode_clips, parse_resolution
from pipeline.encode_settings import EncodeSettings
from pipeline.fault_injection import inject_fault
from pipeline.model_loading import build_model
from pipeline.shard_writer import ShardFileWriter
from pipeline.shard_reader import ShardReader, ShardSample


@dataclass(frozen=True)
class ShardTask:
    url: str
    name: str
    output_dir: str
    attempt: int = 0


@dataclass
class ShardOutcome:
    """What a committed shard holds; also the shard's entry in the file footer and the manifest."""

    url: str
    name: str
    status: str  # "committed", or "partial" when the tar ended early (deterministic: never retried)
    reason: str | None
    samples: int
    clips: int
    error_rows: int
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    path: str = ""
    sha256: str = ""
    size_bytes: int = 0
    device: str = ""
    host: str = ""
    pid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _DecodedSample:
    identity: SampleIdentity
    clips: list[DecodedClip]
    error: str | None


_END = object()


class _ProducerFailure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ShardEncoder:
    """Holds one VAE (built once) and turns shard URLs into committed Parquet files."""

    def __init__(
        self,
        settings: EncodeSettings,
        cache_fields: dict[bytes, bytes],
        batch_size: int = 4,
        prefetch_samples: int = 4,
        num_threads: int | None = None,
        device: str | None = None,
    ) -> None:
        if settings.num_frames is None:
            raise ValueError("EncodeSettings.num_frames must be resolved before building a ShardEncoder")
        if num_threads:
            torch.set_num_threads(num_threads)
        model = build_model(settings)
        self.encoder = ClipEncoder(model, *resolve_compute(settings.compute_dtype, device))
        self.spatial_factor = model.spatial_factor
        self.settings = settings
        self.cache_fields = cache_fields
        self.batch_size = batch_size
        self.prefetch_samples = prefetch_samples
        self.sampling = ClipSampling(settings.num_frames, settings.frame_stride, settings.clips_per_video)
        self.resolution = parse_resolution(settings.resolution)

    def process(self, task: ShardTask) -> ShardOutcome:
        started = time.perf_counter()
        reader = ShardReader(task.url)
        writer = ShardFileWriter(task.output_dir, task.name, self.cache_fields, task.attempt)
        outcome = ShardOutcome(task.url, task.name, "committed", None, samples=0, clips=0, error_rows=0)
        seconds = defaultdict(float)
        try:
            buckets: dict[tuple[int, ...], list[tuple[SampleIdentity, DecodedClip]]] = defaultdict(list)
            for item in self._prefetched(reader, task, seconds):
                outcome.samples += 1
                if item.error is not None:
                    writer.add(error_row(item.identity, item.error))
                    outcome.error_rows += 1
                    continue
                for clip in item.clips:
                    bucket = buckets[tuple(clip.frames.shape)]
                    bucket.append((item.identity, clip))
                    if len(bucket) == self.batch_size:
                        outcome.clips += self._encode_and_write(buckets.pop(tuple(clip.frames.shape)), writer, seconds)
            for bucket in buckets.values():
                outcome.clips += self._encode_and_write(bucket, writer, seconds)
            if reader.truncation is not None:
                outcome.status, outcome.reason = "partial", reader.truncation
            outcome.seconds = {name: round(value, 4) for name, value in seconds.items()}
            outcome.seconds["total"] = round(time.perf_counter() - started, 4)
            outcome.device = str(self.encoder.device)
            outcome.host, outcome.pid = socket.gethostname(), os.getpid()
            outcome.rows = writer.rows
            committed = writer.commit(outcome.to_dict())
        except BaseException:
            writer.abort()
            raise
        outcome.path, outcome.sha256, outcome.size_bytes = committed.path, committed.sha256, committed.size_bytes
        return outcome

    def _encode_and_write(
        self,
        batch: list[tuple[SampleIdentity, DecodedClip]],
        writer: ShardFileWriter,
        seconds: dict[str, float],
    ) -> int:
        t0 = time.perf_counter()
        latents, moments = self.encoder.encode(torch.stack([clip.frames for _, clip in batch]))
        t1 = time.perf_counter()
        for index, (identity, clip) in enumerate(batch):
            stored_moments = moments[index] if self.settings.store_moments else None
            writer.add(clip_row(identity, clip, latents[index], self.settings.latent_dtype, stored_moments))
        seconds["encode"] += t1 - t0
        seconds["write"] += time.perf_counter() - t1
        return len(batch)

    def _decode_sample(self, sample: ShardSample, file_name: str) -> _DecodedSample:
        identity = SampleIdentity(file_name, sample.key, sample.url, None, None)
        try:
            identity = SampleIdentity(file_name, sample.key, sample.url, sample.caption(), sample.meta())
            if sample.error is not None:
                return _DecodedSample(identity, [], sample.error)
            video = sample.video()
            if video is None:
                found = ", ".join(sorted(sample.members)) or "nothing"
                return _DecodedSample(identity, [], f"no video member in this sample (found: {found})")
            clips = decode_clips(video[1], self.sampling, self.resolution, self.spatial_factor)
            return _DecodedSample(identity, clips, None)
        except (VideoDecodeError, UnicodeError, ValueError) as exc:
            return _DecodedSample(identity, [], str(exc) or type(exc).__name__)

    def _prefetched(self, reader: ShardReader, task: ShardTask, seconds: dict[str, float]) -> Iterator[_DecodedSample]:
        """Decodes on a CPU thread, at most `prefetch_samples` ahead, so the model never waits on decord."""
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch_samples)
        stop = threading.Event()

        def put(item: object) -> None:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                for index, sample in enumerate(reader):
                    if index == 0:
                        inject_fault(task.name, task.attempt)
                    t0 = time.perf_counter()
                    decoded = self._decode_sample(sample, task.name)
                    seconds["decode"] += time.perf_counter() - t0
                    put(decoded)
                    if stop.is_set():
                        return
                put(_END)
            except BaseException as exc:  # re-raised in the consumer: the shard attempt fails
                put(_ProducerFailure(exc))

        thread = threading.Thread(target=produce, name="clip-decoder", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not _END:
                if isinstance(item, _ProducerFailure):
                    raise item.exc
                yield item
        finally:
            stop.set()
            thread.join()
