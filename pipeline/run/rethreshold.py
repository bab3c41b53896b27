"""`--rethreshold`: new thresholds applied to a committed cache without encoding anything again.

Each file is rewritten with its `passed` column recomputed from its stored scores and its cache
metadata's thresholds and job hash replaced; every other column is copied as Arrow data, so latents,
moments, scores and previews arrive byte for byte. The new file is committed like an encoded one
(`ShardFileWriter`: `_tmp/`, then an atomic rename, or copy then delete on an object store).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cache.manifest import read_committed_shard
from pipeline.cache.schema import SCORE_COLUMNS, cache_metadata
from pipeline.cache.shard_writer import ShardFileWriter
from pipeline.storage import Location


def passed_column(table: pa.Table, thresholds: dict[str, tuple[str, float]]) -> pa.ChunkedArray:
    """True where every threshold holds on the stored score, false where one fails, null on error rows."""
    verdict = pc.if_else(pc.equal(table["status"], "ok"), pa.scalar(True), pa.scalar(None, pa.bool_()))
    for name, (op, bound) in thresholds.items():
        score = table[SCORE_COLUMNS[name]].cast(pa.float64())
        verdict = pc.and_(verdict, pc.greater_equal(score, bound) if op == ">=" else pc.less_equal(score, bound))
    return verdict


def rethreshold_file(output: Location, name: str, fields: dict[str, Any],
                     thresholds: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """Rewrite `OUTPUT/<name>.parquet` for `thresholds`; `fields` is the new job's cache metadata, of
    which `job_hash` and `thresholds` replace the file's own. Returns the file's new shard entry."""
    location = output.child(f"{name}.parquet")
    metadata, shard = read_committed_shard(location)
    metadata.update(
        job_hash=fields["job_hash"],
        thresholds=fields["thresholds"],
        # The latents stay what `code_version` made; only `passed` was set later, and from what.
        rethresholded={"previous_thresholds": metadata.get("thresholds"),
                       "time": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    )
    with location.open("rb") as handle:
        source = pq.ParquetFile(handle)
        schema = source.schema_arrow.remove_metadata()
        passed_index = schema.get_field_index("passed")
        writer = ShardFileWriter(output.url, name, cache_metadata(metadata), schema=schema)
        try:
            rejected = 0
            for group in range(source.num_row_groups):
                table = source.read_row_group(group)
                passed = passed_column(table, thresholds)
                rejected += pc.sum(pc.equal(passed, False)).as_py() or 0
                writer.add_table(table.set_column(passed_index, schema.field(passed_index), passed))
            shard = {**shard, "rejected": rejected}
            committed = writer.commit(shard)
        except BaseException:
            writer.abort()
            raise
    return {**shard, "path": committed.path, "sha256": committed.sha256, "size_bytes": committed.size_bytes}
