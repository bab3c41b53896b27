"""Decoded-and-resized frames per second with 1 and 2 decode workers, where resizing is cheapest, and how
long a fast model waits for its frames.

    python -m benchmarks.decode_throughput [--quick] [--frames 32] [--samples 3] [--repeats 2]

Synthetic footage (a smooth moving pattern) encoded in memory with PyAV: H.264 (libx264, CRF 23) at 480p,
720p and 1080p, and AV1 (SVT-AV1) at 720p, which decord cannot decode and PyAV does. Each sample is decoded
by the job's own path (`decode_clips`: two clips of 16 frames, resized to a 256 short side and center-cropped)
through `OrderedDecodePool`, as an actor does. Every rate is the best of `--repeats` runs: this machine's
timings vary by up to 2x from run to run.

1. Rates with 1 and 2 decode workers, and the speed-up (goal 1.6x); for 720p H.264 also the same work in 1
   and 2 separate processes, which share no GIL: the most two threads could gain on this machine.
2. Where to resize (720p H.264, 1 worker), against the baseline of interpolating in float32, this project's
   resize before it used torch's uint8 kernel: torch uint8 (`--resize-in torch`, the default), FFmpeg's
   swscale inside the decoder (`--resize-in decoder`), and decoding alone, the ceiling.
3. A whole shard through `ShardEncoder` with a fast model (the `tiny` preset at 32², several times faster
   than decoding 1080p; on CPU it still takes a core's share from the decoders): the shard's wall time at 1
   and 2 decode workers (goal 1.6x), and the share of it the model sat idle waiting for frames (`model_waited`
   in the manifest).

`--quick` (about half a minute here) measures 720p H.264 only, 2 videos of 32 frames, best of 2: the worker
and process speed-ups and torch's resize against float32 with the decoder the workers used; no shard.
`table_rows(quick)` gives the same figures as rows of `python -m benchmarks`, from the same `measure`.
"""

import argparse
import io
import multiprocessing
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from multiprocessing.pool import Pool
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._common import table_row

SIZES = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}
CASES = [("h264", size) for size in SIZES] + [("av1", "720p")]
QUICK_CASE = ("h264", "720p")
REFERENCE = " ".join(QUICK_CASE)  # the case of the process ceiling and of where to resize
# (resize_in, resolution) of each place to resize; "none" decodes at the native size: decoding alone, the ceiling.
RESIZES = {"float32": ("float32", "native"), "torch": ("torch", "256"), "decoder": ("decoder", "256"),
           "none": ("torch", "native")}
# Quick: two videos of two 16-frame clips each keep encoding the footage, the costliest step, to a few seconds.
SCALES = {False: {"frames": 32, "samples": 3, "repeats": 2}, True: {"frames": 32, "samples": 2, "repeats": 2}}


def footage(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth pattern drifting a few pixels per frame: compresses like video, not like noise."""
    y = np.arange(height, dtype=np.float32)[:, None] / height
    x = np.arange(width, dtype=np.float32)[None, :] / width
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        phase = 0.15 * t + seed
        for c in range(3):
            out[t, :, :, c] = (127.5 + 127 * np.sin(2 * np.pi * ((3 + c) * x + (2 - c) * y) + phase)).astype(np.uint8)
    return out


def encode(frames: np.ndarray, codec: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if codec == "h264" else "libsvtav1", rate=24)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23"} if codec == "h264" else {"preset": "12", "svtav1-params": "log-level=0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def float32_resize(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """The baseline: the same antialiased bilinear cover-and-crop, interpolated in float32."""
    from pipeline.source.video_decode import cover_size

    cover_height, cover_width = cover_size(*frames.shape[1:3], height, width)
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32)
    clip = F.interpolate(clip, size=(cover_height, cover_width), mode="bilinear", antialias=True, align_corners=False)
    clip = clip.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    top, left = (cover_height - height) // 2, (cover_width - width) // 2
    return clip[:, top:top + height, left:left + width].contiguous()


def clip_decoder(decoder: str, resize_in: str = "torch", resolution: str = "256") -> Callable[[bytes], list]:
    from pipeline.source.video_decode import ClipSampling, DecodeOptions, decode_clips, parse_resolution

    sampling = ClipSampling(16, 1, 2)
    if resize_in == "float32":
        def decode(video: bytes) -> list:
            clips = decode_clips(video, sampling, parse_resolution("native"), 8, DecodeOptions(decoder))
            for clip in clips:
                clip.frames = float32_resize(clip.frames.numpy(), 256, 256)
            return clips
        return decode
    options = DecodeOptions(decoder, resize_in)
    return lambda video: decode_clips(video, sampling, parse_resolution(resolution), 8, options)


def decode_rates(videos: list[bytes], decode: Callable[[bytes], list], repeats: int,
                 worker_counts: tuple[int, ...] = (1, 2)) -> tuple[dict[int, float], str]:
    """Per worker count, the best frames/s over `repeats` runs (the counts alternate), and the decoder used."""
    from pipeline.encode.decode_pool import OrderedDecodePool

    best = dict.fromkeys(worker_counts, float("inf"))
    for _ in range(repeats):
        for workers in worker_counts:
            pool = OrderedDecodePool(decode, lambda clips: sum(clip.frames.nbytes for clip in clips),
                                     workers=workers, budget_bytes=2**31, max_pending=2 * workers + 2)
            began = time.perf_counter()
            results = list(pool.map(videos))
            best[workers] = min(best[workers], time.perf_counter() - began)
    frames = sum(clip.num_frames for clips in results for clip in clips)
    return {workers: frames / seconds for workers, seconds in best.items()}, results[0][0].decoder


def _decode_all(videos: list[bytes]) -> int:
    torch.set_num_threads(1)
    decode = clip_decoder("auto")
    return sum(clip.num_frames for video in videos for clip in decode(video))


def process_rates(pool: Pool, videos: list[bytes], repeats: int) -> dict[int, float]:
    """Frames/s of decoding all videos in one of `pool`'s two processes and split between both (best times, the
    two alternating)."""
    pool.map(_decode_all, [videos[:1], videos[:1]])  # first calls, not timed
    best = {1: float("inf"), 2: float("inf")}
    for _ in range(repeats):
        for processes, shares in ((1, [videos]), (2, [videos[0::2], videos[1::2]])):
            began = time.perf_counter()
            frames = sum(pool.map(_decode_all, shares))
            best[processes] = min(best[processes], time.perf_counter() - began)
    return {processes: frames / seconds for processes, seconds in best.items()}


def shard_runs(videos: list[bytes], folder: Path, repeats: int) -> dict[int, tuple[float, float]]:
    """Per decode-worker count (1, 2), the best wall time of one shard through ShardEncoder and its model-waited
    share; the two alternate, so a slow spell of the machine does not fall on one of them only."""
    from pipeline.encode.scoring import ScoreSettings
    from pipeline.encode.settings import EncodeSettings
    from pipeline.encode.shard_encoder import ShardEncoder
    from pipeline.run.job_plan import plan_job

    shard = folder / "shard.tar"
    if not shard.exists():
        with tarfile.open(shard, "w") as tar:
            for index, video in enumerate(videos):
                info = tarfile.TarInfo(f"v{index:03d}.mp4")
                info.size = len(video)
                tar.addfile(info, io.BytesIO(video))
    settings = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=16, clips_per_video=2,
                              resolution="32", scoring=ScoreSettings(scores=()))
    best: dict[int, dict[str, float]] = {}
    for attempt in range(repeats):
        for workers in (1, 2):
            plan = plan_job(str(shard), str(folder / f"cache-{workers}-{attempt}"), settings)
            encoder = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1,
                                   decode_workers=workers)
            seconds = encoder.process(plan.tasks[0]).seconds
            if workers not in best or seconds["total"] < best[workers]["total"]:
                best[workers] = seconds
    return {workers: (seconds["total"], seconds["model_waited"] / seconds["total"])
            for workers, seconds in best.items()}


def synthetic_videos(codec: str, size: str, frames: int, samples: int) -> list[bytes]:
    height, width = SIZES[size]
    return [encode(footage(frames, height, width, seed), codec) for seed in range(samples)]


def resize_rates(videos: list[bytes], decoder: str, names: Iterable[str], repeats: int) -> dict[str, float]:
    """1-worker frames/s with each place to resize in `names` (keys of RESIZES)."""
    return {name: decode_rates(videos, clip_decoder(decoder, *RESIZES[name]), repeats, (1,))[0][1] for name in names}


def worker_rates(videos: dict[str, list[bytes]], decoder: str, repeats: int) -> dict[str, dict]:
    """Per case, frames/s with 1 and 2 decode workers, and the decoder used."""
    rates = {}
    for case, case_videos in videos.items():
        per_count, used = decode_rates(case_videos, clip_decoder(decoder), repeats)
        rates[case] = {"decoder": used, **per_count}
    return rates


def measure(frames: int, samples: int, repeats: int, decoder: str = "auto", quick: bool = False) -> dict:
    """Every figure of the module: {"workers": {case: {"decoder", 1, 2: frames/s}}, "processes": {1, 2: frames/s},
    "resize": {decoder: {place: frames/s}}, "shard": {"case", "videos", 1, 2: (seconds, model-waited share)}}.
    `quick`: h264 720p only, only the float32 and torch resizes, no shard."""
    torch.set_num_threads(1)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        # The pool's processes import torch and the decoders (and the parent's __main__) while this one encodes
        # the footage, several seconds saved; nothing is timed before they are done.
        importing = pool.map_async(_decode_all, [[], []])
        videos = {f"{codec} {size}": synthetic_videos(codec, size, frames, samples)
                  for codec, size in ([QUICK_CASE] if quick else CASES)}
        importing.get()
        result = {"workers": worker_rates(videos, decoder, repeats),
                  "processes": process_rates(pool, videos[REFERENCE], repeats)}
    # Quick resizes with the decoder the worker rates used; the full run compares both.
    resize_decoders = (result["workers"][REFERENCE]["decoder"],) if quick else ("decord", "pyav")
    places = ("float32", "torch") if quick else tuple(RESIZES)
    result["resize"] = {name: resize_rates(videos[REFERENCE], name, places, repeats) for name in resize_decoders}
    if not quick:  # 5 s more than a quick run can spare, and a shard of two videos would tell little
        with tempfile.TemporaryDirectory() as folder:
            result["shard"] = {"case": "h264 1080p", "videos": samples,
                               **shard_runs(videos["h264 1080p"], Path(folder), repeats)}
    return result


def print_report(result: dict, frames: int, samples: int, repeats: int) -> None:
    print(f"decode + resize to 256 (2 clips of 16 frames per video), {samples} videos of {frames} frames "
          f"per case, torch 1 thread, best of {repeats}; rates in decoded frames/s\n")
    print(f"{'case':14s} {'decoder':8s} {'1 worker':>9s} {'2 workers':>10s} {'speed-up':>9s}")
    for case, rates in result["workers"].items():
        print(f"{case:14s} {rates['decoder']:8s} {rates[1]:9.1f} {rates[2]:10.1f} {rates[2] / rates[1]:8.2f}x")
    processes = result["processes"]
    print(f"h264 720p, the same work in 1 and 2 processes (no shared GIL): {processes[2] / processes[1]:.2f}x")

    print("\nwhere to resize, h264 720p, 1 worker (frames/s, and the ratio to the float32 baseline):")
    for decoder, rates in result["resize"].items():
        line = (f"  {decoder:7s} float32 interpolate (baseline) {rates['float32']:6.1f}   torch uint8 (default) "
                f"{rates['torch']:6.1f} ({rates['torch'] / rates['float32']:.2f}x)")
        if "decoder" in rates:  # not measured by --quick
            line += (f"   in the decoder {rates['decoder']:6.1f} ({rates['decoder'] / rates['float32']:.2f}x)   "
                     f"decode only {rates['none']:6.1f}")
        print(line)

    if "shard" not in result:
        return
    shard = result["shard"]
    (one, waited_one), (two, waited_two) = shard[1], shard[2]
    print(f"\na shard of {shard['videos']} {shard['case']} videos, tiny preset at 32² on 1 torch thread: {one:.2f} s "
          f"with 1 decode worker (model idle {waited_one:.0%}), {two:.2f} s with 2 (idle {waited_two:.0%}): "
          f"{one / two:.2f}x (goal 1.6x)")


def table_rows(quick: bool) -> list[dict[str, object]]:
    """Rows for `python -m benchmarks`: 2 decode workers against 1 (goal 1.6x, as for the shard), 2 processes
    against 1 (the ceiling, no goal), torch's uint8 resize against float32, and the shard's wall time and model
    busy share (not with `quick`). `quick`: what `--quick` measures at its default sizes (half a minute here)."""
    result = measure(**SCALES[quick], quick=quick)
    rows = [table_row(f"decode + resize {case} to 256², 2 decode workers, frames/s ({rates['decoder']})", rates[2],
                      f"1 worker {rates[1]:.3g}", rates[2] / rates[1], "≥ 1.6")
            for case, rates in result["workers"].items()]
    processes = result["processes"]
    rows.append(table_row("decode + resize h264 720p to 256², the same work in 2 processes, frames/s", processes[2],
                          f"1 process {processes[1]:.3g}", processes[2] / processes[1], "-"))
    rows += [table_row(f"resize h264 720p to 256² with torch's uint8 kernel, 1 worker, frames/s ({decoder})",
                       rates["torch"], f"float32 interpolation {rates['float32']:.3g}",
                       rates["torch"] / rates["float32"], "-")
             for decoder, rates in result["resize"].items()]
    if "shard" not in result:
        return rows
    shard = result["shard"]
    (one, waited_one), (two, waited_two) = shard[1], shard[2]
    title = f"shard of {shard['videos']} {shard['case']} videos, tiny preset at 32², 2 decode workers"
    rows.append(table_row(f"{title}, wall s", two, f"1 decode worker {one:.3g} s", one / two, "≥ 1.6"))
    rows.append(table_row(f"{title}, share of the time the model worked", 1 - waited_two,
                          f"1 decode worker {1 - waited_one:.0%}", (1 - waited_two) / (1 - waited_one), "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="h264 720p only, the float32 and torch resizes only, no shard; smaller defaults")
    for name, meaning in (("frames", "frames per synthetic video"), ("samples", "videos per case"),
                          ("repeats", "runs per figure; the best is kept")):
        parser.add_argument(f"--{name}", type=int,
                            help=f"{meaning} (default {SCALES[False][name]}, {SCALES[True][name]} with --quick)")
    parser.add_argument("--decoder", choices=("auto", "decord", "pyav"), default="auto",
                        help="as jobs.encode --decoder (auto: decord, PyAV for AV1)")
    args = parser.parse_args()
    scale = {name: getattr(args, name) or default for name, default in SCALES[args.quick].items()}
    print_report(measure(**scale, decoder=args.decoder, quick=args.quick), **scale)


if __name__ == "__main__":
    main()
