"""LatentDataset against one file per clip (torch.save, safetensors) and raw reads, on the same latents.

    python -m benchmarks.reader_throughput [--clips 4096] [--shape 16,9,32,32] [--batch 16] [--repeats 3]

One run writes the same float16 latents three ways: a Parquet cache through the encode job's own
`ShardFileWriter` (real schema, row groups, metadata of the hunyuan-vae preset), one `torch.save`
file per clip (Open-Sora, finetrainers, LTX-Video-Trainer) and one safetensors file per clip
(musubi-tuner). Each pass reads every clip through a DataLoader (batches of `--batch`, 0 or 2
workers) after the files' pages are evicted from the OS page cache (`posix_fadvise DONTNEED` after
a sync: dropping the whole cache needs root), so every method starts cold; each figure is the median
of `--repeats` passes, the methods taking turns, timed from the first batch on (worker start-up
excluded). "raw" reads the Parquet files' bytes sequentially into one buffer, no decoding: the disk's
ceiling. Ratios are of clips/s (goals: 3x each per-clip format, 80% of raw). Bytes read are the
process's `read_bytes` (/proc/self/io: fetched from the disk), cold, in-process.

`table_rows(quick)` gives the ratios as rows of `python -m benchmarks`, from the same `measure` as this
command: the defaults, or with `quick` 256 clips (`--clips 256`, about 20 s here).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from benchmarks._common import table_row
from pipeline.cache.schema import SCHEMA, cache_metadata, tensor_to_bytes
from pipeline.cache.shard_writer import ShardFileWriter
from pipeline.encode.model_loading import describe_vae
from pipeline.encode.settings import EncodeSettings
from pipeline.reader import LatentDataset, collate_latents

SHARDS = 8
LOW_QUALITY_SHARDS = (6, 7)  # a worse source: its clips score lower
OURS = "LatentDataset (Parquet)"
WORKERS = (0, 2)  # DataLoader workers
WHERES = ("psnr >= 27", "lpips < 0.1")
SHAPE = (16, 9, 32, 32)  # hunyuan-vae's latent of 33 frames at 256x256
CLIPS, QUICK_CLIPS = 4096, 256
Method = tuple[Callable[[], Dataset], Callable | None, list[Path]]


def clip_scores(shard: int, rng: np.random.Generator) -> float:
    return float(rng.uniform(18, 26) if shard in LOW_QUALITY_SHARDS else rng.uniform(24, 40))


def write_all(root: Path, clips: int, shape: tuple[int, ...]) -> dict[str, list[Path]]:
    vae = describe_vae(EncodeSettings(vae="hunyuan-vae", allow_random_weights=True))
    metadata = cache_metadata({"job_hash": "benchmark", "vae": vae, "latent_dtype": "float16", "store_moments": False})
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    (root / "pt").mkdir()
    (root / "safetensors").mkdir()
    per_shard = clips // SHARDS
    for shard in range(SHARDS):
        writer = ShardFileWriter(str(root / "parquet"), f"shard-{shard:05d}", metadata)
        for index in range(per_shard):
            latent = torch.randn(shape, generator=generator).half()
            key, caption = f"shard-{shard:05d}/v{index}/0", f"a caption for clip {index} of shard {shard}"
            psnr = clip_scores(shard, rng)
            row = dict.fromkeys(SCHEMA.names)
            row.update(key=key, sample_key=f"v{index}", source_shard=f"bench/shard-{shard:05d}.tar", clip_index=0,
                       frame_start=0, num_frames=33, frame_stride=1, fps=24.0, src_height=256, src_width=256,
                       height=256, width=256, caption=caption, status="ok", latent=tensor_to_bytes(latent, "float16"),
                       latent_shape=list(shape), latent_dtype="float16", latent_mean=0.0, latent_std=1.0, psnr=psnr,
                       ssim=0.9, lpips=float(rng.uniform(0, 0.4)), disc_score=0.0, passed=psnr >= 25)
            writer.add(row)
            name = key.replace("/", "__")
            torch.save({"latent": latent, "caption": caption}, root / "pt" / f"{name}.pt")
            save_file({"latent": latent}, str(root / "safetensors" / f"{name}.safetensors"), {"caption": caption})
        writer.commit({})
    os.sync()
    return {"parquet": sorted((root / "parquet").glob("*.parquet")), "pt": sorted((root / "pt").iterdir()),
            "safetensors": sorted((root / "safetensors").iterdir())}


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_bytes_read() -> int:
    """Bytes this process fetched from storage (page-cache misses, mapped pages included)."""
    with open("/proc/self/io") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("read_bytes:"))


class TorchFiles(Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return torch.load(self.paths[index], weights_only=True)


class SafetensorsFiles(TorchFiles):
    def __getitem__(self, index: int) -> dict:
        return load_file(str(self.paths[index]))


def timed_pass(loader) -> tuple[float, int, int, int]:
    """Steady state: the clock starts when the first batch is in (worker start-up excluded); returns
    (seconds, samples and bytes after the first batch, samples in all)."""
    batches = iter(loader)
    first = next(batches)["latent"].shape[0]
    started = time.perf_counter()
    samples = nbytes = 0
    for batch in batches:
        latent = batch["latent"]
        samples += latent.shape[0]
        nbytes += latent.numel() * latent.element_size()
    return time.perf_counter() - started, samples, nbytes, first + samples


def raw_pass(paths: list[Path], threads: int = 2) -> tuple[float, int]:
    """Read every byte of `paths` into scratch buffers, `threads` files at a time: the reader's own
    read-ahead concurrency (prefetch 2), so both ask the disk the same way."""

    def read(path: Path) -> int:
        view = memoryview(bytearray(8 << 20))
        total = 0
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(view):
                total += count
        return total

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        total = sum(pool.map(read, paths))
    return time.perf_counter() - started, total


def loader_methods(root: Path, files: dict[str, list[Path]]) -> dict[str, Method]:
    """Per method: a dataset factory, its collate function (None: DataLoader's default), the files it reads."""
    return {
        OURS: (lambda: LatentDataset(root / "parquet"), collate_latents, files["parquet"]),
        "torch.save per clip": (lambda: TorchFiles(files["pt"]), None, files["pt"]),
        "safetensors per clip": (lambda: SafetensorsFiles(files["safetensors"]), None, files["safetensors"]),
    }


def cold_passes(root: Path, files: dict[str, list[Path]], clips: int, batch: int,
                repeats: int) -> tuple[dict[int, dict[str, tuple[float, float]]], tuple[float, float]]:
    """Median cold pass of each method per DataLoader worker count, {workers: {method: (clips/s, bytes/s)}}, and
    of the raw read, (clips/s, bytes/s)."""
    passes: dict[tuple[int, str], list[tuple[float, int, int]]] = {}
    raw_passes = []
    # Round-robin: each repeat runs every method once, so a drift in the disk's speed during the run touches
    # all methods alike.
    for _ in range(repeats):
        for workers in WORKERS:
            for name, (make, collate, paths) in loader_methods(root, files).items():
                evict(paths)
                kwargs = {"collate_fn": collate} if collate else {}
                seconds, samples, nbytes, total = timed_pass(DataLoader(make(), batch_size=batch,
                                                                        num_workers=workers, **kwargs))
                assert total == clips, (name, total)
                passes.setdefault((workers, name), []).append((seconds, samples, nbytes))
        evict(files["parquet"])
        raw_passes.append(raw_pass(files["parquet"]))
    rates: dict[int, dict[str, tuple[float, float]]] = {}
    for (workers, name), runs in passes.items():
        seconds, samples, nbytes = sorted(runs)[len(runs) // 2]
        rates.setdefault(workers, {})[name] = (samples / seconds, nbytes / seconds)
    seconds, total = sorted(raw_passes)[len(raw_passes) // 2]
    return rates, (clips / seconds, total / seconds)


def filtered_reads(root: Path, files: dict[str, list[Path]]) -> dict[str | None, tuple[int, int, int]]:
    """Per `where` (None: a full scan), cold: (bytes read from disk, clips selected, row groups opened)."""
    reads = {}
    for where in (None, *WHERES):
        evict(files["parquet"])
        before = disk_bytes_read()
        dataset = LatentDataset(root / "parquet", where=where)
        selected = sum(1 for _ in dataset)
        reads[where] = (disk_bytes_read() - before, selected, len(dataset.row_groups))
    return reads


def measure(clips: int, shape: tuple[int, ...] = SHAPE, batch: int = 16, repeats: int = 3,
            directory: str | None = None) -> dict:
    """Every figure of the module: "files" {method: (count, bytes)}, "write_seconds", "rates" {workers: {method:
    (clips/s, bytes/s)}}, "raw" and "raw_warm" (clips/s, bytes/s), "filtered" (see `filtered_reads`)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=directory, prefix="reader-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        files = write_all(root, clips, shape)
        result: dict = {"write_seconds": time.perf_counter() - started,
                        "files": {name: (len(paths), sum(path.stat().st_size for path in paths))
                                  for name, paths in files.items()}}
        result["rates"], result["raw"] = cold_passes(root, files, clips, batch, repeats)
        seconds, total = raw_pass(files["parquet"])
        result["raw_warm"] = (clips / seconds, total / seconds)
        result["filtered"] = filtered_reads(root, files)
    return result


def print_report(result: dict, clips: int, shape: tuple[int, ...], batch: int) -> None:
    clip_bytes = int(np.prod(shape)) * 2
    print(f"reader throughput: {clips} clips of {'x'.join(map(str, shape))} float16 "
          f"({clip_bytes / 1024:.0f} KiB each, {clips * clip_bytes / 2**20:.0f} MiB of latents); files: "
          + ", ".join(f"{name} {count} ({size / 2**20:.0f} MiB)" for name, (count, size) in result["files"].items())
          + f"; written in {result['write_seconds']:.0f} s")
    print(f"every pass starts cold: the files' pages are evicted (posix_fadvise DONTNEED) before it; "
          f"DataLoader batch {batch}, {os.cpu_count()} CPUs")
    print(f"{'method':<26}{'workers':>8}{'samples/s':>11}{'MB/s':>9}")
    for workers, rates in result["rates"].items():
        for name, (per_second, nbytes) in rates.items():
            print(f"{name:<26}{workers:>8}{per_second:>11.0f}{nbytes / 1e6:>9.0f}")
    for label, (per_second, nbytes) in (("raw read of the Parquet", result["raw"]),
                                        ("  (same, warm cache)", result["raw_warm"])):
        print(f"{label:<26}{'-':>8}{per_second:>11.0f}{nbytes / 1e6:>9.0f}")
    for workers, rates in result["rates"].items():
        ours = rates[OURS][0]
        print(f"ratios, {workers} workers: LatentDataset is {ours / rates['torch.save per clip'][0]:.1f}x "
              f"torch.save per clip, {ours / rates['safetensors per clip'][0]:.1f}x safetensors per clip, "
              f"{100 * ours / result['raw'][0]:.0f}% of raw (goals: >=3x, >=80%)")
    full, full_clips, full_groups = result["filtered"][None]
    for where in WHERES:
        read, selected, groups = result["filtered"][where]
        print(f"where {where!r}: {selected}/{full_clips} clips, read {read / 2**20:.0f} MiB from disk against "
              f"{full / 2**20:.0f} MiB for a full scan ({100 * read / full:.0f}%); {groups} of {full_groups} row "
              f"groups opened")


def table_rows(quick: bool) -> list[dict[str, object]]:
    """Rows for `python -m benchmarks`: LatentDataset's clips/s against one torch.save and one safetensors file
    per clip (goal 3x) and against the raw read (goal 80%), with 0 and 2 DataLoader workers; `quick`: fewer clips."""
    clips = QUICK_CLIPS if quick else CLIPS
    result = measure(clips)
    rows = []
    for workers, rates in result["rates"].items():
        ours = rates[OURS][0]
        figure = (f"read {clips} clips of {'×'.join(map(str, SHAPE))} fp16 with LatentDataset, cold, "
                  f"{workers} DataLoader workers, clips/s")
        for name in ("torch.save per clip", "safetensors per clip"):
            rows.append(table_row(figure, ours, f"{name} {rates[name][0]:.0f}", ours / rates[name][0], "≥ 3"))
        rows.append(table_row(figure, ours, f"raw sequential read of the Parquet bytes {result['raw'][0]:.0f}",
                              ours / result["raw"][0], "≥ 0.8"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=CLIPS, help=f"a multiple of 8, the shards (default {CLIPS})")
    parser.add_argument("--shape", default=",".join(map(str, SHAPE)),
                        help="C,T,H,W of each latent (hunyuan-vae, 33x256x256)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary directory)")
    args = parser.parse_args()
    shape = tuple(int(part) for part in args.shape.split(","))
    print_report(measure(args.clips, shape, args.batch, args.repeats, args.dir), args.clips, shape, args.batch)


if __name__ == "__main__":
    main()
