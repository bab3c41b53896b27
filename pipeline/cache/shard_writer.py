"""Streams one shard's rows into a temporary Parquet file and commits it atomically."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache.schema import (
    BINARY_COLUMNS,
    COLUMN_COMPRESSION,
    DICTIONARY_COLUMNS,
    SCHEMA,
    SHARD_METADATA_KEY,
)
from pipeline.errors import UsageError
from pipeline.storage import Location, locate

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


def open_output_dir(output: Location) -> None:
    """Create OUTPUT, prove it takes writes, and clear `_tmp/` of attempts a dead run left behind."""
    try:
        output.fs.makedirs(output.path, exist_ok=True)
        probe = output.child(f".write-test-{time.time_ns()}")
        probe.fs.pipe_file(probe.path, b"")
        probe.remove()
    except OSError as exc:
        raise UsageError(f"--output {output.url!r} is not writable: {exc}") from exc
    output.child(TMP_DIR_NAME).remove(recursive=True)


def discard_attempt_files(output_dir: str, name: str, attempt: int) -> None:
    """Remove what a dead or killed attempt left under `_tmp/` (readers never look there anyway)."""
    for leftover in locate(output_dir).child(TMP_DIR_NAME).glob(f"{_attempt_prefix(name, attempt)}*.parquet"):
        leftover.remove()


def remove_empty_tmp_dir(output_dir: str) -> None:
    """Object stores have no empty folders; a local `_tmp/` goes once nothing writes there."""
    tmp = locate(output_dir).child(TMP_DIR_NAME)
    if tmp.is_local:
        try:
            os.rmdir(tmp.path)
        except OSError:
            pass  # absent, or an attempt of another driver still writes there


def sha256_of_file(path: str | os.PathLike, chunk_bytes: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with locate(path).open("rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class _HashingWriter:
    """The file object ParquetWriter writes to: hashes and counts the bytes on their way out, so a
    commit never reads the file back (on an object store that would be a second download)."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink
        self._digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        return self._sink.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._sink.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """Leaves the sink open: the commit still has to fsync it."""
        self.closed = True

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class ShardFileWriter:
    """Rows go to `OUTPUT/_tmp/<name>.attempt<N>.<uuid>.parquet` row group by row group; `commit`
    makes the finished file `OUTPUT/<name>.parquet`: an atomic rename on a local filesystem, a copy
    then a delete on an object store, where the copied object appears whole or not at all.

    A unique suffix lets a retried shard write while a presumed-dead attempt still runs: both
    produce the same content and whichever commits last wins, so a reader never sees a partial
    file and the cache never holds the shard twice.
    """

    def __init__(
        self,
        output_dir: str,
        name: str,
        file_metadata: dict[bytes, bytes],
        attempt: int = 0,
        schema: pa.Schema = SCHEMA,
    ) -> None:
        self.output = locate(output_dir)
        self.name = name
        tmp_dir = self.output.child(TMP_DIR_NAME)
        tmp_dir.fs.makedirs(tmp_dir.path, exist_ok=True)
        self.tmp = tmp_dir.child(f"{_attempt_prefix(name, attempt)}{uuid.uuid4().hex}.parquet")
        self.final = self.output.child(f"{name}.parquet")
        self._file = self.tmp.open("wb")
        self._hashing = _HashingWriter(self._file)
        self._writer = pq.ParquetWriter(
            self._hashing,
            schema.with_metadata(file_metadata),
            compression={column: COLUMN_COMPRESSION.get(column, "zstd") for column in schema.names},
            use_dictionary=[column for column in DICTIONARY_COLUMNS if column in schema.names],
        )
        self._tables: list[pa.Table] = []
        self._rows: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self.rows = 0
        self.seconds_writing = 0.0

    def add(self, row: dict[str, Any]) -> None:
        """One row as a dict of the schema's columns."""
        self._rows.append(row)
        self._grow(1, _binary_bytes(row))

    def add_table(self, table: pa.Table) -> None:
        """Rows already in Arrow form (the filter job copies them without decoding a value)."""
        if table.num_rows:
            self._stage_rows()
            self._tables.append(table.replace_schema_metadata(None))
            self._grow(table.num_rows, table.nbytes)

    def _grow(self, rows: int, nbytes: int) -> None:
        self.rows += rows
        self._pending_rows += rows
        self._pending_bytes += nbytes
        if self._pending_bytes >= ROW_GROUP_BYTES or self._pending_rows >= ROW_GROUP_MAX_ROWS:
            self.flush()

    def _stage_rows(self) -> None:
        if self._rows:
            self._tables.append(pa.Table.from_pylist(self._rows, schema=self._writer.schema.remove_metadata()))
            self._rows = []

    def flush(self) -> None:
        """Write what is pending as one row group."""
        started = time.perf_counter()
        self._stage_rows()
        if not self._tables:
            return
        table = pa.concat_tables(self._tables)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._tables, self._pending_rows, self._pending_bytes = [], 0, 0
        self.seconds_writing += time.perf_counter() - started

    def commit(self, shard_metadata: dict[str, Any]) -> CommittedShard:
        """Close, make durable, move into place; `shard_metadata` lands in the file footer."""
        self.flush()
        self._writer.add_key_value_metadata({SHARD_METADATA_KEY: json.dumps(shard_metadata, sort_keys=True)})
        self._writer.close()
        if self.output.is_local:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp.path, self.final.path)
            _fsync_dir(self.output.path)
        else:
            self._file.close()  # the upload completes here
            self.output.fs.copy(self.tmp.path, self.final.path)
            self.tmp.remove()
        return CommittedShard(self.final.url, self.rows, self._hashing.size, self._hashing.hexdigest())

    def abort(self) -> None:
        """Drop the temporary file; nothing becomes visible."""
        try:
            self._writer.close()
            self._file.close()
        finally:
            self.tmp.remove()


def _binary_bytes(row: dict[str, Any]) -> int:
    return sum(len(row[name] or b"") for name in BINARY_COLUMNS if name in row)


class BucketGroupedShardWriter(ShardFileWriter):
    """A ShardFileWriter that keeps each bucket's rows together, in row groups of their own (error rows last):
    a read of one bucket touches whole row groups, and the others' statistics rule them out. Rows wait per
    bucket until one reaches a row group's size, or all of them a row group's bytes (then the biggest goes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: dict[str | None, list[dict[str, Any]]] = {}
        self._waiting_bytes: dict[str | None, int] = {}

    def add(self, row: dict[str, Any]) -> None:
        bucket = row["bucket"]
        self._waiting.setdefault(bucket, []).append(row)
        self._waiting_bytes[bucket] = self._waiting_bytes.get(bucket, 0) + _binary_bytes(row)
        if len(self._waiting[bucket]) >= ROW_GROUP_MAX_ROWS:
            self._write_bucket(bucket)
        elif sum(self._waiting_bytes.values()) >= ROW_GROUP_BYTES:
            self._write_bucket(max(self._waiting_bytes, key=self._waiting_bytes.__getitem__))

    def _write_bucket(self, bucket: str | None) -> None:
        del self._waiting_bytes[bucket]
        for row in self._waiting.pop(bucket):
            super().add(row)
        super().flush()

    def flush(self) -> None:
        for bucket in sorted(self._waiting, key=lambda name: (name is None, name or "")):
            self._write_bucket(bucket)
        super().flush()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
