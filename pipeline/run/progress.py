"""The driver's progress bar: shards, clips, clips/s, ETA, errors and retries.

Clips count as soon as an actor has encoded them (`running`), not only when their shard commits,
so the bar moves during a long shard; a retried attempt's clips are counted again from zero."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class JobProgress:
    def __init__(self, total_shards: int, enabled: bool = True) -> None:
        self.clips = self.errors = self.retries = self.failed = 0
        self._running_clips = self._running_errors = 0
        self._started = time.perf_counter()
        self._bar = tqdm(
            total=total_shards,
            unit="shard",
            desc="encode",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def _refresh(self) -> None:
        clips, errors = self.shown
        rate = clips / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix(clips=clips, clips_s=f"{rate:.2f}", errors=errors, retries=self.retries,
                              failed=self.failed)

    @property
    def shown(self) -> tuple[int, int]:
        """Clips and error rows on the bar: committed shards' plus those of the shards in flight."""
        return self.clips + self._running_clips, self.errors + self._running_errors

    def running(self, clips: int, error_rows: int) -> None:
        """What the shards in flight have encoded so far."""
        if (clips, error_rows) != (self._running_clips, self._running_errors):
            self._running_clips, self._running_errors = clips, error_rows
            self._refresh()

    def shard_done(self, clips: int, error_rows: int, running: tuple[int, int] = (0, 0)) -> None:
        """A committed shard's counts; `running` is what the shards still in flight have encoded."""
        self.clips += clips
        self.errors += error_rows
        self._running_clips, self._running_errors = running
        self._refresh()
        self._bar.update(1)

    def shard_failed(self) -> None:
        self.failed += 1
        self._refresh()
        self._bar.update(1)

    def retry(self) -> None:
        self.retries += 1
        self._refresh()

    def close(self) -> None:
        self._bar.close()
