"""What the Parquet footers of a cache say about nulls, without reading a row: the columns that are
null in every row (a score computed without its weights, a column of an error-only cache), and the
null count of a column per row group."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.parquet as pq

from pipeline.cache.schema import read_cache_metadata

__all__ = ["ONLY_NULLS", "all_null_columns", "null_counts"]

# The reason given for a column the metadata says nothing about.
ONLY_NULLS = "it holds only nulls: the Parquet statistics count as many nulls as rows"


def null_counts(footer: pq.FileMetaData, group: int) -> dict[str, int | None]:
    """Top-level column → its nulls in row group `group`, from the statistics; None where the writer
    recorded no null count (statistics off for that column)."""
    row_group = footer.row_group(group)
    counts: dict[str, int | None] = {}
    for index in range(row_group.num_columns):
        chunk = row_group.column(index)
        if "." in chunk.path_in_schema:  # a leaf of a nested column (latent_shape's elements)
            continue
        statistics = chunk.statistics
        counts[chunk.path_in_schema] = (statistics.null_count if statistics is not None and statistics.has_null_count
                                        else None)
    return counts


def _nulls_of_file(footer: pq.FileMetaData) -> tuple[dict[str, str], set[str]]:
    """(column → why it is null in every row, columns that may hold a value) for one file."""
    reasons = dict(read_cache_metadata(footer.metadata).get("null_scores") or {})
    if footer.num_rows == 0:
        return reasons, set()  # an empty file says nothing about a column's values
    totals: dict[str, int | None] = {}
    for group in range(footer.num_row_groups):
        for name, count in null_counts(footer, group).items():
            total = totals.get(name, 0)
            totals[name] = None if total is None or count is None else total + count
    valued = set()
    for name, total in totals.items():
        if name in reasons:
            continue
        if total == footer.num_rows:
            reasons[name] = ONLY_NULLS
        else:
            valued.add(name)  # a value, or no null count to tell
    return reasons, valued


def all_null_columns(footers: Iterable[pq.FileMetaData]) -> dict[str, str]:
    """Column → why it is null in every row of every file: the reasons the cache metadata gives
    (`null_scores`), else that the statistics count as many nulls as rows. A column that may hold a
    value in any file (or whose null count a file does not record) is not listed."""
    reasons: dict[str, list[str]] = {}
    valued: set[str] = set()
    for footer in footers:
        file_reasons, file_valued = _nulls_of_file(footer)
        valued |= file_valued
        for name, reason in file_reasons.items():
            if reason not in reasons.setdefault(name, []):
                reasons[name].append(reason)
    return {name: "; ".join(texts) for name, texts in reasons.items() if name not in valued}
