"""The exit statuses every job shares: 0 done, 3 done with failed shards, 2 usage error, 1 unexpected,
130 / 143 interrupted by SIGINT / SIGTERM."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from pipeline.errors import UsageError
from pipeline.interrupts import Interrupted, signals_raise_interrupted


def run_job(work: Callable[[], int], what: str, resumable: bool = False) -> int:
    """`work()` prints its own results and returns 0 or 3; a UsageError becomes 2 with its message,
    an interrupt 130 or 143 with one line, anything unexpected 1 with its traceback."""
    try:
        with signals_raise_interrupted():
            return work()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        return _interrupted(exc, resumable)
    except Exception as exc:
        # A signal that arrived inside a native call (Ray's C++ core) surfaces wrapped in its error.
        if (interrupt := _interrupt_behind(exc)) is not None:
            return _interrupted(interrupt, resumable)
        traceback.print_exc()
        hint = " Committed files are kept; rerunning the same command resumes." if resumable else ""
        print(f"error: {what} stopped on an unexpected error (above).{hint}", file=sys.stderr)
        return 1


def _interrupted(interrupt: Interrupted, resumable: bool) -> int:
    done = f": {interrupt.progress}" if interrupt.progress else ""
    resume = "; rerun the same command to resume" if resumable else ""
    print(f"interrupted{done}{resume}", file=sys.stderr)
    return interrupt.exit_status


def _interrupt_behind(exc: BaseException) -> Interrupted | None:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, Interrupted):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None
