"""Encoding into 4 buckets against one resolution: the same footage, model and threads, clips/s.

    python -m benchmarks.bucket_encoding [--preset lightweight] [--area 128] [--videos 12] [--repeats 2]

Mixed synthetic footage (a third landscape 720×1280, a third portrait 1280×720, a third square 720×720; H.264)
goes through `ShardEncoder` twice per repeat, alternating: with `--resolution AREA` (every clip cropped to
AREA×AREA) and with `--buckets area=AREA;aspect=16:9,4:3,1:1,9:16` (each video near its own shape, about the
same pixels per clip). Clips of one bucket are batched together on the actor, so bucketing should cost
little; the goal is within 10% of the one-resolution rate. The best of the repeats is kept for each.

`table_rows(quick)` gives that ratio as a row of `python -m benchmarks` (goal ≥ 0.90); `quick` uses
`--videos 3` (one of each shape).
"""

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from benchmarks._common import table_row
from benchmarks.decode_throughput import encode, footage

SHAPES = [(720, 1280), (1280, 720), (720, 720)]


def _write_shard(shard: Path, videos: int) -> None:
    with tarfile.open(shard, "w") as tar:
        for index in range(videos):
            height, width = SHAPES[index % len(SHAPES)]
            data = encode(footage(20, height, width, seed=index), "h264")
            info = tarfile.TarInfo(f"v{index:03d}.mp4")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _encode_shard(shard: Path, output: Path, preset: str, resolution: str | None, buckets: str | None,
                  batch_size: int) -> tuple[float, int, set[str]]:
    """Seconds, clips and the buckets used of one pass of `ShardEncoder` over the shard."""
    from pipeline.encode.scoring import ScoreSettings
    from pipeline.encode.settings import EncodeSettings
    from pipeline.encode.shard_encoder import ShardEncoder
    from pipeline.run.job_plan import plan_job

    settings = EncodeSettings(vae=preset, allow_random_weights=True, num_frames=8, clips_per_video=2,
                              resolution=resolution or "256", buckets=buckets, scoring=ScoreSettings(scores=()))
    plan = plan_job(str(shard), str(output), settings)
    encoder = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, batch_size=batch_size,
                           num_threads=torch.get_num_threads())
    began = time.perf_counter()
    outcome = encoder.process(plan.tasks[0])
    seconds = time.perf_counter() - began
    buckets_seen = set(pq.read_table(outcome.path, columns=["bucket"]).column(0).to_pylist())
    return seconds, outcome.clips, buckets_seen


def _bucket_spec(area: int) -> str:
    return f"area={area};aspect=16:9,4:3,1:1,9:16"


def measure(preset: str = "lightweight", area: int = 128, videos: int = 12, repeats: int = 2,
            batch_size: int = 4) -> dict[str, object]:
    """Best clips/s with one resolution ("one") and with 4 buckets ("buckets"), and the buckets used ("used")."""
    with tempfile.TemporaryDirectory() as folder:
        shard = Path(folder) / "shard-00000.tar"
        _write_shard(shard, videos)
        best = {"one": float("inf"), "buckets": float("inf")}
        used: set[str] = set()
        for attempt in range(repeats):
            for name, resolution, buckets in (("one", str(area), None), ("buckets", None, _bucket_spec(area))):
                seconds, clips, seen = _encode_shard(shard, Path(folder) / f"{name}-{attempt}", preset, resolution,
                                                     buckets, batch_size)
                best[name] = min(best[name], seconds / clips)
                if buckets:
                    used = seen
    return {"one": 1 / best["one"], "buckets": 1 / best["buckets"], "used": sorted(used)}


def table_rows(quick: bool) -> list[dict[str, object]]:
    """Clips/s with 4 buckets against one resolution (goal ≥ 0.90)."""
    area, videos = 128, (3 if quick else 8)
    r = measure(area=area, videos=videos)
    return [table_row(f"encode lightweight 8 frames, {videos} mixed 720p videos, 4 buckets at area {area}, clips/s",
                      r["buckets"], f"one resolution {area}² {r['one']:.3g}", r["buckets"] / r["one"], "≥ 0.90")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="lightweight")
    parser.add_argument("--area", type=int, default=128)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    r = measure(args.preset, args.area, args.videos, args.repeats, args.batch_size)
    print(f"{args.preset}, 8 frames, {args.videos} videos (landscape, portrait, square 720p H.264), 2 clips each, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"  one resolution {args.area}x{args.area}: {r['one']:.2f} clips/s")
    print(f"  buckets {_bucket_spec(args.area)} ({len(r['used'])} used: {', '.join(r['used'])}): "
          f"{r['buckets']:.2f} clips/s")
    print(f"  ratio {r['buckets'] / r['one']:.2f} (goal ≥ 0.90)")


if __name__ == "__main__":
    main()
