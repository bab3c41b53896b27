"""python -m jobs.inspect DIR

A terminal summary of a latent cache: files, rows, VAE, latent shapes and dtype, score quantiles,
errors by reason. Reads footers and the small columns only, never the latents.

Exit status: 0 printed; 2 usage error (not a cache); 1 unexpected fatal error.
"""

from __future__ import annotations

import argparse
import sys

from jobs.arguments import JobArgumentParser
from jobs.exit_status import run_job
from pipeline.cache.summary import format_cache_summary, scan_cache


def build_parser() -> argparse.ArgumentParser:
    parser = JobArgumentParser(prog="python -m jobs.inspect", description="Summarise a latent cache.")
    parser.add_argument("cache", help="cache directory or fsspec URL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        print(format_cache_summary(scan_cache(args.cache)))
        return 0

    return run_job(work, "inspect")


if __name__ == "__main__":
    sys.exit(main())
