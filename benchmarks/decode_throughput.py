"""Decoded-and-resized frames per second with 1 and 2 decode workers, and how long a fast model waits for them.

    python -m benchmarks.decode_throughput [--frames 48] [--samples 4]

Synthetic footage (a smooth moving pattern) encoded in memory with PyAV: H.264 (libx264, CRF 23) at 480p,
720p and 1080p, and AV1 (SVT-AV1) at 720p, which decord cannot decode and PyAV does. Each sample is decoded
by the job's own path (`decode_clips`: two clips of 16 frames, resized to 256 short side and center-cropped)
through `OrderedDecodePool`, as an actor does. Then a whole shard goes through `ShardEncoder` with the `tiny`
preset (a model much faster than decoding), and the manifest's `model_waited` over its total is the share
of time the model sat idle, at 1 and 2 workers.
"""

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

SIZES = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}
CASES = [("h264", size) for size in SIZES] + [("av1", "720p")]


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


def decode_rate(videos: list[bytes], workers: int, decoder: str) -> tuple[float, str]:
    from pipeline.encode.decode_pool import OrderedDecodePool
    from pipeline.source.video_decode import ClipSampling, decode_clips, parse_resolution

    sampling, resolution = ClipSampling(16, 1, 2), parse_resolution("256")
    pool = OrderedDecodePool(lambda video: decode_clips(video, sampling, resolution, 8, decoder=decoder),
                             lambda clips: 0,
                             workers=workers, budget_bytes=2**31, max_pending=2 * workers + 2)
    began = time.perf_counter()
    results = list(pool.map(videos))
    seconds = time.perf_counter() - began
    frames = sum(clip.num_frames for clips in results for clip in clips)
    return frames / seconds, results[0][0].decoder


def model_waited(videos: list[bytes], workers: int, decoder: str, folder: Path) -> float:
    from pipeline.encode.scoring import ScoreSettings
    from pipeline.encode.settings import EncodeSettings
    from pipeline.encode.shard_encoder import ShardEncoder
    from pipeline.run.job_plan import plan_job

    shard = folder / f"shard-{workers}.tar"
    with tarfile.open(shard, "w") as tar:
        for index, video in enumerate(videos):
            info = tarfile.TarInfo(f"v{index:03d}.mp4")
            info.size = len(video)
            tar.addfile(info, io.BytesIO(video))
    settings = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=16, clips_per_video=2,
                              resolution="256", scoring=ScoreSettings(scores=()))
    plan = plan_job(str(shard), str(folder / f"cache-{workers}"), settings)
    outcome = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1,
                           decode_workers=workers, decoder=decoder).process(plan.tasks[0])
    return outcome.seconds["model_waited"] / outcome.seconds["total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48, help="frames per synthetic video")
    parser.add_argument("--samples", type=int, default=4, help="videos per case")
    parser.add_argument("--decoder", choices=("auto", "decord", "pyav"), default="auto",
                        help="as jobs.encode --decoder (auto: decord, PyAV for AV1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"decode + resize to 256 (2 clips of 16 frames per video), {args.samples} videos of {args.frames} frames "
          f"per case, torch 1 thread; rates in decoded frames/s")
    print(f"{'case':14s} {'decoder':8s} {'1 worker':>9s} {'2 workers':>10s} {'speed-up':>9s}")
    videos_by_case = {}
    for codec, size in CASES:
        height, width = SIZES[size]
        videos = [encode(footage(args.frames, height, width, seed), codec) for seed in range(args.samples)]
        videos_by_case[(codec, size)] = videos
        one, decoder = decode_rate(videos, 1, args.decoder)
        two, _ = decode_rate(videos, 2, args.decoder)
        print(f"{codec + ' ' + size:14s} {decoder:8s} {one:9.1f} {two:10.1f} {two / one:8.2f}x")
    with tempfile.TemporaryDirectory() as folder:
        videos = videos_by_case[("h264", "720p")]
        waited = {workers: model_waited(videos, workers, args.decoder, Path(folder)) for workers in (1, 2)}
    print(f"model (tiny preset) idle waiting for frames, h264 720p shard: {waited[1]:.0%} of the shard's time with 1 "
          f"decode worker, {waited[2]:.0%} with 2")


if __name__ == "__main__":
    main()
