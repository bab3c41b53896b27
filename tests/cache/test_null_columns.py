"""Nulls known from Parquet footers alone: which columns are null in every row, and why."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache.null_columns import ONLY_NULLS, all_null_columns, null_counts
from pipeline.cache.schema import cache_metadata

NO_LPIPS = "no LPIPS weights: missing the calibrated heads (--lpips-heads)"


def _write(path: Path, columns: dict[str, pa.Array], null_scores: dict[str, str] | None = None,
           **options) -> pq.FileMetaData:
    fields = {"job_hash": "test", **({"null_scores": null_scores} if null_scores is not None else {})}
    table = pa.table(columns).replace_schema_metadata(cache_metadata(fields))
    pq.write_table(table, path, **options)
    return pq.read_metadata(path)


def _scores(psnr: list, lpips: list) -> dict[str, pa.Array]:
    return {"psnr": pa.array(psnr, pa.float32()), "lpips": pa.array(lpips, pa.float32()),
            "latent_shape": pa.array([[1] if value is not None else None for value in psnr], pa.list_(pa.int32()))}


def test_the_metadata_reason_is_given_for_a_null_score(tmp_path):
    footer = _write(tmp_path / "a.parquet", _scores([30.0, None], [None, None]), {"lpips": NO_LPIPS})
    assert all_null_columns([footer]) == {"lpips": NO_LPIPS}


def test_statistics_tell_a_column_null_in_every_row_of_every_file(tmp_path):
    footers = [_write(tmp_path / "a.parquet", _scores([None, None], [None, None]), row_group_size=1),
               _write(tmp_path / "b.parquet", _scores([None], [0.1]))]
    # psnr is null everywhere, lpips has a value in b. A nested column's leaf statistics count empty
    # lists with the nulls, so they do not tell: latent_shape is never listed.
    assert all_null_columns(footers) == {"psnr": ONLY_NULLS}
    assert all_null_columns(footers[:1]) == {"psnr": ONLY_NULLS, "lpips": ONLY_NULLS}


def test_a_value_in_any_file_or_an_unknown_null_count_keeps_a_column_off_the_list(tmp_path):
    null = _write(tmp_path / "a.parquet", _scores([None], [None]), {"lpips": NO_LPIPS})
    valued = _write(tmp_path / "b.parquet", _scores([31.0], [0.2]))
    unknown = _write(tmp_path / "c.parquet", _scores([None], [None]), {"lpips": NO_LPIPS}, write_statistics=False)
    assert all_null_columns([null, valued]) == {}
    # Without statistics a file cannot say its psnr is null; its metadata still says why lpips is.
    assert all_null_columns([unknown]) == all_null_columns([null, unknown]) == {"lpips": NO_LPIPS}
    assert null_counts(unknown, 0) == {"psnr": None, "lpips": None}


def test_an_empty_file_says_nothing_about_values(tmp_path):
    empty = _write(tmp_path / "empty.parquet", _scores([], []))
    assert all_null_columns([empty]) == {}
    assert all_null_columns([empty, _write(tmp_path / "a.parquet", _scores([None], [0.3]))]) == {"psnr": ONLY_NULLS}


def test_reasons_that_differ_between_files_are_all_given(tmp_path):
    footers = [_write(tmp_path / "a.parquet", _scores([1.0], [None]), {"lpips": NO_LPIPS}),
               _write(tmp_path / "b.parquet", _scores([1.0], [None]), {"lpips": "not requested (--scores)"}),
               _write(tmp_path / "c.parquet", _scores([1.0], [None]))]
    assert all_null_columns(footers) == {"lpips": f"{NO_LPIPS}; not requested (--scores); {ONLY_NULLS}"}


def test_null_counts_per_row_group(tmp_path):
    footer = _write(tmp_path / "a.parquet", _scores([1.0, None, None], [None, 0.1, None]), row_group_size=2)
    assert [null_counts(footer, group) for group in range(2)] == [
        {"psnr": 1, "lpips": 1}, {"psnr": 1, "lpips": 1}]
