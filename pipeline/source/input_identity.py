"""Which input a committed shard was encoded from, so that a resume re-encodes a shard whose tar changed.

A shard's identity is its size and a version stamp (the modification time of a local file; the
ETag and version of an object) plus a fingerprint of its member list, which the reader computes
while it streams the tar anyway. On resume, an equal size and stamp mean unchanged without reading
anything; a different size means changed; a different stamp alone (a `touch`, a copy, an object
re-uploaded in parts) is settled by scanning the tar's member headers and comparing fingerprints.
`pipe:` inputs cannot be looked at without running their command: they are never checked.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.source.shard_reader import member_list_fingerprint
from pipeline.source.shard_urls import PIPE_PREFIX
from pipeline.storage import locate

# Object metadata that changes when an object's content does, by the names fsspec backends use
# (s3: ETag, VersionId; gcs: etag, generation; hf: blob_id), each stored under our name.
_OBJECT_STAMPS = {"etag": ("ETag", "etag", "blob_id"), "version_id": ("VersionId", "generation")}
_STAMP_FIELDS = ("mtime_ns", *_OBJECT_STAMPS)


def _is_checkable(url: str) -> bool:
    return not url.startswith(PIPE_PREFIX)


def input_stat(url: str) -> dict[str, Any]:
    """Size and version stamp of a shard, without reading it; {} for `pipe:` URLs."""
    if not _is_checkable(url):
        return {}
    location = locate(url)
    if location.is_local:
        stat = os.stat(location.path)
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    # A listing's cached entry may lack what a HEAD request returns (s3's VersionId): always ask.
    location.fs.invalidate_cache(location.path)
    info = location.fs.info(location.path)
    stamps = {ours: next((info[key] for key in keys if info.get(key)), None) for ours, keys in _OBJECT_STAMPS.items()}
    return {"size": info["size"], **{name: value for name, value in stamps.items() if value}}


def input_changed(url: str, recorded: dict[str, Any] | None) -> bool | None:
    """Whether the shard at `url` differs from the one `recorded` (a committed file's `input` entry)
    describes; None when that cannot be told (a `pipe:` URL, or a file committed without a record)."""
    if not _is_checkable(url) or not recorded or "size" not in recorded or "fingerprint" not in recorded:
        return None
    current = input_stat(url)
    if current["size"] != recorded["size"]:
        return True
    common = [name for name in _STAMP_FIELDS if name in current and name in recorded]
    if common and all(current[name] == recorded[name] for name in common):
        return False
    return member_list_fingerprint(url) != recorded["fingerprint"]
