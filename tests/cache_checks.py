"""What every test of the runner checks: the cache holds each input sample exactly as the contract says."""

import json
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds

from pipeline.cache.manifest import MANIFEST_NAME


def assert_every_sample_once(cache: Path, expected: dict[str, list[str]], clips_per_sample: int = 1) -> list[dict]:
    """One committed file per shard; each sample's clips appear once; no temporary file is visible."""
    assert sorted(path.stem for path in cache.glob("*.parquet")) == sorted(expected)
    leftovers = [path for path in (cache / "_tmp").rglob("*") if path.is_file()] if (cache / "_tmp").exists() else []
    assert leftovers == []
    rows = ds.dataset(cache, format="parquet").to_table(
        columns=["key", "sample_key", "source_shard", "clip_index", "status", "error"]).to_pylist()
    assert len({row["key"] for row in rows}) == len(rows), "a clip appears twice"
    counts = Counter((Path(row["source_shard"]).stem, row["sample_key"]) for row in rows)
    wanted = {(shard, key) for shard, keys in expected.items() for key in keys}
    assert set(counts) == wanted
    assert all(count == clips_per_sample for count in counts.values()), counts
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    assert set(manifest["shards"]) == set(expected)
    return rows
