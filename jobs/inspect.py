"""python -m jobs.inspect DIR

A terminal summary of a latent cache: files, rows, VAE, latent shapes and dtype, score quantiles,
errors by reason. Reads footers and the small columns only, never the latents.

Exit status: 0 printed; 2 usage error (not a cache); 1 unexpected fatal error.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from pipeline.cache_summary import format_cache_summary, scan_cache
from pipeline.encode_settings import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.inspect", description="Summarise a latent cache.")
    parser.add_argument("cache", help="cache directory or fsspec URL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(format_cache_summary(scan_cache(args.cache)))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("error: inspect stopped on an unexpected error (above).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
