"""What differs between the job that made a cache and the job now run on it, named setting by setting."""

from __future__ import annotations

import json
from typing import Any

# The settings that only decide `passed`: a cache differing in nothing else keeps its latents and scores.
THRESHOLD_SETTINGS = frozenset({"scoring.min_psnr", "scoring.min_ssim", "scoring.max_lpips", "scoring.min_disc"})
# The same, as a committed file's cache metadata names them (`thresholds.psnr`, ...).
THRESHOLD_METADATA = "thresholds"
# Cache metadata that may differ between files of one job (its hash, paths, provenance): never a
# reason to refuse, as the job's identity leaves it out too.
_NOT_IDENTITY = ("job_hash", "code_version", "vae.spec", "vae.weights", "rethresholded")

_UNSET = object()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted name; an empty dict has none (no thresholds is every threshold unset)."""
    if isinstance(value, dict):
        return {name: leaf for key, item in value.items() for name, leaf in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.removesuffix("."): value}


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted setting name → (old value, new value) for every leaf that differs; a side lacking the
    setting holds `_UNSET`. Both sides are compared as JSON sees them (tuples are lists)."""
    before, after = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    return {name: (before.get(name, _UNSET), after.get(name, _UNSET))
            for name in sorted(before.keys() | after.keys()) if before.get(name, _UNSET) != after.get(name, _UNSET)}


def metadata_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`differences` between two files' cache metadata, leaving out what is not the job's identity."""
    return {name: change for name, change in differences(old, new).items()
            if not any(name == item or name.startswith(f"{item}.") for item in _NOT_IDENTITY)}


def is_threshold(name: str) -> bool:
    return name in THRESHOLD_SETTINGS or name.split(".", 1)[0] == THRESHOLD_METADATA


def _show(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None or isinstance(value, (bool, int)):
        return str(value)
    return repr(value) if isinstance(value, str) else json.dumps(value)


def describe(found: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    """`name: old → new` items, `;`-separated, the first `limit` of them."""
    items = [f"{name}: {_show(old)} → {_show(new)}" for name, (old, new) in found.items()]
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more
