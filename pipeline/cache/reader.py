"""Reading latents back from a cache: `load_latent` for one clip, `LatentDataset` to stream many.

`LatentDataset` is a torch `IterableDataset` over one or more caches. Its unit of work is one row
group of one file: the units are split over ranks, then over DataLoader workers, in contiguous runs
(so a worker opens few files), and every unit goes to exactly one (rank, worker). A row group is read
in two passes: first its small metadata columns, on which the filter is evaluated; then the `latent`
(or `moments`) column, only when some row was selected. Row groups whose statistics rule the filter
out are dropped when the dataset is built, and are never opened. The latent bytes of a rejected clip
are read only when its row group also holds a selected clip.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import warnings
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from pipeline.cache.latent_files import (
    CacheFile,
    arrow_filesystem,
    check_compatible,
    list_cache_files,
    load_latent,
    open_cache_file,
)
from pipeline.cache.null_columns import all_null_columns
from pipeline.cache.schema import (
    BINARY_COLUMNS,
    BUCKET_COLUMNS,
    LATENT_DTYPES,
    SCHEMA,
    bucket_name,
    tensor_from_bytes,
)
from pipeline.cache.where import parse_where, refuse_null_columns, where_columns
from vae.distributions import DiagonalGaussianDistribution
from vae.latent_normalisation import LatentNormalisation

__all__ = ["LatentDataset", "collate_latents", "load_latent"]


_ALWAYS_READ = ("key", "caption", "status", "latent_shape")
_BUCKET = "__bucket"
_ROW = "__row"


def _stable_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little") >> 1


class _BinaryColumn:
    """Rows of a large_binary column as byte tensors viewing the Arrow buffers (no copy)."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self.starts: list[int] = []
        self.chunks: list[tuple[np.ndarray, torch.Tensor | None]] = []
        start = 0
        for chunk in column.chunks:
            _, offsets_buffer, values_buffer = chunk.buffers()
            offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=len(chunk) + 1, offset=chunk.offset * 8)
            values = None
            if values_buffer is not None and values_buffer.size > 0:
                with warnings.catch_warnings():
                    # Arrow marks its buffers read-only; nothing else holds this decoded copy.
                    warnings.filterwarnings("ignore", message="The given buffer is not writable")
                    values = torch.frombuffer(values_buffer, dtype=torch.uint8)
            self.starts.append(start)
            self.chunks.append((offsets, values))
            start += len(chunk)

    def bytes_of(self, row: int) -> torch.Tensor:
        index = bisect_right(self.starts, row) - 1
        offsets, values = self.chunks[index]
        local = row - self.starts[index]
        begin, end = int(offsets[local]), int(offsets[local + 1])
        if values is None:
            return torch.empty(0, dtype=torch.uint8)
        return values[begin:end]


def _as_tensor(raw: torch.Tensor, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    if sys.byteorder != "little":
        return tensor_from_bytes(raw.numpy().tobytes(), shape, {v: k for k, v in LATENT_DTYPES.items()}[dtype])
    return raw.view(dtype).view(tuple(shape))


class LatentDataset(IterableDataset):
    """Streams `{"key", "caption", "latent", *columns}` dicts from one or more latent caches.

    `caches`: cache directories (or single cache files), local paths or fsspec URLs. Error rows are
    never yielded; `where` selects further, either a string (see `parse_where`) or a pyarrow
    expression; it is pushed down, so the latent bytes of row groups with no selected row are never
    read. A string `where` that uses the value of a column null in every file (`lpips` of a cache
    encoded without LPIPS weights) is refused, ValueError with the reason; `is [not] null` is allowed.
    `columns` adds metadata columns to each sample.

    `rank`/`world_size` default to `torch.distributed`'s when it is initialised when the dataset is
    built, else 0/1. Each rank, and each DataLoader worker within it, reads a disjoint share of the
    row groups; counts need not divide, so shares can differ by one row group. `len()` is the number
    of samples this rank yields (see `__len__`).

    `shuffle` shuffles file order and the row-group order within each file, then passes samples
    through a buffer of `shuffle_buffer` samples; the order depends on `seed`, `set_epoch(n)` and the
    (rank, workers) split. Call `set_epoch` before each epoch's DataLoader iteration (with
    `persistent_workers=True` the workers keep the epoch they were started with).

    Latents come back as C×T×H×W tensors viewing the decoded Arrow buffer of their row group (no copy
    when the stored dtype is the one returned); a sample held alive keeps its row group's buffer alive.
    `dtype` casts every latent; by default the stored dtype, or, when the caches store different
    dtypes (mixing them is allowed: the dtype is a storage precision, not part of the VAE's identity),
    their promotion (float16 with bfloat16 gives float32).

    `prefetch` row groups are read ahead on threads (0: none), so reading overlaps decoding and
    training; each holds its decoded latents, up to a row group's ~32 MiB, in memory.

    `sample_posterior` draws each latent from the stored posterior moments instead (caches written
    with `--store-moments`), `scale * (sample - shift)` with the cache's normalisation (numbers, or per
    channel for Wan, LTX and Mochi; `self.normalisation`), from a generator
    seeded by (`seed`, epoch, key): the same draw for a sample whatever the split.

    Caches made with different VAEs (kind, config, weights checksum), scaling factors or contract
    versions are refused, naming the difference.

    `batch_size` makes it yield ready batches (`collate_latents` dicts plus `bucket`, "HxWxF") instead of
    samples, for `DataLoader(dataset, batch_size=None)`: each batch holds clips of one bucket (one latent
    shape), filled from per-bucket buffers as samples arrive in the (shuffled) order above, so every
    clip of this (rank, worker) is in exactly one batch. `bucket_batch_sizes` ({"368x688x33": 2, ...})
    overrides the size per bucket, like Open-Sora's bucket_config, so large buckets use smaller batches.
    What is left in each bucket at the end of the epoch is yielded as a short batch, or dropped with
    `drop_last`.
    """

    def __init__(
        self,
        caches: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        where: str | pc.Expression | None = None,
        columns: Sequence[str] = (),
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 256,
        rank: int | None = None,
        world_size: int | None = None,
        sample_posterior: bool = False,
        dtype: torch.dtype | None = None,
        prefetch: int = 2,
        batch_size: int | None = None,
        bucket_batch_sizes: dict[str, int] | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        urls = [caches] if isinstance(caches, (str, os.PathLike)) else list(caches)
        if not urls:
            raise ValueError("LatentDataset needs at least one cache")
        unknown = [name for name in columns if name not in SCHEMA.names]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; columns: {', '.join(SCHEMA.names)}")
        binary = [name for name in columns if name in BINARY_COLUMNS]
        if binary:
            raise ValueError(f"columns {binary} are binary; the latent is always yielded as `latent`")
        if shuffle_buffer < 1:
            raise ValueError("shuffle_buffer must be at least 1")
        if prefetch < 0:
            raise ValueError("prefetch cannot be negative")
        if bucket_batch_sizes and batch_size is None:
            raise ValueError("bucket_batch_sizes needs batch_size, the size of every other bucket's batches")
        sizes = [batch_size, *(bucket_batch_sizes or {}).values()] if batch_size is not None else []
        if any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in sizes):
            raise ValueError(f"batch sizes must be positive integers, got {sizes}")
        self.batch_size, self.bucket_batch_sizes = batch_size, dict(bucket_batch_sizes or {})
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.columns = tuple(columns)
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.sample_posterior = sample_posterior
        self.epoch = 0
        self.rank, self.world_size = self._distributed(rank, world_size)

        selection = pc.field("status") == "ok"
        if isinstance(where, str):
            user_filter, filter_columns = parse_where(where, SCHEMA), set(where_columns(where))
        elif isinstance(where, pc.Expression):
            # The columns an expression reads are not public: read every metadata column.
            user_filter, filter_columns = where, {n for n in SCHEMA.names if n not in BINARY_COLUMNS}
        elif where is None:
            user_filter, filter_columns = None, set()
        else:
            raise TypeError(f"where must be a string or a pyarrow.compute.Expression, not {type(where).__name__}")
        self.where = where
        self._filter = selection if user_filter is None else selection & user_filter
        locations = [location for url in urls for location in list_cache_files(url)]
        with ThreadPoolExecutor(max_workers=min(16, len(locations))) as pool:
            opened = list(pool.map(lambda location: open_cache_file(location, self._filter), locations))
        self._files = [file for file, _ in opened]
        check_compatible(self._files)
        if isinstance(where, str):
            refuse_null_columns(where, all_null_columns(footer for _, footer in opened))
        bucket_columns = set(BUCKET_COLUMNS) if batch_size is not None else set()
        self._read_columns = sorted(set(_ALWAYS_READ) | set(self.columns) | filter_columns | bucket_columns)
        self._binary_column = "moments" if sample_posterior else "latent"
        if sample_posterior:
            missing = [file.location.url for file in self._files if not file.metadata.get("store_moments")]
            if missing:
                raise ValueError(f"sample_posterior needs caches written with --store-moments; these files hold no "
                                 f"moments: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        stored = {file.metadata["latent_dtype"] for file in self._files}
        if dtype is None:
            dtype = LATENT_DTYPES[stored.pop()] if len(stored) == 1 else self._promoted(stored)
        self.dtype = dtype
        # How the stored latents were normalised (numbers, or per channel): `normalisation.undo(latent)` gives
        # the VAE's raw latent, e.g. to decode it with the VAE's own library.
        self.normalisation = LatentNormalisation.from_metadata(self._files[0].metadata["vae"])

    @staticmethod
    def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        if rank is None:
            rank = torch.distributed.get_rank() if initialised else 0
        if world_size is None:
            world_size = torch.distributed.get_world_size() if initialised else 1
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not within world_size {world_size}")
        return rank, world_size

    @staticmethod
    def _promoted(stored: set[str]) -> torch.dtype:
        dtypes = [LATENT_DTYPES[name] for name in sorted(stored)]
        result = dtypes[0]
        for other in dtypes[1:]:
            result = torch.promote_types(result, other)
        return result

    @property
    def metadata(self) -> dict[str, Any]:
        """The cache metadata of the first file (the VAE and scaling every file shares)."""
        return self._files[0].metadata

    @property
    def row_groups(self) -> list[tuple[str, int]]:
        """(file URL, row group) of every unit of work: those the filter's statistics leave in."""
        return [(file.location.url, group) for file in self._files for group in file.row_groups]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _units(self) -> list[tuple[int, int]]:
        files = list(range(len(self._files)))
        rng = random.Random(_stable_seed(self.seed, self.epoch))
        if self.shuffle:
            rng.shuffle(files)
        units = []
        for index in files:
            groups = list(self._files[index].row_groups)
            if self.shuffle:
                rng.shuffle(groups)
            units.extend((index, group) for group in groups)
        return units

    def _share(self) -> tuple[list[tuple[int, int]], int]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return _run_of(self._units(), self.rank * num_workers + worker, self.world_size * num_workers), worker

    def __len__(self) -> int:
        """The samples this rank yields this epoch, all its DataLoader workers together, from the
        footers' statistics alone. With `where` it is unknown until the rows are read: TypeError.

        Workers share the rank's row groups, so each yields its own part of this count; with
        `shuffle` the rank's row groups, and so the count, change with `set_epoch`.
        """
        if self.where is not None:
            raise TypeError("len() of a LatentDataset with `where` is unknown until its rows are read; "
                            "count by iterating, or filter the cache with jobs.filter and read it without `where`")
        if self.batch_size is not None:
            raise TypeError("len() of a batching LatentDataset is unknown: how many batches each bucket fills "
                            "depends on the split; count the samples with a dataset built without batch_size")
        total = 0
        for file_index, group in _run_of(self._units(), self.rank, self.world_size):
            file = self._files[file_index]
            rows = file.ok_rows[group]
            if rows is None:
                raise TypeError(f"len() of a LatentDataset needs the null count of the latent column in the "
                                f"row-group statistics; {file.location.url} was written without it")
            total += rows
        return total

    def __iter__(self) -> Iterator[dict[str, Any]]:
        units, worker = self._share()
        samples = self._read(units)
        if self.shuffle:
            samples = _shuffle_buffer(samples, self.shuffle_buffer,
                                      random.Random(_stable_seed(self.seed, self.epoch, self.rank, worker)))
        if self.batch_size is not None:
            return self._bucket_batches(samples)
        return samples

    def _bucket_batches(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        buffers: dict[str, list[dict[str, Any]]] = {}
        for sample in samples:
            bucket = sample.pop(_BUCKET)
            buffer = buffers.setdefault(bucket, [])
            buffer.append(sample)
            if len(buffer) == self.bucket_batch_sizes.get(bucket, self.batch_size):
                yield {**collate_latents(buffer), "bucket": bucket}
                buffers[bucket] = []
        if not self.drop_last:
            for bucket, buffer in sorted(buffers.items()):
                if buffer:
                    yield {**collate_latents(buffer), "bucket": bucket}

    def _read(self, units: Iterable[tuple[int, int]]) -> Iterator[dict[str, Any]]:
        """Samples of `units` in order; `prefetch` row groups are read ahead on threads, so the disk
        or network works while the consumer decodes and trains."""
        if self.prefetch == 0:
            for file_index, group in units:
                yield from self._samples(*self._load(file_index, group))
            return
        metadata: dict[int, pq.FileMetaData] = {}
        lock = threading.Lock()
        pool = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="latent-prefetch")
        try:
            pending: deque[Future] = deque()
            remaining = iter(units)
            for file_index, group in islice(remaining, self.prefetch):
                pending.append(pool.submit(self._load, file_index, group, metadata, lock))
            while pending:
                loaded = pending.popleft().result()
                for file_index, group in islice(remaining, 1):
                    pending.append(pool.submit(self._load, file_index, group, metadata, lock))
                yield from self._samples(*loaded)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _load(self, file_index: int, group: int, metadata: dict[int, pq.FileMetaData] | None = None,
              lock: threading.Lock | None = None) -> tuple[CacheFile, pa.Table | None, _BinaryColumn | None]:
        """Reads a row group's metadata columns, filters, then its latents only if a row is selected."""
        file = self._files[file_index]
        filesystem = arrow_filesystem(file.location)
        footer = None
        if metadata is not None and lock is not None:
            with lock:
                if file_index not in metadata:
                    metadata[file_index] = pq.read_metadata(file.location.path, filesystem=filesystem)
                footer = metadata[file_index]
        if file.location.is_local:
            # Mapped, a local file's pages are decoded in place: one copy fewer than read().
            parquet = pq.ParquetFile(file.location.path, metadata=footer, memory_map=True)
        else:
            parquet = pq.ParquetFile(file.location.path, filesystem=filesystem, metadata=footer)
        try:
            # A column newer than the file's contract version (`bucket` in a 1.1 file) is not read from it.
            present = set(parquet.schema_arrow.names)
            table = parquet.read_row_group(group, columns=[name for name in self._read_columns if name in present])
            table = table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
            selected = table.filter(self._filter)
            if selected.num_rows == 0:
                return file, None, None
            binary = _BinaryColumn(parquet.read_row_group(group, columns=[self._binary_column]).column(0))
        finally:
            parquet.close()
        return file, selected, binary

    def _samples(self, file: CacheFile, selected: pa.Table | None,
                 binary: _BinaryColumn | None) -> Iterator[dict[str, Any]]:
        if selected is None or binary is None:
            return
        stored = LATENT_DTYPES[file.metadata["latent_dtype"]]
        rows = selected.column(_ROW).to_numpy()
        keys = selected.column("key").to_pylist()
        captions = selected.column("caption").to_pylist()
        shapes = selected.column("latent_shape").to_pylist()
        extra = {name: selected.column(name).to_pylist() for name in self.columns}
        buckets = ([bucket_name(*size) for size in zip(*(selected.column(n).to_pylist() for n in BUCKET_COLUMNS))]
                   if self.batch_size is not None else None)
        for index, row in enumerate(rows):
            if self.sample_posterior:
                latent = self._posterior_sample(binary.bytes_of(int(row)), shapes[index], keys[index], file)
            else:
                latent = _as_tensor(binary.bytes_of(int(row)), stored, shapes[index])
            if latent.dtype != self.dtype:
                latent = latent.to(self.dtype)
            sample = {"key": keys[index], "caption": captions[index], "latent": latent}
            sample.update({name: values[index] for name, values in extra.items()})
            if buckets is not None:
                sample[_BUCKET] = buckets[index]
            yield sample

    def _posterior_sample(self, raw: torch.Tensor, shape: list[int], key: str, file: CacheFile) -> torch.Tensor:
        if raw.numel() == 0:
            raise ValueError(f"{file.location.url}: row {key!r} has no stored moments")
        channels, *rest = shape
        moments = _as_tensor(raw, torch.float32, [2 * channels, *rest])
        generator = torch.Generator().manual_seed(_stable_seed(self.seed, self.epoch, key))
        sample = DiagonalGaussianDistribution(moments.unsqueeze(0)).sample(generator)[0]
        return self.normalisation.apply(sample)


def _run_of(units: list[tuple[int, int]], slot: int, slots: int) -> list[tuple[int, int]]:
    """The contiguous run of `units` that slot `slot` of `slots` reads: its row groups come from few
    files, each opened once. Slots r*k .. r*k+k-1 of n*k together read run r of n, so a rank reads
    the same share whatever its number of DataLoader workers."""
    return units[slot * len(units) // slots:(slot + 1) * len(units) // slots]


def _shuffle_buffer(samples: Iterator[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = rng.randrange(size)
        yield buffer[index]
        buffer[index] = sample
    rng.shuffle(buffer)
    yield from buffer


def collate_latents(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A DataLoader `collate_fn`: `latent` stacked to (B, C, T, H, W), every other field a list.

    Latents of different shapes (or dtypes) cannot share a batch: the error names each shape with a
    key that has it. Batch per shape with `where` (e.g. `"height = 256 and num_frames = 16"`), or use
    `batch_size=1`.
    """
    if not samples:
        raise ValueError("collate_latents: empty batch")
    groups: dict[tuple[tuple[int, ...], torch.dtype], list[str]] = {}
    for sample in samples:
        latent = sample["latent"]
        groups.setdefault((tuple(latent.shape), latent.dtype), []).append(sample.get("key", "?"))
    if len(groups) > 1:
        described = "; ".join(
            f"{list(shape)} {str(dtype).removeprefix('torch.')} ({len(keys)} sample{'s' * (len(keys) > 1)}, "
            f"e.g. {keys[0]})" for (shape, dtype), keys in groups.items())
        raise ValueError(f"cannot batch latents of different shapes: {described}. Select one shape per dataset "
                         "with where= (e.g. \"height = 256 and num_frames = 16\") or use batch_size=1.")
    batch: dict[str, Any] = {name: [sample[name] for sample in samples] for name in samples[0] if name != "latent"}
    # default_collate stacks straight into shared memory inside a DataLoader worker: one copy fewer.
    batch["latent"] = default_collate([sample["latent"] for sample in samples])
    return batch
