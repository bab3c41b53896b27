"""LatentDataset against one file per clip (torch.save, safetensors) and raw reads, on the same latents.

    python -m benchmarks.reader_throughput [--clips 4096] [--shape 16,9,32,32] [--batch 16] [--repeats 3]

One run writes the same float16 latents three ways: a Parquet cache through the encode job's own
`ShardFileWriter` (real schema, row groups, metadata of the hunyuan-vae preset), one `torch.save`
file per clip (Open-Sora, finetrainers, LTX-Video-Trainer) and one safetensors file per clip
(musubi-tuner). Each pass reads every clip through a DataLoader (batches of `--batch`, 0 or 2
workers) after the files' pages are evicted from the OS page cache (`posix_fadvise DONTNEED` after
a sync: dropping the whole cache needs root), so every method starts cold; each figure is the median
of `--repeats` passes, the methods taking turns, timed from the first batch on (worker start-up excluded). "raw" reads the
Parquet files' bytes sequentially into one buffer, no decoding: the disk's ceiling. Bytes read are
the process's `read_bytes` (/proc/self/io: fetched from the disk), cold, in-process.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from pipeline.cache.schema import SCHEMA, cache_metadata, tensor_to_bytes
from pipeline.cache.shard_writer import ShardFileWriter
from pipeline.encode.model_loading import describe_vae
from pipeline.encode.settings import EncodeSettings
from pipeline.reader import LatentDataset, collate_latents

SHARDS = 8
LOW_QUALITY_SHARDS = (6, 7)  # a worse source: its clips score lower


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4096)
    parser.add_argument("--shape", default="16,9,32,32", help="C,T,H,W of each latent (hunyuan-vae, 33x256x256)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write the data (default: a temporary directory)")
    args = parser.parse_args()
    shape = tuple(int(part) for part in args.shape.split(","))
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="reader-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        files = write_all(root, args.clips, shape)
        clip_bytes = int(np.prod(shape)) * 2
        sizes = {name: sum(path.stat().st_size for path in paths) for name, paths in files.items()}
        print(f"reader throughput: {args.clips} clips of {'x'.join(map(str, shape))} float16 "
              f"({clip_bytes / 1024:.0f} KiB each, {args.clips * clip_bytes / 2**20:.0f} MiB of latents); files: "
              + ", ".join(f"{name} {len(paths)} ({sizes[name] / 2**20:.0f} MiB)" for name, paths in files.items())
              + f"; written in {time.perf_counter() - started:.0f} s")
        print(f"every pass starts cold: the files' pages are evicted (posix_fadvise DONTNEED) before it; "
              f"DataLoader batch {args.batch}, {os.cpu_count()} CPUs")

        methods = {
            "LatentDataset (Parquet)": (lambda: LatentDataset(root / "parquet"), collate_latents, files["parquet"]),
            "torch.save per clip": (lambda: TorchFiles(files["pt"]), None, files["pt"]),
            "safetensors per clip": (lambda: SafetensorsFiles(files["safetensors"]), None, files["safetensors"]),
        }
        # Round-robin: each repeat runs every method once, so a drift in the disk's speed during the
        # run touches all methods alike; the median pass of each method is reported.
        passes: dict[tuple[str, int], list[tuple[float, int, int]]] = {}
        raw_passes = []
        for _ in range(args.repeats):
            for workers in (0, 2):
                for name, (make, collate, paths) in methods.items():
                    evict(paths)
                    kwargs = {"collate_fn": collate} if collate else {}
                    loader = DataLoader(make(), batch_size=args.batch, num_workers=workers, **kwargs)
                    seconds, samples, nbytes, total = timed_pass(loader)
                    assert total == args.clips, (name, total)
                    passes.setdefault((name, workers), []).append((seconds, samples, nbytes))
            evict(files["parquet"])
            raw_passes.append(raw_pass(files["parquet"]))
        results: dict[tuple[str, int], float] = {}
        print(f"{'method':<26}{'workers':>8}{'samples/s':>11}{'MB/s':>9}")
        for (name, workers), runs in passes.items():
            seconds, samples, nbytes = sorted(runs)[len(runs) // 2]
            results[(name, workers)] = nbytes / seconds
            print(f"{name:<26}{workers:>8}{samples / seconds:>11.0f}{nbytes / seconds / 1e6:>9.0f}")
        seconds, total = sorted(raw_passes)[len(raw_passes) // 2]
        raw = total / seconds
        print(f"{'raw read of the Parquet':<26}{'-':>8}{args.clips / seconds:>11.0f}{raw / 1e6:>9.0f}")
        seconds, total = raw_pass(files["parquet"])
        print(f"{'  (same, warm cache)':<26}{'-':>8}{args.clips / seconds:>11.0f}{total / seconds / 1e6:>9.0f}")

        ours = "LatentDataset (Parquet)"
        for workers in (0, 2):
            print(f"ratios, {workers} workers: LatentDataset is "
                  f"{results[(ours, workers)] / results[('torch.save per clip', workers)]:.1f}x torch.save per clip, "
                  f"{results[(ours, workers)] / results[('safetensors per clip', workers)]:.1f}x safetensors per clip, "
                  f"{100 * results[(ours, workers)] / raw:.0f}% of raw (goals: >=3x, >=80%)")

        def bytes_of_a_pass(where: str | None) -> tuple[int, int, LatentDataset]:
            evict(files["parquet"])
            before = disk_bytes_read()
            dataset = LatentDataset(root / "parquet", where=where)
            selected = sum(1 for _ in dataset)
            return disk_bytes_read() - before, selected, dataset

        full, full_samples, everything = bytes_of_a_pass(None)
        for where in ("psnr >= 27", "lpips < 0.1"):
            read, selected, dataset = bytes_of_a_pass(where)
            print(f"where {where!r}: {selected}/{full_samples} clips, read {read / 2**20:.0f} MiB from disk against "
                  f"{full / 2**20:.0f} MiB for a full scan ({100 * read / full:.0f}%); {len(dataset.row_groups)} of "
                  f"{len(everything.row_groups)} row groups opened")

if __name__ == "__main__":
    main()
