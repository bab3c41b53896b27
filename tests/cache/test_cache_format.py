"""Cache contract v1 at the byte level: latent bytes, rows, atomic commit."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cache.schema import (
    CONTRACT_VERSION,
    SCHEMA,
    SHARD_METADATA_KEY,
    SampleIdentity,
    cache_metadata,
    error_row,
    read_cache_metadata,
    tensor_from_bytes,
    tensor_to_bytes,
)
from pipeline.cache.shard_writer import TMP_DIR_NAME, ShardFileWriter, sha256_of_file


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_latent_bytes_roundtrip(dtype):
    latent = torch.randn(4, 3, 5, 6).permute(0, 1, 3, 2)  # non-contiguous on purpose
    data = tensor_to_bytes(latent, dtype)
    restored = tensor_from_bytes(data, latent.shape, dtype)
    assert restored.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    assert torch.equal(restored, latent.to(restored.dtype))
    assert len(data) == latent.numel() * restored.element_size()


def test_numpy_alone_restores_a_float16_latent():
    latent = torch.randn(2, 3, 4, 5)
    data = tensor_to_bytes(latent, "float16")
    array = np.frombuffer(data, dtype="<f2").reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(array, latent.half().numpy())


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown latent dtype"):
        tensor_from_bytes(b"\0" * 4, [1], "int8")


def _identity():
    return SampleIdentity("shard-00000", "clip/a", "/data/shard-00000.tar", "a caption", '{"x": 1}')


def test_error_row_follows_the_contract():
    row = error_row(_identity(), "not a video")
    assert set(row) == set(SCHEMA.names)
    assert row["key"] == "shard-00000/clip/a/-1"
    assert (row["clip_index"], row["status"], row["error"]) == (-1, "error", "not a video")
    assert row["latent"] is None and row["passed"] is None and row["frame_start"] is None


def test_commit_is_atomic_and_carries_metadata(tmp_path):
    writer = ShardFileWriter(tmp_path, "shard-00000", cache_metadata({"job_hash": "abc"}))
    writer.add(error_row(_identity(), "broken"))
    # Before the commit nothing is visible where readers look.
    assert list(tmp_path.glob("*.parquet")) == []
    assert len(list((tmp_path / TMP_DIR_NAME).iterdir())) == 1
    committed = writer.commit({"status": "committed", "samples": 1})
    assert committed.rows == 1
    assert os.path.basename(committed.path) == "shard-00000.parquet"
    assert committed.sha256 == sha256_of_file(committed.path)
    assert list((tmp_path / TMP_DIR_NAME).iterdir()) == []
    metadata = pq.read_metadata(committed.path).metadata
    assert read_cache_metadata(metadata)["job_hash"] == "abc"
    assert read_cache_metadata(metadata)["contract_version"] == CONTRACT_VERSION == "1.2"
    assert json.loads(metadata[SHARD_METADATA_KEY]) == {"samples": 1, "status": "committed"}
    table = pq.read_table(committed.path)
    assert table.schema.equals(SCHEMA)
    assert table.column("error").to_pylist() == ["broken"]


def test_abort_leaves_nothing(tmp_path):
    writer = ShardFileWriter(tmp_path, "shard-00000", cache_metadata({}))
    writer.add(error_row(_identity(), "broken"))
    writer.abort()
    assert list(tmp_path.glob("*.parquet")) == []
    assert list((tmp_path / TMP_DIR_NAME).iterdir()) == []


def test_row_groups_flush_by_size(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.cache.shard_writer.ROW_GROUP_MAX_ROWS", 2)
    writer = ShardFileWriter(tmp_path, "s", cache_metadata({}))
    for _ in range(5):
        writer.add(error_row(_identity(), "x"))
    committed = writer.commit({})
    assert pq.ParquetFile(committed.path).num_row_groups == 3
