"""Reading latents back from a cache (the streaming training reader comes later)."""

from __future__ import annotations

import os

import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from pipeline.cache_schema import tensor_from_bytes
from pipeline.storage import locate


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
