"""One shard, end to end: read samples → decode clips (a CPU thread, ahead) → encode → score → commit.

`ShardEncoder` loads the VAE once and processes many shards; the Ray runner only schedules it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch

from pipeline.cache.schema import LATENT_DTYPES, SampleIdentity, clip_row, error_row
from pipeline.cache.shard_writer import BucketGroupedShardWriter, ShardFileWriter
from pipeline.encode.clip_encoding import ClipEncoder, resolve_compute
from pipeline.encode.decode_pool import OrderedDecodePool
from pipeline.encode.fault_injection import inject_fault
from pipeline.encode.model_loading import build_model, latent_normalisation
from pipeline.encode.previews import preview_jpeg
from pipeline.encode.scoring import ClipScorer, ScoringPlan, passes
from pipeline.encode.settings import EncodeSettings
from pipeline.source.buckets import parse_buckets
from pipeline.source.clip_spans import parse_span_source, read_spans
from pipeline.source.input_identity import input_stat
from pipeline.source.shard_reader import ShardReader, ShardSample
from pipeline.source.video_decode import (
    ClipSampling,
    DecodedClip,
    DecodeOptions,
    VideoDecodeError,
    VideoLimits,
    decode_clips,
    parse_resolution,
)

# Clips waiting in half-full batches, in units of the batch size: bounds memory whatever the shapes.
MAX_WAITING_CLIPS_PER_BATCH = 2


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
    rejected: int = 0
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    path: str = ""
    sha256: str = ""
    size_bytes: int = 0
    device: str = ""
    host: str = ""
    pid: int = 0
    # The input read (`input_identity`): size, version stamp and member-list fingerprint.
    input: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _DecodedSample:
    identity: SampleIdentity
    clips: list[DecodedClip]
    error: str | None


def _decoded_bytes(sample: _DecodedSample) -> int:
    return sum(clip.frames.nbytes for clip in sample.clips)


@dataclass
class _SampleInProgress:
    """A sample's rows are held until all its clips are encoded: one bad clip makes the whole sample
    one error row, as the contract wants, never a mix of rows and an error."""

    identity: SampleIdentity
    clips_left: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


class ShardEncoder:
    """Holds one VAE and the scorers (built once) and turns shard URLs into committed Parquet files."""

    def __init__(
        self,
        settings: EncodeSettings,
        cache_fields: dict[bytes, bytes],
        scoring: ScoringPlan,
        batch_size: int = 4,
        prefetch_samples: int = 4,
        num_threads: int | None = None,
        device: str | None = None,
        conv3d_chunk_elements: str = "auto",
        decoder: str = "auto",
        decode_workers: int = 0,
        decode_buffer_mb: int = 1024,
    ) -> None:
        if settings.num_frames is None:
            raise ValueError("EncodeSettings.num_frames must be resolved before building a ShardEncoder")
        if num_threads:
            torch.set_num_threads(num_threads)
        model = build_model(settings)
        self.needs_decoder = scoring.needs_decoder or settings.keep_previews
        if not self.needs_decoder:
            # Never run without a score that needs it: dropping it frees its weights' memory.
            del model.decoder
        device, dtype = resolve_compute(settings.compute_dtype, device)
        self.encoder = ClipEncoder(model, device, dtype, normalisation=latent_normalisation(model, settings),
                                   conv3d_chunk_elements=conv3d_chunk_elements)
        self.scorer = ClipScorer(scoring, device, dtype, seed=settings.seed) if scoring.computed else None
        self.scoring = scoring
        self.spatial_factor = model.spatial_factor
        self.settings = settings
        self.cache_fields = cache_fields
        self.batch_size = batch_size
        self.prefetch_samples = prefetch_samples
        # All but one of the actor's CPUs by default: the model's own thread needs one.
        self.decode_workers = decode_workers or max(1, (num_threads or 1) - 1)
        self.decode_buffer_bytes = decode_buffer_mb * 2**20
        if settings.buckets is not None:
            self.resolution = parse_buckets(settings.buckets, self.spatial_factor, settings.allow_upscale)
            frame_buckets = self.resolution.frames
        else:
            self.resolution, frame_buckets = parse_resolution(settings.resolution), ()
        self.sampling = ClipSampling(settings.num_frames, settings.frame_stride, settings.clips_per_video,
                                     frame_buckets, settings.frame_extraction, settings.slide_step, settings.target_fps)
        self.decode_options = DecodeOptions(decoder, settings.resize_in,
                                            VideoLimits(settings.max_pixels, settings.max_frames))
        self.span_source = parse_span_source(settings.clip_spans_from) if settings.clip_spans_from else None

    def process(self, task: ShardTask, on_progress: Callable[[int, int], None] | None = None) -> ShardOutcome:
        """Encode one shard and commit its file; `on_progress(clips, error_rows)` after each sample."""
        started = time.perf_counter()
        # Taken before reading: a shard replaced meanwhile then looks changed on resume, never unchanged.
        input_before_reading = input_stat(task.url)
        reader = ShardReader(task.url)
        # With buckets, a file's rows are grouped by bucket, so a bucketed read touches whole row groups.
        writer_class = ShardFileWriter if self.settings.buckets is None else BucketGroupedShardWriter
        writer = writer_class(task.output_dir, task.name, self.cache_fields, task.attempt)
        outcome = ShardOutcome(task.url, task.name, "committed", None, samples=0, clips=0, error_rows=0)
        seconds: dict[str, float] = defaultdict(float)
        samples: dict[int, _SampleInProgress] = {}
        buckets: dict[tuple[int, ...], list[tuple[int, DecodedClip]]] = defaultdict(list)

        def finish_sample(index: int) -> None:
            sample = samples.pop(index)
            if sample.error is not None:
                writer.add(error_row(sample.identity, sample.error))
                outcome.error_rows += 1
            else:
                for row in sorted(sample.rows, key=lambda row: row["clip_index"]):
                    writer.add(row)
                outcome.clips += len(sample.rows)
                outcome.rejected += sum(row["passed"] is False for row in sample.rows)
            if on_progress is not None:
                on_progress(outcome.clips, outcome.error_rows)

        def run_batch(batch: list[tuple[int, DecodedClip]]) -> None:
            results = self._encode_batch([clip for _, clip in batch], seconds)
            for (index, clip), result in zip(batch, results):
                sample = samples[index]
                if isinstance(result, str):
                    sample.error = sample.error or f"clip {clip.clip_index}: {result}"
                else:
                    sample.rows.append(clip_row(sample.identity, clip, *result))
                sample.clips_left -= 1
                if sample.clips_left == 0:
                    finish_sample(index)

        try:
            for index, item in enumerate(self._prefetched(reader, task, seconds)):
                outcome.samples += 1
                samples[index] = _SampleInProgress(item.identity, len(item.clips), error=item.error)
                if item.error is not None:
                    finish_sample(index)
                    continue
                for clip in item.clips:
                    shape = tuple(clip.frames.shape)
                    buckets[shape].append((index, clip))
                    if len(buckets[shape]) == self.batch_size:
                        run_batch(buckets.pop(shape))
                    elif sum(map(len, buckets.values())) > MAX_WAITING_CLIPS_PER_BATCH * self.batch_size:
                        # Many shapes (native resolution), few clips each: encode the fullest bucket
                        # short rather than hold clips until the shard ends.
                        run_batch(buckets.pop(max(buckets, key=lambda key: len(buckets[key]))))
            for bucket in buckets.values():
                run_batch(bucket)
            if reader.truncation is not None:
                outcome.status, outcome.reason = "partial", reader.truncation
            writer.flush()
            # Building rows and encoding Parquet pages; the commit's fsync and rename come after.
            seconds["write"] = writer.seconds_writing
            outcome.seconds = {name: round(value, 4) for name, value in seconds.items()}
            outcome.seconds["total"] = round(time.perf_counter() - started, 4)
            outcome.device = str(self.encoder.device)
            outcome.host, outcome.pid = socket.gethostname(), os.getpid()
            outcome.rows = writer.rows
            outcome.input = {**input_before_reading, "fingerprint": reader.fingerprint}
            committed = writer.commit(outcome.to_dict())
        except BaseException:
            writer.abort()
            raise
        outcome.path, outcome.sha256, outcome.size_bytes = committed.path, committed.sha256, committed.size_bytes
        return outcome

    def _encode_batch(self, clips: list[DecodedClip], seconds: dict[str, float]) -> list[tuple | str]:
        """Per clip, `clip_row`'s model outputs (latent, dtype, moments, scores, passed, preview), or an
        error reason."""
        frames = torch.stack([clip.frames for clip in clips])
        t0 = time.perf_counter()
        latents, moments = self.encoder.encode(frames)
        # Scores judge what training will read: the latent as stored, rounding included.
        stored = latents.to(LATENT_DTYPES[self.settings.latent_dtype])
        t1 = time.perf_counter()
        reconstruction = self.encoder.decode(stored) if self.needs_decoder else None
        t2 = time.perf_counter()
        scores = self.scorer.score(frames, reconstruction) if self.scorer else [{} for _ in clips]
        seconds["vae_encode"] += t1 - t0
        if reconstruction is not None:
            seconds["vae_decode"] += t2 - t1
        if self.scorer:
            seconds["score"] += time.perf_counter() - t2
        results: list[tuple | str] = []
        for index, clip_scores in enumerate(scores):
            if not torch.isfinite(latents[index]).all():
                results.append("the VAE's latent holds NaN or Inf")
            elif isinstance(clip_scores, str):
                results.append(clip_scores)
            else:
                results.append((
                    latents[index],
                    self.settings.latent_dtype,
                    moments[index] if self.settings.store_moments else None,
                    clip_scores,
                    passes(clip_scores, self.scoring.thresholds),
                    preview_jpeg(clips[index].frames, reconstruction[index]) if self.settings.keep_previews else None,
                ))
        return results

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
            spans = read_spans(identity.meta, self.span_source) if self.span_source else None
            clips = decode_clips(video[1], self.sampling, self.resolution, self.spatial_factor, self.decode_options,
                                 spans, self.span_source.unit if self.span_source else "seconds")
            return _DecodedSample(identity, clips, None)
        except (VideoDecodeError, UnicodeError, ValueError) as exc:
            return _DecodedSample(identity, [], str(exc) or type(exc).__name__)

    def _prefetched(self, reader: ShardReader, task: ShardTask, seconds: dict[str, float]) -> Iterator[_DecodedSample]:
        """Decodes on `decode_workers` threads, ahead of the model within `decode_buffer_bytes` of decoded frames
        and `prefetch_samples` samples, handing samples out in shard order."""
        timing = threading.Lock()

        def decode(indexed: tuple[int, ShardSample]) -> _DecodedSample:
            index, sample = indexed
            if index == 0:
                inject_fault(task.name, task.attempt)
            began = time.perf_counter()
            decoded = self._decode_sample(sample, task.name)
            with timing:
                seconds["video_decode"] += time.perf_counter() - began
            return decoded

        pool = OrderedDecodePool(decode, _decoded_bytes, self.decode_workers, self.decode_buffer_bytes,
                                 self.prefetch_samples)
        try:
            yield from pool.map(enumerate(reader))
        finally:
            seconds["model_waited"] += pool.waited_seconds
