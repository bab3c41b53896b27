"""Decoding on several threads ahead of the model, results in input order, memory bounded in bytes.

Threads overlap decoding with the model and with each other: decord (through ctypes), PyAV and torch's resize
all let go of the GIL in their native code, and `python -m benchmarks.decode_throughput` shows two threads
gaining as much as two processes doing the same work. Rows must stay in shard order whatever finishes first,
so results are handed out in submission order. What is held is bounded by a byte budget of decoded frames
(finished results not yet taken, plus an estimate for each decode running), not only by a count: a handful of
1080p samples can outweigh hundreds of small ones. Each running decode also has its working copies of the
frames at source size (the decoder's and numpy's), which the worker count bounds, not the budget.
"""

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class OrderedDecodePool(Generic[In, Out]):
    """`map(items)` runs `decode` on `workers` threads and yields results in the order of `items`.

    A new item is started only while the bytes held (`size_of` of each finished result not yet yielded, plus
    the largest result seen so far for each decode still running) stay under `budget_bytes`, and fewer than
    `max_pending` items are in flight; one item is always allowed, so a sample larger than the budget still
    goes through, alone. `waited_seconds` is how long the consumer waited for the next result: the time the
    model would have sat idle.
    """

    def __init__(self, decode: Callable[[In], Out], size_of: Callable[[Out], int], workers: int,
                 budget_bytes: int, max_pending: int) -> None:
        if workers < 1 or max_pending < 1 or budget_bytes < 1:
            raise ValueError("workers, max_pending and budget_bytes must be positive")
        self.decode, self.size_of = decode, size_of
        self.workers, self.budget_bytes, self.max_pending = workers, budget_bytes, max_pending
        self.waited_seconds = 0.0
        self.peak_held_bytes = 0
        self._lock = threading.Condition()
        self._held = 0  # bytes of finished results not yet yielded
        self._running = 0
        self._largest = 0
        self._seen = False

    def _admissible(self, pending: int) -> bool:
        if pending == 0:
            return True
        # Until a result has been seen, a decode may weigh the whole budget.
        estimate = self._largest if self._seen else self.budget_bytes
        return pending < self.max_pending and self._held + (self._running + 1) * estimate <= self.budget_bytes

    def _run(self, item: In) -> Out:
        try:
            result = self.decode(item)
        finally:
            with self._lock:
                self._running -= 1
        size = self.size_of(result)
        with self._lock:
            self._held += size
            self._largest = max(self._largest, size)
            self._seen = True
            self.peak_held_bytes = max(self.peak_held_bytes, self._held)
            self._lock.notify_all()
        return result

    def map(self, items: Iterable[In]) -> Iterator[Out]:
        pending: deque[Future] = deque()
        stop = threading.Event()
        failure: list[BaseException] = []

        def feed(executor: ThreadPoolExecutor) -> None:
            try:
                for item in items:
                    with self._lock:
                        while not stop.is_set() and not self._admissible(len(pending)):
                            self._lock.wait(0.1)
                        if stop.is_set():
                            return
                        self._running += 1
                        pending.append(executor.submit(self._run, item))
                        self._lock.notify_all()
            except BaseException as error:  # re-raised by the consumer: the caller's attempt fails
                failure.append(error)
            finally:
                with self._lock:
                    stop.set()
                    self._lock.notify_all()

        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as executor:
            feeder = threading.Thread(target=feed, args=(executor,), name="decode-feeder", daemon=True)
            feeder.start()
            try:
                while True:
                    began = time.perf_counter()
                    with self._lock:
                        while not pending and not stop.is_set():
                            self._lock.wait(0.1)
                        if not pending:
                            break
                        future = pending[0]
                    result = future.result()
                    self.waited_seconds += time.perf_counter() - began
                    with self._lock:
                        pending.popleft()
                        self._held -= self.size_of(result)
                        self._lock.notify_all()
                    yield result
                if failure:
                    raise failure[0]
            finally:
                stop.set()
                feeder.join()
                for future in pending:
                    future.cancel()
