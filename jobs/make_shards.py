"""python -m jobs.make_shards SRC_DIR OUT_DIR [--samples-per-shard N] [--overwrite]

Pack a folder of videos (with `.json` / `.txt` sidecars) into webdataset tars for the encode job.
Exit status: 0 written; 2 usage error (SRC_DIR missing or holding no videos, OUT_DIR a file, not
writable or already holding shards without --overwrite, bad flags); 1 unexpected error.
"""

import argparse
import sys

from jobs.arguments import JobArgumentParser
from jobs.exit_status import run_job
from pipeline.source.shard_packing import pack_videos_into_shards


def build_parser() -> argparse.ArgumentParser:
    parser = JobArgumentParser(
        prog="python -m jobs.make_shards",
        description="Pack every video under SRC_DIR (recursive; same-stem .json/.txt sidecars join it) into "
                    "deterministic webdataset tars in OUT_DIR.",
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder searched recursively for videos")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the tars (created if missing)")
    parser.add_argument("--samples-per-shard", type=int, default=100, help="videos per tar")
    parser.add_argument("--pattern", default="shard-{:05d}.tar", help="tar name, formatted with the shard index")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove the *.tar files OUT_DIR already holds first (refused otherwise)")
    parser.add_argument("--images", action="store_true",
                        help="also pack still images (.jpg/.jpeg/.png/.webp), one sample each, for training")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples_per_shard < 1:
        parser.error(f"--samples-per-shard must be positive, got {args.samples_per_shard}")

    def work() -> int:
        shards = pack_videos_into_shards(args.src_dir, args.out_dir, args.samples_per_shard, args.pattern,
                                         overwrite=args.overwrite, include_images=args.images)
        for shard in shards:
            print(shard)
        print(f"wrote {len(shards)} shard(s) to {args.out_dir}", file=sys.stderr)
        return 0

    return run_job(work, "make_shards")


if __name__ == "__main__":
    sys.exit(main())
