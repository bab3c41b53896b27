"""SIGINT and SIGTERM as an exception, so a job stops where it is, cleans up, and says how to resume."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(BaseException):
    """SIGINT or SIGTERM. A BaseException, like KeyboardInterrupt, so that no `except Exception` on
    the way up mistakes it for a failed shard.

    `progress` is filled in by whoever knows what was done (the runner: shards committed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.progress: str | None = None

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _SignalState:
    def __init__(self) -> None:
        self.received: int | None = None
        self.delivered = False
        self.deferring = 0


_state = _SignalState()


def _handler(signum: int, frame: FrameType | None) -> None:
    # Later signals are ignored while the job cleans up: a second Ctrl-C would leave actors and files.
    if _state.received is not None:
        return
    _state.received = signum
    if not _state.deferring:
        _state.delivered = True
        raise Interrupted(signum)


@contextmanager
def signals_raise_interrupted() -> Iterator[None]:
    """Within the block, the first SIGINT or SIGTERM raises `Interrupted` (see `deferred_interrupts`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        _state.__init__()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block a signal is only recorded, and `raise_if_interrupted` raises it where the
    code can stop cleanly. For loops that wait in native code (Ray's `wait`), which cannot unwind a
    Python exception raised from a signal handler."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    raise_if_interrupted()


def raise_if_interrupted() -> None:
    if _state.received is not None and not _state.delivered:
        _state.delivered = True
        raise Interrupted(_state.received)
