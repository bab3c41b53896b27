"""`OUTPUT/_manifest.json`, rebuilt from the committed files, which are the source of truth."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from typing import Any

import pyarrow.parquet as pq

from pipeline.cache.schema import SHARD_METADATA_KEY, read_cache_metadata
from pipeline.errors import UsageError
from pipeline.storage import Location, locate

MANIFEST_NAME = "_manifest.json"


def committed_files(output_dir: str) -> list[Location]:
    return locate(output_dir).glob("*.parquet")


def cache_files(url: str, flag: str) -> list[Location]:
    """The committed files of an existing cache; a UsageError naming `flag` when there are none."""
    try:
        if not locate(url).exists():
            raise UsageError(f"{flag} {url!r} does not exist")
        locations = committed_files(url)
    except OSError as exc:
        raise UsageError(f"{flag} {url!r} cannot be listed: {exc}") from exc
    if not locations:
        raise UsageError(f"{flag} {url!r} holds no committed .parquet files: not a latent cache")
    return locations


def shard_name(committed: Location) -> str:
    return posixpath.basename(committed.path).removesuffix(".parquet")


def read_committed_shard(committed: Location) -> tuple[dict[str, Any], dict[str, Any]]:
    """(cache metadata, shard entry) from a committed file's footer; no row is read."""
    with committed.open("rb") as handle:
        metadata = pq.read_metadata(handle).metadata
    shard = json.loads(metadata[SHARD_METADATA_KEY]) if metadata and SHARD_METADATA_KEY in metadata else {}
    return read_cache_metadata(metadata), shard


def load_manifest(output_dir: str) -> dict[str, Any] | None:
    manifest = locate(output_dir).child(MANIFEST_NAME)
    if not manifest.exists():
        return None
    with manifest.open("rb") as handle:
        return json.load(handle)


def write_manifest(output_dir: str, manifest: dict[str, Any]) -> None:
    """Atomic: a local file is written aside and renamed; an object store's PUT replaces whole."""
    target = locate(output_dir).child(MANIFEST_NAME)
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    if not target.is_local:
        target.fs.pipe_file(target.path, data)
        return
    aside = f"{os.path.dirname(target.path)}/.{MANIFEST_NAME}.{os.getpid()}.tmp"
    with open(aside, "wb") as handle:
        handle.write(data)
    os.replace(aside, target.path)


def summarize(shards: dict[str, dict[str, Any]]) -> dict[str, int]:
    totals = {"shards": len(shards), "committed": 0, "partial": 0, "failed": 0, "clips": 0, "rejected": 0,
              "error_rows": 0}
    for entry in shards.values():
        totals[entry["status"]] += 1
        for count in ("clips", "rejected", "error_rows"):
            totals[count] += entry.get(count, 0)
    return totals


def identity_hash(identity: dict[str, Any]) -> str:
    """A stable hash of the cache's identity (a JSON-able dict)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
