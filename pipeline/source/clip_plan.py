"""Which source frames become clips: frame buckets and the way clips are extracted from a video.

A clip of N frames at `frame_stride` s spans (N - 1)·s + 1 source frames. Each frame bucket N (one, the job's
`--num-frames`, unless `--buckets` lists several) is planned on its own, by `--frame-extraction`, with the
meanings musubi-tuner gives them. For a 100-frame video, frame buckets 17 and 33, stride 1, 3 clips per video:

    head     one clip of each length from the start        17@0                33@0
    chunk    consecutive clips, no overlap (≤ 3 each)      17@0 17@17 17@34    33@0 33@33 33@66
    slide    clips every --slide-step frames (≤ 3 each;    17@0 17@8 17@16     33@0 33@16 33@32
             default half a clip's span)
    uniform  ≤ 3 each, spread evenly without overlap       17@0 17@41 17@83    33@0 33@33 33@67
             (the default: the first and last frames
             are always used; musubi's may overlap)
    full     the longest bucket that fits, from the start  33@0 (a 60-frame video: 33@0)

`target_fps` F resamples time first: the video becomes a sequence of frames at F per second, frame j being
the source frame whose presentation time is nearest to j/F after the first frame's (timestamps from the
container, so variable frame rate footage is sampled by time, not index; above the source's rate frames
repeat), and clips are planned on that sequence with stride 1. A 25 fps source at 12 fps takes source
frames 0, 2, 4, 6, 8, 10, 12, 15, 17, ... (j·25/12 rounded, a tie to the earlier frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXTRACTIONS = ("uniform", "head", "chunk", "slide", "full")


@dataclass(frozen=True)
class ClipSampling:
    num_frames: int
    frame_stride: int = 1
    clips_per_video: int = 1
    # Frame buckets; empty: (num_frames,).
    frame_buckets: tuple[int, ...] = ()
    extraction: str = "uniform"
    # Source frames between the starts of slide clips; 0: half a clip's span.
    slide_step: int = 0
    # Resample to this many frames per second by timestamps before planning (frame_stride must be 1).
    target_fps: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_stride", "clips_per_video"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.frame_buckets):
            raise ValueError(f"frame buckets must be positive integers, got {self.frame_buckets!r}")
        if self.extraction not in EXTRACTIONS:
            raise ValueError(f"extraction must be one of {', '.join(EXTRACTIONS)}, got {self.extraction!r}")
        if isinstance(self.slide_step, bool) or not isinstance(self.slide_step, int) or self.slide_step < 0:
            raise ValueError(f"slide_step must be a non-negative integer, got {self.slide_step!r}")
        if self.target_fps is not None and not (0 < self.target_fps < float("inf")):
            raise ValueError(f"target_fps must be a positive number, got {self.target_fps!r}")
        if self.target_fps is not None and self.frame_stride != 1:
            raise ValueError("target_fps picks frames by time: frame_stride must be 1 with it")

    @property
    def frame_counts(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.frame_buckets))) or (self.num_frames,)

    def span_of(self, frames: int) -> int:
        """Source frames a clip of `frames` covers, first to last."""
        return (frames - 1) * self.frame_stride + 1

    @property
    def span(self) -> int:
        """The span of the shortest frame bucket: a video shorter than this gives no clip."""
        return self.span_of(self.frame_counts[0])


def resample_to_fps(timestamps: np.ndarray, target_fps: float) -> np.ndarray:
    """Source frame index of each frame of the video resampled to `target_fps`: the nearest in presentation
    time to j / target_fps after the first frame (the earlier one on a tie)."""
    times = np.asarray(timestamps, dtype=np.float64) - timestamps[0]
    count = int(np.floor(times[-1] * target_fps + 1e-9)) + 1
    wanted = np.arange(count) / target_fps
    after = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)
    before = after - 1
    # A microsecond of slack: timestamps are rounded to the container's time base, and ties go to the earlier.
    nearer_before = (wanted - times[before]) <= (times[after] - wanted) + 1e-6
    return np.where(nearer_before, before, after) if len(times) > 1 else np.zeros(count, dtype=np.int64)


def plan_spans(spans: list[tuple[int, int]], sampling: ClipSampling) -> list[tuple[int, int]]:
    """One clip per span [first, end) of frames: the longest frame bucket that fits, from the span's first frame;
    spans shorter than every bucket give none. Ordered as `plan_clips`."""
    plan = []
    for first, end in spans:
        fitting = [n for n in sampling.frame_counts if sampling.span_of(n) <= end - first]
        if fitting:
            plan.append((first, fitting[-1]))
    return sorted(plan)


def _evenly_spread(total: int, span: int, count: int) -> list[int]:
    count = min(count, total // span)
    if count <= 1:
        return [0] * count
    return [i * (total - span) // (count - 1) for i in range(count)]


def _every(step: int, total: int, span: int, count: int) -> list[int]:
    return list(range(0, total - span + 1, step))[:count]


def plan_clips(total_frames: int, sampling: ClipSampling) -> list[tuple[int, int]]:
    """(first source frame, frame count) of each clip, ordered by start then count (the order decoders read
    fastest, and the clips' `clip_index`); empty when none fits."""
    fitting = [n for n in sampling.frame_counts if sampling.span_of(n) <= total_frames]
    if sampling.extraction == "full":
        fitting = fitting[-1:]
    plan = []
    for frames in fitting:
        span, count = sampling.span_of(frames), sampling.clips_per_video
        if sampling.extraction in ("head", "full"):
            starts = [0]
        elif sampling.extraction == "chunk":
            starts = _every(span, total_frames, span, count)
        elif sampling.extraction == "slide":
            starts = _every(sampling.slide_step or max(1, span // 2), total_frames, span, count)
        else:
            starts = _evenly_spread(total_frames, span, count)
        plan.extend((start, frames) for start in starts)
    return sorted(plan)
