"""Re-filtering a cache without re-encoding: a new cache holding the rows a `where` expression selects.

Each source file becomes one output file of the same name, committed like the encode job's
(`_tmp/`, fsync, rename; copy then delete on object stores). Rows are copied as Arrow data, so
latents, previews and every other value arrive byte for byte; no VAE is loaded. A row is kept where
the expression is true; null counts as false (SQL), so error rows go unless the expression selects
them (`status = 'error'`, `passed or status = 'error'`, `caption is not null`). An expression that
compares a column null in every source file (a score computed without its weights) is refused,
with the reason the footers give, rather than keeping nothing.

Row groups are read in two passes: first only the columns the expression names, then, only for a
row group where something is selected, the whole row group, so a selective filter does not read
the latents it drops.

Resume: the output's file metadata carries a `filter` entry and a `job_hash` derived from the
source cache's job hash, the source location and the expression's canonical form. A rerun skips
files committed with the same identity whose source file is unchanged, and refuses an output
written by another filter or job unless `overwrite`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.cache.filter_summary import FilterReport, total_counts
from pipeline.cache.manifest import (
    MANIFEST_NAME,
    cache_files,
    committed_files,
    identity_hash,
    load_manifest,
    read_committed_shard,
    shard_name,
    summarize,
    write_manifest,
)
from pipeline.cache.null_columns import all_null_columns
from pipeline.cache.output_lock import OutputLock
from pipeline.cache.schema import (
    CONTRACT_VERSION,
    METADATA_KEY,
    SHARD_METADATA_KEY,
    read_cache_metadata,
)
from pipeline.cache.shard_writer import (
    ShardFileWriter,
    open_output_dir,
    remove_empty_tmp_dir,
)
from pipeline.cache.where import (
    WhereError,
    canonical_where,
    criteria,
    parse_where,
    refuse_null_columns,
    where_columns,
)
from pipeline.errors import UsageError
from pipeline.interrupts import Interrupted
from pipeline.storage import Location, locate
from pipeline.version import code_version


@dataclass(frozen=True)
class FilterSettings:
    cache: str
    output: str
    where: str
    overwrite: bool = False
    # Files filtered at once; the work is Parquet I/O and Arrow kernels, which release the GIL.
    workers: int = 2

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError("--workers must be at least 1")


@dataclass(frozen=True)
class _SourceFile:
    location: Location
    name: str
    footer: pq.FileMetaData
    metadata: dict[str, Any]
    shard: dict[str, Any]
    fingerprint: str


def _source_file(location: Location) -> _SourceFile:
    """Footer only. The fingerprint (size, rows, the encode attempt's footer entry) changes when the
    source file is rewritten, so a resume refilters it."""
    with location.open("rb") as handle:
        footer = pq.read_metadata(handle)
    metadata = read_cache_metadata(footer.metadata)
    shard_raw = (footer.metadata or {}).get(SHARD_METADATA_KEY, b"{}")
    size = location.fs.size(location.path)
    fingerprint = hashlib.sha256(b"%d/%d/" % (size, footer.num_rows) + shard_raw).hexdigest()[:16]
    return _SourceFile(location, shard_name(location), footer, metadata, json.loads(shard_raw), fingerprint)


@dataclass(frozen=True)
class _FilterPlan:
    settings: FilterSettings
    source: Location
    output: Location
    criteria: list[str]
    canonical: str
    identity: dict[str, Any]
    job_hash: str
    started: str
    sources: list[_SourceFile]
    todo: list[_SourceFile]
    committed: dict[str, dict[str, Any]]
    source_manifest: dict[str, Any] | None


def _check_expression(settings: FilterSettings, sources: list[_SourceFile]) -> tuple[list[str], str]:
    try:
        texts = criteria(settings.where)
        canonical = canonical_where(settings.where)
        for source in sources[:1]:
            with source.location.open("rb") as handle:
                schema = pq.read_schema(handle)
            parse_where(settings.where, schema)
        refuse_null_columns(settings.where, all_null_columns(source.footer for source in sources))
    except WhereError as exc:
        raise UsageError(f"--{exc}") from exc  # the message starts "where: "
    return texts, canonical


def _prepare_output(output: Location, job_hash: str, overwrite: bool) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Create OUTPUT, clear `_tmp/`; the entries and start time of files this filter committed before."""
    open_output_dir(output)
    committed: dict[str, dict[str, Any]] = {}
    started = None
    foreign: list[str] = []
    described = ""
    for location in committed_files(output.url):
        try:
            metadata, shard = read_committed_shard(location)
        except (ValueError, OSError) as exc:
            foreign.append(shard_name(location))
            described = described or f"{shard_name(location)}.parquet is not a cache file ({exc})"
            continue
        if metadata.get("job_hash") != job_hash:
            foreign.append(shard_name(location))
            previous = metadata.get("filter")
            described = described or (
                f"filtered from {previous['source']} with --where {previous['expression']!r}" if previous
                else "an encoded cache, not this filter's output")
            continue
        committed[shard_name(location)] = shard
        started = started or metadata["filter"]["time"]
    manifest = load_manifest(output.url)
    if manifest is not None and manifest.get("job", {}).get("hash") != job_hash:
        foreign.append(MANIFEST_NAME)
        job = manifest.get("job", {})
        described = described or (
            f"filtered from {job.get('source')} with --where {job.get('where')!r}" if job.get("kind") == "filter"
            else "another job's manifest")
    if foreign and not overwrite:
        raise UsageError(
            f"{output.url} already holds another cache ({described}; {', '.join(foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}). Use another --output, or --overwrite to delete it and start again."
        )
    if foreign:
        for location in committed_files(output.url):
            location.remove()
        output.child(MANIFEST_NAME).remove()
        return {}, None
    return committed, started


def plan_filter(settings: FilterSettings) -> _FilterPlan:
    source = locate(settings.cache)
    output = locate(settings.output)
    if source.url.rstrip("/") == output.url.rstrip("/"):
        raise UsageError("--output must differ from --cache: the filter writes a new cache")
    locations = cache_files(source.url, "--cache")
    try:
        sources = [_source_file(location) for location in locations]
    except ValueError as exc:
        raise UsageError(f"--cache {settings.cache!r}: {exc}") from exc
    texts, canonical = _check_expression(settings, sources)
    identity = {
        "source": source.url,
        "where": canonical,
        "source_job_hash": sorted({str(item.metadata.get("job_hash")) for item in sources}),
    }
    job_hash = identity_hash(identity)
    committed, started = _prepare_output(output, job_hash, settings.overwrite)
    todo = [item for item in sources
            if committed.get(item.name, {}).get("source", {}).get("fingerprint") != item.fingerprint]
    started = started or datetime.now(timezone.utc).isoformat(timespec="seconds")
    return _FilterPlan(settings, source, output, texts, canonical, identity, job_hash, started, sources, todo,
                       committed, load_manifest(source.url))


def _output_metadata(plan: _FilterPlan, item: _SourceFile) -> dict[str, Any]:
    return {
        **item.metadata,
        "job_hash": plan.job_hash,
        "filter": {
            "expression": plan.settings.where,
            "canonical": plan.canonical,
            "criteria": plan.criteria,
            "source": plan.source.url,
            "source_job_hash": item.metadata.get("job_hash"),
            "time": plan.started,
            "code_version": code_version(),
            # A filtered cache filtered again keeps the chain.
            "previous": item.metadata.get("filter"),
        },
    }


def _evaluate(table: pa.Table, expressions: list[pc.Expression]) -> list[pa.ChunkedArray]:
    """Each expression as a boolean column over `table`'s rows, nulls made false."""
    projected = ds.dataset(table).to_table(columns={f"e{i}": e for i, e in enumerate(expressions)})
    return [pc.fill_null(projected.column(i), False) for i in range(len(expressions))]


class _Stopped(Exception):
    """The job was interrupted while this file was being filtered."""


def filter_file(plan: _FilterPlan, item: _SourceFile, stop: threading.Event | None = None) -> dict[str, Any]:
    """Filter one source file into a committed output file; its manifest entry. Setting `stop`
    abandons the file at the next row group, removing its temporary file."""
    started = time.perf_counter()
    seconds = {"read": 0.0, "filter": 0.0, "write": 0.0}
    with item.location.open("rb") as handle:
        source = pq.ParquetFile(handle)
        schema = source.schema_arrow
        expression = parse_where(plan.settings.where, schema)
        singles = [parse_where(text, schema) for text in plan.criteria]
        probe_columns = where_columns(plan.settings.where) or [schema.names[0]]
        metadata = {k: v for k, v in (schema.metadata or {}).items() if k not in (SHARD_METADATA_KEY, b"ARROW:schema")}
        metadata[METADATA_KEY] = json.dumps(_output_metadata(plan, item), sort_keys=True).encode()
        writer = ShardFileWriter(plan.output.url, item.name, metadata, schema=schema.remove_metadata())
        try:
            kept_by_criterion = [0] * len(singles)
            clips = error_rows = rejected = 0
            for group in range(source.num_row_groups):
                if stop is not None and stop.is_set():
                    raise _Stopped(item.name)
                t0 = time.perf_counter()
                probe = source.read_row_group(group, columns=probe_columns)
                t1 = time.perf_counter()
                masks = _evaluate(probe, [expression, *singles])
                for index, mask in enumerate(masks[1:]):
                    kept_by_criterion[index] += pc.sum(mask).as_py() or 0
                selected = pc.sum(masks[0]).as_py() or 0
                t2 = time.perf_counter()
                seconds["read"] += t1 - t0
                seconds["filter"] += t2 - t1
                if not selected:
                    continue
                rows = source.read_row_group(group).filter(masks[0])
                t3 = time.perf_counter()
                seconds["read"] += t3 - t2
                status = rows.column("status")
                clips += pc.sum(pc.equal(status, "ok")).as_py() or 0
                error_rows += pc.sum(pc.equal(status, "error")).as_py() or 0
                rejected += pc.sum(pc.equal(rows.column("passed"), False)).as_py() or 0
                writer.add_table(rows)
                seconds["write"] += time.perf_counter() - t3
            source_rows = source.metadata.num_rows
            t4 = time.perf_counter()
            entry = {
                "url": item.shard.get("url", item.location.url),
                "name": item.name,
                # "partial" stays: the input shard was truncated, whatever the filter keeps.
                "status": item.shard.get("status", "committed"),
                "reason": item.shard.get("reason"),
                "samples": item.shard.get("samples"),
                "clips": clips,
                "error_rows": error_rows,
                "rejected": rejected,
                "rows": writer.rows,
                "source": {
                    "path": item.location.url,
                    "rows": source_rows,
                    "fingerprint": item.fingerprint,
                    "seconds": item.shard.get("seconds", {}),
                },
                "filter": {
                    "source_rows": source_rows,
                    "kept": writer.rows,
                    "dropped": source_rows - writer.rows,
                    "criteria": [{"criterion": text, "kept": n, "dropped": source_rows - n}
                                 for text, n in zip(plan.criteria, kept_by_criterion)],
                },
                "host": os.uname().nodename,
                "pid": os.getpid(),
            }
            seconds["write"] += time.perf_counter() - t4
            entry["seconds"] = {name: round(value, 4) for name, value in seconds.items()}
            entry["seconds"]["total"] = round(time.perf_counter() - started, 4)
            committed = writer.commit(entry)
        except BaseException:
            writer.abort()
            raise
    entry.update(path=committed.path, sha256=committed.sha256, size_bytes=committed.size_bytes)
    return entry


def _manifest(plan: _FilterPlan, shards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    source_manifest = plan.source_manifest or {}
    model = source_manifest.get("model") or (plan.sources[0].metadata.get("vae") if plan.sources else None)
    return {
        "contract_version": CONTRACT_VERSION,
        "job": {
            "kind": "filter",
            "hash": plan.job_hash,
            "source": plan.source.url,
            "where": plan.settings.where,
            "identity": plan.identity,
            "criteria": plan.criteria,
            "source_job": source_manifest.get("job"),
            "code_version": code_version(),
        },
        "model": model,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "totals": summarize(shards),
        "filter": total_counts(plan.criteria, shards.values()),
        "shards": dict(sorted(shards.items())),
    }


def run_filter_job(settings: FilterSettings) -> FilterReport:
    """Hold the output's lock, plan (UsageError on bad flags), then filter every source file not
    already done; a file that fails is recorded (exit status 3) and retried by the next run."""
    started = time.perf_counter()
    with OutputLock(settings.output, "jobs.filter") as lock:
        if lock.takeover_notice:
            print(lock.takeover_notice, file=sys.stderr)
        report = _filter_files(plan_filter(settings))
    report.elapsed_s = time.perf_counter() - started
    return report


def _filter_files(plan: _FilterPlan) -> FilterReport:
    settings = plan.settings
    done = {item.name for item in plan.sources} - {item.name for item in plan.todo}
    shards = dict(plan.committed)
    known = {item.name for item in plan.sources}
    for name in sorted(set(plan.committed) - known):
        print(f"warning: {name}.parquet is in --output but no longer in --cache; it is kept", file=sys.stderr)
    report = FilterReport(plan.source.url, plan.output.url, settings.where, plan.criteria, shards,
                          sorted(done & set(plan.committed)))
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=settings.workers)
    try:
        futures = {pool.submit(filter_file, plan, item, stop): item for item in plan.todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                shards[item.name] = future.result()
            except Exception as exc:  # recorded; a rerun retries the file
                entry = {"url": item.shard.get("url", item.location.url), "name": item.name, "status": "failed",
                         "reason": f"{type(exc).__name__}: {exc}"[:2000], "source": {"path": item.location.url}}
                shards[item.name] = entry
                report.failed.append(entry)
            write_manifest(plan.output.url, _manifest(plan, shards))
        if not plan.todo:
            write_manifest(plan.output.url, _manifest(plan, shards))
    except Interrupted as interrupt:
        # Files being written are dropped (their temporary files removed); committed ones stay.
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        interrupt.progress = f"{len(committed_files(plan.output.url))} of {len(plan.sources)} files committed"
        raise
    finally:
        pool.shutdown(wait=True)
        remove_empty_tmp_dir(plan.output.url)
    return report
