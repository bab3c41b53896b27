"""python -m jobs.report --cache DIR --out report.html [--worst N] [--by SCORE]

One self-contained HTML page (inline CSS and SVG, images as data: URIs, no script): totals, score
histograms with the thresholds, per-shard throughput, and contact sheets of the N worst and best
clips by a score (from the `preview` column; encode with --keep-previews).

Exit status: 0 written; 2 usage error (not a cache, unknown score, unwritable --out); 1 unexpected
fatal error.
"""

from __future__ import annotations

import argparse
import sys

from jobs.arguments import JobArgumentParser
from jobs.exit_status import run_job
from pipeline.cache.report import write_report
from pipeline.cache.summary import SCORES


def build_parser() -> argparse.ArgumentParser:
    parser = JobArgumentParser(prog="python -m jobs.report",
                                     description="Write a self-contained HTML report of a latent cache.")
    parser.add_argument("--cache", required=True, help="cache directory or fsspec URL")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--worst", type=int, default=8, help="clips in each contact sheet, worst and best (default 8; 0: none)")
    parser.add_argument("--by", choices=SCORES,
                        help="score that ranks the contact sheets (default: the first with a threshold, else the first computed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        print(f"report written to {write_report(args.cache, args.out, args.worst, args.by)}")
        return 0

    return run_job(work, "the report")


if __name__ == "__main__":
    sys.exit(main())
