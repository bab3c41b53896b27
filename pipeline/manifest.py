"""`OUTPUT/_manifest.json`, rebuilt from the committed files, which are the source of truth."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.cache_schema import SHARD_METADATA_KEY, read_cache_metadata

MANIFEST_NAME = "_manifest.json"


def committed_files(output_dir: str | os.PathLike) -> list[Path]:
    return sorted(Path(output_dir).glob("*.parquet"))


def read_committed_shard(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cache metadata, shard entry) from a committed file's footer; no row is read."""
    metadata = pq.read_metadata(path).metadata
    shard = json.loads(metadata[SHARD_METADATA_KEY]) if metadata and SHARD_METADATA_KEY in metadata else {}
    return read_cache_metadata(metadata), shard


def load_manifest(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(output_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_manifest(output_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Atomic replace, so a reader (or a killed driver) never leaves half a manifest."""
    path = Path(output_dir) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def summarize(shards: dict[str, dict[str, Any]]) -> dict[str, int]:
    totals = {"shards": len(shards), "committed": 0, "partial": 0, "failed": 0, "clips": 0, "rejected": 0,
              "error_rows": 0}
    for entry in shards.values():
        totals[entry["status"]] += 1
        for count in ("clips", "rejected", "error_rows"):
            totals[count] += entry.get(count, 0)
    return totals
