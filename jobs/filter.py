"""python -m jobs.filter --cache DIR --output DIR --where EXPR [--overwrite]

Writes a new cache holding only the rows EXPR selects (see `pipeline.cache.where` for the language),
copying every column byte for byte; no VAE is loaded. Prints how many rows each `and`-ed criterion
keeps and drops on its own, and the whole expression.

Exit status: 0 all files committed; 3 finished, some files failed (see the manifest; rerun to
retry them); 2 usage error; 1 unexpected fatal error.
"""

from __future__ import annotations

import argparse
import sys

from jobs.arguments import JobArgumentParser
from jobs.exit_status import RERUN_RESUMES, run_job
from pipeline.cache.filter import FilterSettings, run_filter_job
from pipeline.cache.filter_summary import format_filter_summary


def build_parser() -> argparse.ArgumentParser:
    parser = JobArgumentParser(
        prog="python -m jobs.filter",
        description="Write a new latent cache holding only the clips a where expression selects (no re-encoding).",
        epilog="Examples: --where \"passed and psnr >= 28\"; --where \"ssim >= 0.8 or status = 'error'\". "
               "A row is kept where the expression is true; a comparison with null is not true, so error "
               "rows (null scores and passed) are dropped unless the expression selects them. A score null "
               "in every row (lpips without VGG weights, disc_score without discriminator weights: the "
               "default) can only be tested with 'is null' / 'is not null'; comparing it is an error.",
    )
    parser.add_argument("--cache", required=True, help="source cache directory or fsspec URL")
    parser.add_argument("--output", required=True, help="new cache directory (one Parquet file per source file + _manifest.json)")
    parser.add_argument("--where", required=True,
                        help="comparisons (< <= > >= = != <>), and/or/not, parentheses, is [not] null, "
                             "[not] in (...), numbers, 'strings', true/false, bare boolean columns (passed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete a cache made by another filter or job in --output first")
    parser.add_argument("--workers", type=int, default=2, help="files filtered at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        report = run_filter_job(FilterSettings(args.cache, args.output, args.where, args.overwrite, args.workers))
        print(format_filter_summary(report))
        return report.exit_status

    return run_job(work, "the filter", resume_hint=RERUN_RESUMES)


if __name__ == "__main__":
    sys.exit(main())
