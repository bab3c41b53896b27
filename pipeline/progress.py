"""The driver's progress bar: shards, clips, clips/s, ETA, errors and retries."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class JobProgress:
    def __init__(self, total_shards: int, enabled: bool = True) -> None:
        self.clips = self.errors = self.retries = self.failed = 0
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
        rate = self.clips / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix(
            clips=self.clips, clips_s=f"{rate:.2f}", errors=self.errors, retries=self.retries, failed=self.failed
        )

    def shard_done(self, clips: int, error_rows: int) -> None:
        self.clips += clips
        self.errors += error_rows
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
