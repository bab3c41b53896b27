"""The exit statuses every job shares: 0 done, 3 done with failed shards, 2 usage error, 1 unexpected."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from pipeline.errors import UsageError


def run_job(work: Callable[[], int], what: str, resumable: bool = False) -> int:
    """`work()` prints its own results and returns 0 or 3; a UsageError becomes 2 with its message,
    anything unexpected 1 with its traceback."""
    try:
        return work()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        hint = " Committed files are kept; rerunning the same command resumes." if resumable else ""
        print(f"error: {what} stopped on an unexpected error (above).{hint}", file=sys.stderr)
        return 1
