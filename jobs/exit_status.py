"""The exit statuses every job shares: 0 done, 3 done with failed shards, 2 usage error, 1 unexpected,
130 / 143 interrupted by SIGINT / SIGTERM."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from pipeline.errors import UsageError
from pipeline.interrupts import Interrupted, signals_raise_interrupted

RERUN_RESUMES = "rerun the same command to resume"


def run_job(work: Callable[[], int], what: str, resume_hint: str | None = None) -> int:
    """`work()` prints its own results and returns 0 or 3; a UsageError becomes 2 with its message,
    an interrupt 130 or 143 with one line, anything unexpected 1 with its traceback. `resume_hint`, for jobs
    that keep their progress, tells how to continue (e.g. `RERUN_RESUMES`)."""
    try:
        with signals_raise_interrupted():
            return work()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        return _interrupted(exc, resume_hint)
    except Exception as exc:
        # A signal that arrived inside a native call (Ray's C++ core) surfaces wrapped in its error.
        if (interrupt := _interrupt_behind(exc)) is not None:
            return _interrupted(interrupt, resume_hint)
        traceback.print_exc()
        hint = f" What was saved is kept; {resume_hint}." if resume_hint else ""
        print(f"error: {what} stopped on an unexpected error (above).{hint}", file=sys.stderr)
        return 1


def _interrupted(interrupt: Interrupted, resume_hint: str | None) -> int:
    done = f": {interrupt.progress}" if interrupt.progress else ""
    resume = f"; {resume_hint}" if resume_hint else ""
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
