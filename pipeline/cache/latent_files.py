"""Opening a cache's files for reading: one clip's latent by key, each file's footer (metadata, the row
groups its statistics keep, their ok rows), and the check that files of several caches may be mixed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from pipeline.cache.null_columns import null_counts
from pipeline.cache.schema import (
    CONTRACT_VERSION,
    contract_version_parts,
    read_cache_metadata,
    readable_contract_version,
    tensor_from_bytes,
)
from pipeline.storage import Location, locate


def load_latent(cache_dir: str | os.PathLike, key: str) -> torch.Tensor:
    """The latent (C, T, H, W, in its stored dtype) of the row whose `key` is given.

    A key is `<file name>/<sample key>/<clip index>`, so the file is known without a scan.
    """
    file_name = key.split("/", 1)[0]
    file = locate(cache_dir).child(f"{file_name}.parquet")
    if not file.exists():
        raise KeyError(f"{key!r}: the cache {cache_dir} has no file {file_name}.parquet")
    table = ds.dataset(file.path, filesystem=file.fs, format="parquet").to_table(
        columns=["latent", "latent_shape", "latent_dtype", "status", "error"], filter=pc.field("key") == key
    )
    if table.num_rows == 0:
        raise KeyError(f"{key!r}: no such row in {file.url}")
    row = table.slice(0, 1).to_pylist()[0]
    if row["status"] != "ok":
        raise KeyError(f"{key!r} is an error row: {row['error']}")
    return tensor_from_bytes(row["latent"], row["latent_shape"], row["latent_dtype"])


# What must agree between caches for their latents to be interchangeable. `vae.spec` (a preset name
# or a JSON path) and `vae.weights` (a path) are spellings of the same identity and are not compared.
_IDENTITY_FIELDS = ("vae.kind", "vae.config", "vae.weights_sha256", "vae.random_init_seed",
                    "vae.scale_factor", "vae.shift_factor", "vae.spatial_factor", "vae.temporal_factor",
                    "vae.latent_channels")


def _identity(metadata: dict[str, Any]) -> dict[str, Any]:
    # Minor versions only add: a cache resumed by newer code holds 1 and 1.1 files of the same latents.
    flat: dict[str, Any] = {"contract major version": (contract_version_parts(metadata.get("contract_version"))
                                                       or (None,))[0]}
    for name in _IDENTITY_FIELDS:
        value: Any = metadata
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": item for key, item in value.items()})
        else:
            flat[name] = value
    return flat


def arrow_filesystem(location: Location) -> pafs.FileSystem:
    if location.is_local:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(location.fs))


@dataclass(frozen=True)
class CacheFile:
    location: Location
    metadata: dict[str, Any]
    row_groups: tuple[int, ...]  # those the filter may select, by their statistics
    ok_rows: dict[int, int | None]  # row group → its ok rows, from the statistics (None: not recorded)


def list_cache_files(url: str | os.PathLike) -> list[Location]:
    location = locate(url)
    if location.path.endswith(".parquet") and location.fs.isfile(location.path):
        return [location]
    files = location.glob("*.parquet")
    if not files:
        raise ValueError(f"{location.url}: no cache files (*.parquet) there")
    return files


def _ok_rows(footer: pq.FileMetaData, group: int) -> int | None:
    # An error row, and only an error row, has a null latent.
    nulls = null_counts(footer, group).get("latent")
    return None if nulls is None else footer.row_group(group).num_rows - nulls


def open_cache_file(location: Location, statistics_filter: pc.Expression) -> tuple[CacheFile, pq.FileMetaData]:
    """Reads the footer only: the cache metadata, the row groups the statistics do not rule out and
    their ok rows; and the footer itself."""
    fragment = ds.ParquetFileFormat().make_fragment(location.path, filesystem=arrow_filesystem(location))
    schema = fragment.physical_schema
    try:
        metadata = read_cache_metadata(schema.metadata)
    except ValueError as exc:
        raise ValueError(f"{location.url}: {exc}") from None
    footer = fragment.metadata
    kept = tuple(piece.row_groups[0].id for piece in fragment.split_by_row_group(statistics_filter, schema=schema))
    return CacheFile(location, metadata, kept, {group: _ok_rows(footer, group) for group in kept}), footer


def check_compatible(files: list[CacheFile]) -> None:
    for file in files:
        version = file.metadata.get("contract_version")
        if not readable_contract_version(version):
            raise ValueError(f"{file.location.url}: written under cache contract_version {version}; this reader "
                             f"reads contract versions 1 to {CONTRACT_VERSION}")
    first = files[0]
    reference = _identity(first.metadata)
    for file in files[1:]:
        identity = _identity(file.metadata)
        differences = [f"{name} is {reference.get(name)!r} there but {identity.get(name)!r} here"
                       for name in sorted(set(reference) | set(identity)) if reference.get(name) != identity.get(name)]
        if differences:
            shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
            raise ValueError(
                f"cannot mix caches made with different VAEs: {file.location.url} differs from "
                f"{first.location.url}: {shown}. Latents of different VAEs, scalings or contract versions are "
                "not interchangeable; read them with separate datasets."
            )
