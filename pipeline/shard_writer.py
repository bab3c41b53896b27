"""Streams one shard's rows into a temporary Parquet file and commits it atomically."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache_schema import (
    COLUMN_COMPRESSION,
    DICTIONARY_COLUMNS,
    SCHEMA,
    SHARD_METADATA_KEY,
)

TMP_DIR_NAME = "_tmp"
# Row groups are the unit a reader skips or fetches; ~32 MiB keeps reads large and memory bounded.
ROW_GROUP_BYTES = 32 * 1024 * 1024
ROW_GROUP_MAX_ROWS = 1024


@dataclass(frozen=True)
class CommittedShard:
    path: str
    rows: int
    size_bytes: int
    sha256: str


def _attempt_prefix(name: str, attempt: int) -> str:
    return f"{name}.attempt{attempt}."


def discard_attempt_files(output_dir: str | os.PathLike, name: str, attempt: int) -> None:
    """Remove what a dead or killed attempt left under `_tmp/` (readers never look there anyway)."""
    for path in (Path(output_dir) / TMP_DIR_NAME).glob(f"{_attempt_prefix(name, attempt)}*.parquet"):
        path.unlink(missing_ok=True)


def remove_empty_tmp_dir(output_dir: str | os.PathLike) -> None:
    try:
        (Path(output_dir) / TMP_DIR_NAME).rmdir()
    except OSError:
        pass  # absent, or an attempt of another driver still writes there


def sha256_of_file(path: str | os.PathLike, chunk_bytes: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardFileWriter:
    """Rows go to `OUTPUT/_tmp/<name>.attempt<N>.<uuid>.parquet` row group by row group; `commit` renames.

    A unique attempt suffix lets a retried shard write while a presumed-dead attempt still runs:
    both produce the same content and whichever renames last wins, so a reader never sees a
    partial file and the cache never holds the shard twice.
    """

    def __init__(
        self, output_dir: str | os.PathLike, name: str, file_metadata: dict[bytes, bytes], attempt: int = 0
    ) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        tmp_dir = self.output_dir / TMP_DIR_NAME
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_path = tmp_dir / f"{_attempt_prefix(name, attempt)}{uuid.uuid4().hex}.parquet"
        self.final_path = self.output_dir / f"{name}.parquet"
        self._writer = pq.ParquetWriter(
            self.tmp_path,
            SCHEMA.with_metadata(file_metadata),
            compression=COLUMN_COMPRESSION,
            use_dictionary=DICTIONARY_COLUMNS,
        )
        self._pending: list[dict[str, Any]] = []
        self._pending_bytes = 0
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self.rows += 1
        self._pending_bytes += len(row["latent"] or b"") + len(row["moments"] or b"")
        if self._pending_bytes >= ROW_GROUP_BYTES or len(self._pending) >= ROW_GROUP_MAX_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self._writer.schema))
        self._pending = []
        self._pending_bytes = 0

    def commit(self, shard_metadata: dict[str, Any]) -> CommittedShard:
        """Close, fsync and rename into place; `shard_metadata` lands in the file footer."""
        self.flush()
        self._writer.add_key_value_metadata({SHARD_METADATA_KEY: json.dumps(shard_metadata, sort_keys=True)})
        self._writer.close()
        with open(self.tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        checksum = sha256_of_file(self.tmp_path)
        size = self.tmp_path.stat().st_size
        os.replace(self.tmp_path, self.final_path)
        _fsync_dir(self.output_dir)
        return CommittedShard(str(self.final_path), self.rows, size, checksum)

    def abort(self) -> None:
        """Drop the temporary file; nothing becomes visible."""
        try:
            self._writer.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)
