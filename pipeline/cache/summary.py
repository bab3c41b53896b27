"""What a cache holds, read from its footers and its small columns (never the latents): the numbers
behind `python -m jobs.inspect` and `python -m jobs.report`."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cache.manifest import cache_files, load_manifest, shard_name
from pipeline.cache.schema import (
    BUCKET_COLUMNS,
    SCHEMA,
    SCORE_COLUMNS,
    SHARD_METADATA_KEY,
    bucket_name,
    read_cache_metadata,
)
from pipeline.errors import UsageError
from pipeline.storage import locate
from vae.latent_normalisation import LatentNormalisation

SCORES = tuple(SCORE_COLUMNS.values())  # psnr, ssim, lpips, disc_score
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "disc_score": True}
QUANTILES = (("min", 0.0), ("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("max", 1.0))
LIGHT_COLUMNS = ("key", "status", "error", "passed", "latent_shape", "latent_dtype", "caption", "height", "width",
                 "num_frames", *SCORES)
# Fields that make two caches' latents interchangeable; files that differ in them are flagged.
IDENTITY_FIELDS = ("contract_version", "vae", "latent_dtype", "job_hash")


@dataclass(frozen=True)
class CacheFile:
    name: str
    url: str
    rows: int
    row_groups: int
    size_bytes: int
    previews: int  # rows whose preview is not null (from the column statistics)
    metadata: dict[str, Any]
    shard: dict[str, Any]


@dataclass(frozen=True)
class CacheScan:
    url: str
    files: list[CacheFile]
    manifest: dict[str, Any] | None
    table: pa.Table  # LIGHT_COLUMNS of every row, plus `file` (the file's name)
    differing: dict[str, list[str]]  # identity field → files whose value differs from the first file's

    @property
    def metadata(self) -> dict[str, Any]:
        return self.files[0].metadata

    @property
    def previews(self) -> int:
        return sum(file.previews for file in self.files)


def _non_null_count(footer: pq.FileMetaData, column: str) -> int:
    names = [footer.schema.column(i).name for i in range(footer.num_columns)]
    if column not in names:
        return 0
    index = names.index(column)
    count = 0
    for group in range(footer.num_row_groups):
        chunk = footer.row_group(group).column(index)
        stats = chunk.statistics
        rows = footer.row_group(group).num_rows
        count += rows - stats.null_count if stats is not None and stats.has_null_count else rows
    return count


def scan_cache(url: str) -> CacheScan:
    """Footers, the manifest and the light columns of every committed file; UsageError if `url`
    holds no cache."""
    cache = locate(url)
    locations = cache_files(cache.url, "cache")
    files: list[CacheFile] = []
    tables: list[pa.Table] = []
    for location in locations:
        with location.open("rb") as handle:
            try:
                parquet = pq.ParquetFile(handle)
                footer = parquet.metadata
                metadata = read_cache_metadata(footer.metadata)
            except ValueError as exc:  # ArrowInvalid too: not a Parquet file
                raise UsageError(f"{location.url}: {exc}") from exc
            raw_shard = (footer.metadata or {}).get(SHARD_METADATA_KEY)
            shard = json.loads(raw_shard) if raw_shard else {}
            present = [name for name in LIGHT_COLUMNS if name in parquet.schema_arrow.names]
            table = parquet.read(columns=present)
        for name in LIGHT_COLUMNS:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, SCHEMA.field(name).type))
        name = shard_name(location)
        table = table.select(list(LIGHT_COLUMNS)).append_column("file", pa.array([name] * table.num_rows, pa.string()))
        tables.append(table)
        files.append(CacheFile(name, location.url, footer.num_rows, footer.num_row_groups,
                               location.fs.size(location.path), _non_null_count(footer, "preview"), metadata, shard))
    differing: dict[str, list[str]] = {}
    for field in IDENTITY_FIELDS:
        first = files[0].metadata.get(field)
        odd = [file.name for file in files[1:] if file.metadata.get(field) != first]
        if odd:
            differing[field] = odd
    return CacheScan(cache.url, files, load_manifest(cache.url), pa.concat_tables(tables), differing)


@dataclass(frozen=True)
class RowCounts:
    rows: int
    ok: int
    errors: int
    passed: int
    rejected: int


def row_counts(table: pa.Table) -> RowCounts:
    status = table.column("status")
    passed = table.column("passed")
    ok = pc.sum(pc.equal(status, "ok")).as_py() or 0
    errors = pc.sum(pc.equal(status, "error")).as_py() or 0
    return RowCounts(table.num_rows, ok, errors, pc.sum(pc.equal(passed, True)).as_py() or 0,
                     pc.sum(pc.equal(passed, False)).as_py() or 0)


def score_values(table: pa.Table, column: str) -> np.ndarray:
    """The non-null values of a score column over `ok` rows, as float64."""
    ok = table.filter(pc.and_(pc.equal(table.column("status"), "ok"), pc.is_valid(table.column(column))))
    return ok.column(column).to_numpy().astype(np.float64)


def score_quantiles(table: pa.Table) -> dict[str, dict[str, float] | None]:
    """min/p10/p50/p90/max (linear interpolation, as numpy's default) and count per score; None when
    the score has no values."""
    result: dict[str, dict[str, float] | None] = {}
    for column in SCORES:
        values = score_values(table, column)
        if values.size == 0:
            result[column] = None
            continue
        quantiles = np.quantile(values, [q for _, q in QUANTILES])
        result[column] = {"n": int(values.size), **{name: float(v) for (name, _), v in zip(QUANTILES, quantiles)}}
    return result


def reason_group(reason: str) -> str:
    """Error reasons that differ only in numbers, quoted names or the failing clip fall in one group."""
    text = re.sub(r"^clip \d+: ", "", reason.strip())
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text if len(text) <= 160 else text[:159] + "…"


def errors_by_reason(table: pa.Table) -> list[tuple[str, int, str]]:
    """(group, count, one full reason) for the error rows, most frequent first."""
    reasons = table.filter(pc.equal(table.column("status"), "error")).column("error").to_pylist()
    groups: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for reason in reasons:
        group = reason_group(reason or "(no reason given)")
        groups[group] += 1
        examples.setdefault(group, reason or "")
    return [(group, count, examples[group]) for group, count in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]


def latent_shapes(table: pa.Table) -> Counter[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) → clips."""
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    return Counter((dtype, tuple(shape or ())) for dtype, shape in
                   zip(ok.column("latent_dtype").to_pylist(), ok.column("latent_shape").to_pylist()))


def bucket_counts(table: pa.Table) -> list[tuple[str, int]]:
    """(bucket, clips), most clips first; the bucket "HxWxF" as the `bucket` column holds it, derived the same
    way for caches older than that column."""
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    counts = Counter(bucket_name(*size) for size in zip(*(ok.column(name).to_pylist() for name in BUCKET_COLUMNS)))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def sampling_text(sampling: dict[str, Any]) -> str:
    """The `sampling` metadata entry in words."""
    size = f"buckets {sampling['buckets']}" if sampling.get("buckets") else f"resolution {sampling.get('resolution')}"
    time = (f"resampled to {sampling['target_fps']:g} fps" if sampling.get("target_fps")
            else f"stride {sampling.get('frame_stride')}")
    clips = (f"one clip per span of {sampling['clip_spans_from']}" if sampling.get("clip_spans_from")
             else f"{sampling.get('frame_extraction', 'uniform')} extraction, up to {sampling.get('clips_per_video')} "
                  "clips per video and frame count")
    return f"{sampling.get('num_frames')} frames, {time}, {clips}, {size}"


def thresholds(metadata: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Score column → (op, bound) from the metadata's `thresholds` (`{"psnr": ">= 30"}`)."""
    parsed = {}
    for column, text in (metadata.get("thresholds") or {}).items():
        op, _, bound = str(text).partition(" ")
        try:
            parsed[column] = (op, float(bound))
        except ValueError:
            continue
    return parsed


def weights_text(metadata: dict[str, Any]) -> str:
    vae = metadata.get("vae") or {}
    if vae.get("weights_sha256"):
        return f"sha256 {vae['weights_sha256']}"
    seed = vae.get("random_init_seed")
    return f"RANDOM (seed {seed}; encoded with --allow-random-weights: the latents are meaningless)"


_CONFIG_HIGHLIGHTS = ("z_channels", "latent_channels", "ch", "ch_mult", "block_out_channels", "num_res_blocks",
                      "layers_per_block", "use_quant_conv", "sample", "time_compression_ratio")


def vae_text(metadata: dict[str, Any]) -> str:
    vae = metadata.get("vae") or {}
    config = vae.get("config") or {}
    highlights = ", ".join(f"{key} {config[key]}" for key in _CONFIG_HIGHLIGHTS if config.get(key) is not None)
    spec = f" {vae['spec']!r}" if vae.get("spec") else ""
    return (f"{vae.get('kind', '?')}{spec}: {vae.get('latent_channels', '?')} latent channels, spatial "
            f"x{vae.get('spatial_factor', '?')}, temporal x{vae.get('temporal_factor', '?')}, "
            f"{_normalisation(vae)}"
            + (f"; config: {highlights}" if highlights else ""))


def _normalisation(vae: dict[str, Any]) -> str:
    try:
        return LatentNormalisation.from_metadata(vae).describe()
    except (KeyError, TypeError, ValueError):
        return f"scale {vae.get('scale_factor', '?')}, shift {vae.get('shift_factor', '?')}"


def format_number(value: float) -> str:
    return f"{value:.4g}"


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def format_cache_summary(scan: CacheScan) -> str:
    metadata = scan.metadata
    counts = row_counts(scan.table)
    lines = [f"{'cache':<14}{scan.url} (contract v{metadata.get('contract_version')}, code "
             f"{metadata.get('code_version', '?')})"]
    files = f"{len(scan.files)} Parquet files, {_size(sum(f.size_bytes for f in scan.files))}, " \
            f"{sum(f.row_groups for f in scan.files)} row groups"
    if scan.manifest is not None:
        totals = scan.manifest.get("totals", {})
        files += (f"; manifest: {totals.get('committed', 0)} committed, {totals.get('partial', 0)} partial, "
                  f"{totals.get('failed', 0)} failed")
    else:
        files += "; no _manifest.json"
    lines.append(f"{'files':<14}{files}")
    lines.append(f"{'rows':<14}{counts.rows}: {counts.ok} clips ok ({counts.passed} passed, {counts.rejected} "
                 f"rejected), {counts.errors} error rows")
    lines.append(f"{'VAE':<14}{vae_text(metadata)}")
    lines.append(f"{'weights':<14}{weights_text(metadata)}")
    shapes = latent_shapes(scan.table)
    shape_text = "; ".join(f"{dtype} {'x'.join(map(str, shape))} ({n} clips)" for (dtype, shape), n in shapes.most_common())
    lines.append(f"{'latents':<14}{shape_text or 'none (no ok rows)'}"
                 f"{'; with moments' if metadata.get('store_moments') else ''}")
    if metadata.get("sampling"):
        lines.append(f"{'sampling':<14}{sampling_text(metadata['sampling'])}")
    buckets = bucket_counts(scan.table)
    lines.append(f"{'buckets':<14}" + ("; ".join(f"{name} ({n} clips)" for name, n in buckets)
                                       or "none (no ok rows)"))
    lines.append(f"{'previews':<14}{scan.previews} of {counts.rows} rows" if scan.previews
                 else f"{'previews':<14}none (encode with --keep-previews)")
    limits = thresholds(metadata)
    lines.append(f"{'thresholds':<14}" + (", ".join(f"{c} {op} {format_number(b)}" for c, (op, b) in limits.items())
                                          or "none (every ok clip passed)"))
    chain = metadata.get("filter")
    while chain:
        lines.append(f"{'filtered':<14}from {chain.get('source')} where {chain.get('expression')} ({chain.get('time')})")
        chain = chain.get("previous")
    for field, odd in scan.differing.items():
        lines.append(f"WARNING       files differ in {field}: {', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''}")

    lines += ["", f"{'score':<14}{'n':>7}" + "".join(f"{name:>11}" for name, _ in QUANTILES) + "  note"]
    random_scores = set(metadata.get("scores_with_random_weights") or [])
    null_reasons = metadata.get("null_scores") or {}
    for column, stats in score_quantiles(scan.table).items():
        note = []
        if column in limits:
            note.append(f"passed if {limits[column][0]} {format_number(limits[column][1])}")
        if column in random_scores:
            note.append("RANDOM weights")
        if stats is None:
            reason = null_reasons.get(column, "not computed")
            lines.append(f"{column:<14}{0:>7}  null: {reason}")
            continue
        lines.append(f"{column:<14}{stats['n']:>7}" + "".join(f"{format_number(stats[name]):>11}" for name, _ in QUANTILES)
                     + (f"  {'; '.join(note)}" if note else ""))

    errors = errors_by_reason(scan.table)
    lines.append("")
    if errors:
        lines.append(f"errors by reason ({counts.errors} rows, {len(errors)} kinds)")
        lines += [f"{count:>8}  {group}" for group, count, _ in errors]
    else:
        lines.append("errors by reason: none")
    failed = [entry for entry in (scan.manifest or {}).get("shards", {}).values() if entry.get("status") == "failed"]
    for entry in failed:
        lines.append(f"FAILED shard  {entry.get('url')}: {entry.get('reason')} (no file; rerun the job to retry)")
    return "\n".join(lines)
