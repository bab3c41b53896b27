"""LatentDataset on caches made by the real encode job: coverage under every split, shuffling,
pushdown measured in bytes read, refusal to mix VAEs, posterior sampling, bfloat16, collate."""

import json
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from torch.utils.data import DataLoader

from pipeline.cache.reader import LatentDataset, collate_latents, load_latent
from pipeline.cache.schema import (
    COLUMN_COMPRESSION,
    DICTIONARY_COLUMNS,
    METADATA_KEY,
    read_cache_metadata,
)
from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.run.runner import run_encode_job
from tests.media import encode_mp4, moving_pattern, write_tar

QUIET = RunSettings(num_actors=2, cpus_per_actor=1, batch_size=4, progress=False)
SCALE, SHIFT = 0.5, 0.1
CHANNEL_SHIFT, CHANNEL_SCALE = (0.1, -0.2, 0.3, 0.0), (0.5, 1.0, 2.0, 1.5)
# A random-weights VAE reconstructs every input as much the same grey: black and white clips score
# ~5.5 dB, textured ones ~11 dB, mid-grey ~16 dB. `min_psnr=8` rejects exactly the flat extremes.
MIN_PSNR = 8.0


def _video(kind: str, seed: int) -> bytes:
    if kind == "pattern":
        return encode_mp4(moving_pattern(12, 48, 64, seed=seed))
    level = {"black": 0, "white": 255, "grey": 128}[kind]
    return encode_mp4(np.full((12, 48, 64, 3), level, np.uint8))


# Uneven shards: all passing, all rejected (+ an error row), mixed, rejected (+ error), larger.
SHARDS = [
    ["pattern", "pattern", "pattern"],
    ["black", None],
    ["pattern", "white", "pattern", "black"],
    ["white", "black", None],
    ["pattern", "grey", "pattern", "pattern", "pattern"],
]


def _write_shards(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for shard, kinds in enumerate(SHARDS):
        samples = []
        for index, kind in enumerate(kinds):
            members = {"txt": f"clip {shard} {index}".encode()}
            if kind is not None:
                members["mp4"] = _video(kind, shard * 10 + index)
            samples.append((f"s{shard}v{index}", members))
        write_tar(root / f"shard-{shard:05d}.tar", samples)
    return root


def _regroup(source: Path, target: Path, rows_per_group: int) -> Path:
    """The same cache with smaller row groups: the contract fixes no row-group size."""
    target.mkdir()
    for path in sorted(source.glob("*.parquet")):
        pq.write_table(pq.read_table(path), target / path.name, row_group_size=rows_per_group,
                       compression=COLUMN_COMPRESSION, use_dictionary=DICTIONARY_COLUMNS)
    return target


@pytest.fixture(scope="module")
def caches(tmp_path_factory, local_ray) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reader")
    shards = _write_shards(root / "shards")
    vae = root / "vae.json"
    vae.write_text(json.dumps({"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4,
                               "scale_factor": SCALE, "shift_factor": SHIFT}))
    common = dict(allow_random_weights=True, num_frames=4, clips_per_video=2)
    jobs = {
        "main": (str(shards / "shard-{00000..00004}.tar"),
                 EncodeSettings(vae=str(vae), resolution="32", store_moments=True,
                                scoring=ScoreSettings(scores=("psnr",), min_psnr=MIN_PSNR), **common)),
        # Same VAE, another bucket and storage dtype: may be mixed with main.
        "bf16": (str(shards / "shard-00000.tar"),
                 EncodeSettings(vae=str(vae), resolution="48", latent_dtype="bfloat16",
                                scoring=ScoreSettings(scores=("psnr",)), **common)),
        # Same VAE, normalised per channel (--latent-shift/--latent-scale), float32: must not be mixed with main.
        "per_channel": (str(shards / "shard-00000.tar"),
                        EncodeSettings(vae=str(vae), resolution="32", store_moments=True, latent_dtype="float32",
                                       latent_shift=CHANNEL_SHIFT, latent_scale=CHANNEL_SCALE,
                                       scoring=ScoreSettings(scores=("psnr",)), **common)),
        # Another VAE (scale 1, shift 0, 4 channels all the same): must not be mixed with main.
        "other_vae": (str(shards / "shard-00000.tar"),
                      EncodeSettings(vae="tiny", resolution="32", scoring=ScoreSettings(scores=("psnr",)), **common)),
    }
    made = {}
    for name, (inputs, settings) in jobs.items():
        report = run_encode_job(inputs, str(root / name), settings, QUIET)
        assert report.exit_status == 0, report
        made[name] = root / name
    made["regrouped"] = _regroup(made["main"], root / "regrouped", rows_per_group=2)
    return made


def _table(cache: Path) -> pa.Table:
    return ds.dataset(cache, format="parquet").to_table(
        columns=["key", "status", "psnr", "passed", "caption", "clip_index", "latent", "latent_shape", "latent_dtype"])


def _ok_keys(cache: Path, where=None) -> list[str]:
    table = _table(cache).to_pandas()
    table = table[table.status == "ok"]
    if where is not None:
        table = table[where(table)]
    return sorted(table.key)


def _loader_keys(dataset, workers: int) -> list[str]:
    return [sample["key"] for sample in DataLoader(dataset, batch_size=None, num_workers=workers)]


def test_fixture_caches_have_what_the_tests_need(caches):
    table = _table(caches["main"]).to_pandas()
    assert (table.status == "error").sum() == 2
    ok = table[table.status == "ok"]
    assert ok.passed.sum() == 20 and (~ok.passed.astype(bool)).sum() == 10
    regrouped = [pq.ParquetFile(path).num_row_groups for path in sorted(caches["regrouped"].glob("*.parquet"))]
    assert regrouped == [3, 2, 4, 3, 5]


@pytest.mark.parametrize("cache, where, shuffle, prefetch", [
    ("main", None, False, 2), ("regrouped", None, False, 0), ("regrouped", "passed", True, 2)])
def test_every_split_reads_every_sample_exactly_once(caches, cache, where, shuffle, prefetch):
    expected = _ok_keys(caches[cache], None if where is None else (lambda t: t.passed.astype(bool)))
    for world_size in (1, 2, 3):
        for workers in (0, 1, 2):
            keys = []
            for rank in range(world_size):
                dataset = LatentDataset(caches[cache], where=where, shuffle=shuffle, seed=3, shuffle_buffer=4,
                                        rank=rank, world_size=world_size, prefetch=prefetch)
                keys += _loader_keys(dataset, workers)
            duplicated = [key for key, count in Counter(keys).items() if count > 1]
            assert not duplicated, (world_size, workers, duplicated)
            assert sorted(keys) == expected, (world_size, workers)


def test_ranks_default_to_torch_distributed(caches, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    dataset = LatentDataset(caches["regrouped"])
    assert (dataset.rank, dataset.world_size) == (2, 3)
    assert list(dataset)  # 17 row groups over 3 ranks: rank 2 has some
    with pytest.raises(ValueError, match="rank 3 is not within world_size 3"):
        LatentDataset(caches["regrouped"], rank=3)


def test_shuffle_is_deterministic_per_seed_and_epoch(caches):
    def order(seed, epoch, workers=2):
        dataset = LatentDataset(caches["regrouped"], shuffle=True, seed=seed, shuffle_buffer=8)
        dataset.set_epoch(epoch)
        return _loader_keys(dataset, workers)

    first = order(seed=0, epoch=0)
    assert order(seed=0, epoch=0) == first
    assert order(seed=0, epoch=1) != first
    assert order(seed=1, epoch=0) != first
    assert sorted(order(seed=0, epoch=1)) == sorted(first) == _ok_keys(caches["regrouped"])
    unshuffled = _loader_keys(LatentDataset(caches["regrouped"]), 0)
    assert unshuffled == sorted(unshuffled) and first != unshuffled


def test_samples_hold_the_stored_latent_without_copying(caches):
    samples = list(LatentDataset(caches["main"], columns=["psnr", "passed", "latent_shape"]))
    assert len(samples) == 30
    by_file = Counter(sample["key"].split("/")[0] for sample in samples)
    for sample in samples[:8]:
        assert set(sample) == {"key", "caption", "latent", "psnr", "passed", "latent_shape"}
        assert sample["latent"].dtype == torch.float16 and list(sample["latent"].shape) == sample["latent_shape"]
        torch.testing.assert_close(sample["latent"], load_latent(caches["main"], sample["key"]), atol=0, rtol=0)
        shard, sample_key, _ = sample["key"].split("/")
        assert sample["caption"] == f"clip {int(shard[-1])} {int(sample_key.split('v')[1])}"
    # Samples of one row group view one Arrow buffer: no per-sample copy.
    first, second = samples[0], samples[1]
    assert by_file[first["key"].split("/")[0]] > 1
    assert first["latent"].untyped_storage().data_ptr() == second["latent"].untyped_storage().data_ptr()
    assert first["latent"].data_ptr() != second["latent"].data_ptr()


@pytest.mark.parametrize("where, select", [
    ("passed", lambda t: t.passed.astype(bool)),
    ("passed AND psnr < 12", lambda t: t.passed.astype(bool) & (t.psnr < 12)),
    ("not passed or psnr >= 15.5", lambda t: ~t.passed.astype(bool) | (t.psnr >= 15.5)),
    ("(clip_index = 1 or psnr > 15) and passed = true", lambda t: ((t.clip_index == 1) | (t.psnr > 15)) & t.passed),
    ("caption = 'clip 2 1' or caption == \"clip 4 0\"", lambda t: t.caption.isin(["clip 2 1", "clip 4 0"])),
    ("psnr is not null and not (caption is null or caption = 'clip 0 0')", lambda t: t.caption != "clip 0 0"),
    ("psnr is null", lambda t: t.psnr.isna()),
    ("key <> 'shard-00000/s0v0/0' and clip_index != 0", lambda t: (t.key != "shard-00000/s0v0/0") & (t.clip_index > 0)),
])
def test_where_selects_what_pandas_selects(caches, where, select):
    keys = sorted(sample["key"] for sample in LatentDataset(caches["regrouped"], where=where))
    assert keys == _ok_keys(caches["regrouped"], select)


def test_where_accepts_a_pyarrow_expression(caches):
    dataset = LatentDataset(caches["main"], where=(pc.field("psnr") > 15) & pc.field("passed"), columns=["psnr"])
    samples = list(dataset)
    assert samples and all(sample["psnr"] > 15 for sample in samples)


def test_bad_where_is_refused_before_reading(caches):
    # The language itself is tested in test_where.py; the reader must surface its errors.
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        LatentDataset(caches["main"], where="nope = 1")


def test_where_on_a_score_null_in_every_row_is_refused_with_its_reason(caches):
    # main was encoded with --scores psnr: the other scores are null, and the metadata says why.
    with pytest.raises(ValueError, match=r"'lpips' is null in every row of the cache \(not requested \(--scores\)\)"):
        LatentDataset(caches["main"], where="passed and lpips < 0.2")
    with pytest.raises(ValueError, match="'ssim' is null in every row"):
        LatentDataset([caches["main"], caches["bf16"]], where="ssim in (0.5, 0.6) or passed")
    keys = sorted(sample["key"] for sample in LatentDataset(caches["main"], where="lpips is null"))
    assert keys == _ok_keys(caches["main"])
    assert not list(LatentDataset(caches["main"], where="disc_score is not null"))



@pytest.mark.parametrize("cache", ["main", "regrouped"])
def test_len_is_what_a_rank_yields_over_all_its_workers(caches, cache):
    for world_size in (1, 2):
        lengths = []
        for rank in range(world_size):
            for shuffle, epoch in ((False, 0), (True, 0), (True, 1)):
                dataset = LatentDataset(caches[cache], shuffle=shuffle, seed=5, rank=rank, world_size=world_size)
                dataset.set_epoch(epoch)
                for workers in (0, 2):
                    assert len(dataset) == len(_loader_keys(dataset, workers)), (world_size, rank, shuffle, workers)
            lengths.append(len(LatentDataset(caches[cache], rank=rank, world_size=world_size)))
        assert sum(lengths) == 30 and all(lengths)


def test_len_of_a_loader_with_workers(caches):
    # Each worker batches its own row groups, so the last batch of each can be short: the loader may
    # yield up to workers - 1 more batches than len(loader) = ceil(len(dataset) / batch_size).
    dataset = LatentDataset(caches["regrouped"])
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_latents)
    sizes = [len(batch["key"]) for batch in loader]
    assert sum(sizes) == len(dataset) == 30 and len(loader) == 8
    assert len(loader) <= len(sizes) <= len(loader) + 1 and sum(size < 4 for size in sizes) <= 2


def test_len_with_where_is_unknown_until_read(caches):
    for where in ("passed", pc.field("passed")):
        dataset = LatentDataset(caches["main"], where=where)
        with pytest.raises(TypeError, match="unknown until its rows are read"):
            len(dataset)
        assert len(list(dataset)) == 20  # list() takes the TypeError as "no length hint"


def test_len_without_statistics_is_a_type_error_naming_the_file(caches, tmp_path):
    source = caches["main"] / "shard-00000.parquet"
    (tmp_path / "bare").mkdir()
    pq.write_table(pq.read_table(source), tmp_path / "bare" / source.name, write_statistics=False)
    dataset = LatentDataset(tmp_path / "bare")
    with pytest.raises(TypeError, match=f"{tmp_path / 'bare' / source.name} was written without it"):
        len(dataset)
    assert len(list(dataset)) == 6


class _CountingFile:
    def __init__(self, handle, counter):
        self._handle, self._counter = handle, counter

    def read(self, size=-1):
        data = self._handle.read(size)
        self._counter["bytes"] += len(data)
        return data

    def readinto(self, buffer):
        count = self._handle.readinto(buffer)
        self._counter["bytes"] += count
        return count

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


class CountingFileSystem(fsspec.AbstractFileSystem):
    """The local disk under `counting://`, counting every byte read through it."""

    protocol = "counting"
    counter = {"bytes": 0}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._local = LocalFileSystem()

    def ls(self, path, detail=True, **kwargs):
        return self._local.ls(path, detail=detail, **kwargs)

    def info(self, path, **kwargs):
        return self._local.info(path, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        return _CountingFile(self._local._open(path, mode, **kwargs), self.counter)


fsspec.register_implementation("counting", CountingFileSystem, clobber=True)


def _bytes_read(cache: Path, **options) -> tuple[int, int, LatentDataset]:
    dataset = LatentDataset(f"counting://{cache}", **options)
    CountingFileSystem.counter["bytes"] = 0
    samples = sum(1 for _ in dataset)
    return CountingFileSystem.counter["bytes"], samples, dataset


def _latent_chunk_bytes(cache: Path) -> dict[tuple[str, int], int]:
    sizes = {}
    for path in sorted(cache.glob("*.parquet")):
        metadata = pq.ParquetFile(path).metadata
        column = metadata.schema.to_arrow_schema().get_field_index("latent")
        for group in range(metadata.num_row_groups):
            sizes[(path.name, group)] = metadata.row_group(group).column(column).total_compressed_size
    return sizes


def _groups_without(cache: Path, selected: set[str]) -> set[tuple[str, int]]:
    """Row groups none of whose rows is in `selected`."""
    groups = set()
    for path in sorted(cache.glob("*.parquet")):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            if not selected & set(parquet.read_row_group(group, columns=["key"]).column(0).to_pylist()):
                groups.add((path.name, group))
    return groups


@pytest.mark.parametrize("cache", ["main", "regrouped"])
def test_statistics_skip_row_groups_and_their_bytes(caches, cache):
    full, full_samples, _ = _bytes_read(caches[cache])
    selective, selective_samples, dataset = _bytes_read(caches[cache], where="passed")
    passed = set(_ok_keys(caches[cache], lambda t: t.passed.astype(bool)))
    rejected_groups = _groups_without(caches[cache], passed)
    chunk = _latent_chunk_bytes(caches[cache])
    assert (full_samples, selective_samples) == (30, 20)
    # The statistics (max(passed) is false) ruled these row groups out before any was opened.
    kept = {(url.rsplit("/", 1)[1], group) for url, group in dataset.row_groups}
    assert rejected_groups and not kept & rejected_groups
    skipped_latent = sum(chunk[group] for group in rejected_groups)
    assert full - selective >= skipped_latent > 0
    assert selective >= sum(chunk[group] for group in kept)


def test_metadata_pass_skips_latents_that_statistics_cannot(caches):
    # Arithmetic hides the column from statistics: every row group is opened, and the metadata pass
    # alone decides which latents to read.
    where = pc.multiply(pc.field("psnr"), pa.scalar(1.0, pa.float32())) >= pa.scalar(MIN_PSNR, pa.float32())
    full, _, _ = _bytes_read(caches["main"], where=pc.field("status") == "ok")
    selective, samples, dataset = _bytes_read(caches["main"], where=where)
    assert samples == 20 and len(dataset.row_groups) == 5
    passed = set(_ok_keys(caches["main"], lambda t: t.passed.astype(bool)))
    rejected_groups = _groups_without(caches["main"], passed)
    chunk = _latent_chunk_bytes(caches["main"])
    assert {name for name, _ in rejected_groups} == {"shard-00001.parquet", "shard-00003.parquet"}
    assert full - selective >= sum(chunk[group] for group in rejected_groups) > 0


def test_len_reads_no_data(caches):
    dataset = LatentDataset(f"counting://{caches['regrouped']}", rank=1, world_size=2)
    CountingFileSystem.counter["bytes"] = 0
    length = len(dataset)
    assert CountingFileSystem.counter["bytes"] == 0
    assert length == len(list(dataset)) > 0


def test_reads_through_an_fsspec_filesystem_in_workers(caches):
    dataset = LatentDataset(f"counting://{caches['regrouped']}", where="passed")
    assert sorted(_loader_keys(dataset, 2)) == _ok_keys(caches["regrouped"], lambda t: t.passed.astype(bool))



def test_caches_of_different_vaes_are_refused_naming_the_difference(caches):
    with pytest.raises(ValueError, match="different VAEs") as error:
        LatentDataset([caches["main"], caches["other_vae"]])
    message = str(error.value)
    assert "vae.scale_factor is 0.5 there but 1.0 here" in message
    assert str(caches["other_vae"]) in message and str(caches["main"]) in message


def _rewrite_metadata(source: Path, target: Path, change, drop: tuple[str, ...] = ()) -> Path:
    target.mkdir()
    table = pq.read_table(source).drop_columns(list(drop))
    metadata = json.loads(table.schema.metadata[METADATA_KEY])
    change(metadata)
    table = table.replace_schema_metadata({**table.schema.metadata, METADATA_KEY: json.dumps(metadata).encode()})
    pq.write_table(table, target / source.name)
    return target


def test_other_contract_versions_and_weights_are_refused(caches, tmp_path):
    source = caches["main"] / "shard-00000.parquet"
    for version in (2, "2.0", "1.3", "one"):
        future = _rewrite_metadata(source, tmp_path / f"v{version}", lambda m, v=version: m.update(contract_version=v))
        with pytest.raises(ValueError, match=f"contract_version {version}; this reader reads contract versions 1 to 1.2"):
            LatentDataset([caches["main"], future])
    other_weights = _rewrite_metadata(source, tmp_path / "weights", lambda m: m["vae"].update(weights_sha256="ab12"))
    with pytest.raises(ValueError, match="vae.weights_sha256 is None there but 'ab12' here"):
        LatentDataset([caches["main"], other_weights])
    with pytest.raises(ValueError, match="no cache files"):
        LatentDataset(tmp_path)


def test_bfloat16_caches_and_mixed_dtypes(caches):
    samples = list(LatentDataset(caches["bf16"]))
    assert len(samples) == 6
    for sample in samples:
        assert sample["latent"].dtype == torch.bfloat16 and sample["latent"].shape == (4, 4, 24, 24)
        assert torch.equal(sample["latent"], load_latent(caches["bf16"], sample["key"]))
    # A storage dtype is not part of the VAE's identity: float16 with bfloat16 reads as float32.
    mixed = LatentDataset([caches["main"], caches["bf16"]])
    assert mixed.dtype == torch.float32
    # Keys are unique within a cache; two caches of the same shards share them.
    latents = [sample["latent"] for sample in mixed]
    assert len(latents) == 36 and {latent.dtype for latent in latents} == {torch.float32}
    assert LatentDataset([caches["main"], caches["bf16"]], dtype=torch.bfloat16).dtype == torch.bfloat16


def test_collate_batches_one_shape_and_names_the_shapes_that_differ(caches):
    batches = list(DataLoader(LatentDataset(caches["main"], where="passed", columns=["psnr"]), batch_size=8,
                              collate_fn=collate_latents, num_workers=2))
    sizes = [batch["latent"].shape[0] for batch in batches]
    assert sum(sizes) == 20 and max(sizes) == 8
    assert batches[0]["latent"].shape[1:] == (4, 4, 16, 16) and len(batches[0]["psnr"]) == batches[0]["latent"].shape[0]
    mixed = DataLoader(LatentDataset([caches["main"], caches["bf16"]], where="clip_index = 0 and passed"),
                       batch_size=64, collate_fn=collate_latents)
    with pytest.raises(ValueError, match=r"different shapes: \[4, 4, 16, 16\] float32 \(10 samples, e\.g\. "
                                         r"shard-00000/s0v0/0\); \[4, 4, 24, 24\] float32 \(3 samples"):
        next(iter(mixed))



def test_sample_posterior_draws_from_the_stored_moments_scaled(caches):
    def draws(epoch, seed=0, workers=0):
        dataset = LatentDataset(caches["main"], sample_posterior=True, seed=seed, dtype=torch.float32)
        dataset.set_epoch(epoch)
        return {sample["key"]: sample["latent"] for sample in DataLoader(dataset, batch_size=None,
                                                                         num_workers=workers)}

    first = draws(0)
    assert len(first) == 30
    again = draws(0, workers=2)  # the draw depends on (seed, epoch, key), not on the split
    assert all(torch.equal(first[key], again[key]) for key in first)
    other_epoch = draws(1)
    assert not any(torch.equal(first[key], other_epoch[key]) for key in first)
    moments_table = ds.dataset(caches["main"], format="parquet").to_table(
        columns=["key", "moments", "latent_shape"], filter=pc.field("status") == "ok")
    noise = []
    for row in moments_table.to_pylist():
        c, t, h, w = row["latent_shape"]
        moments = torch.frombuffer(bytearray(row["moments"]), dtype=torch.float32).reshape(2 * c, t, h, w)
        mean, std = moments[:c], torch.exp(0.5 * moments[c:].clamp(-30, 20))
        noise.append(((first[row["key"]] / SCALE + SHIFT - mean) / std).flatten())
    noise = torch.cat(noise)
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
    stored = {sample["key"]: sample["latent"] for sample in LatentDataset(caches["main"])}
    sample = next(iter(LatentDataset(caches["main"], sample_posterior=True)))
    assert sample["latent"].dtype == torch.float16 and sample["latent"].shape == stored[sample["key"]].shape


def test_sample_posterior_refuses_caches_without_moments(caches):
    with pytest.raises(ValueError, match="--store-moments.*bf16"):
        LatentDataset([caches["main"], caches["bf16"]], sample_posterior=True)



def test_reads_a_cache_on_s3(caches, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("latents")
    for path in sorted(caches["main"].glob("*.parquet")):
        fs.put_file(str(path), f"latents/cache/{path.name}")
    fsspec.filesystem("s3").invalidate_cache()
    samples = list(LatentDataset("s3://latents/cache", where="passed", rank=1, world_size=2)) + list(
        LatentDataset("s3://latents/cache", where="passed", rank=0, world_size=2))
    assert sorted(sample["key"] for sample in samples) == _ok_keys(caches["main"], lambda t: t.passed.astype(bool))


def _moments(cache: Path) -> dict[str, torch.Tensor]:
    table = ds.dataset(cache, format="parquet").to_table(columns=["key", "moments", "latent_shape"],
                                                          filter=pc.field("status") == "ok")
    moments = {}
    for row in table.to_pylist():
        c, t, h, w = row["latent_shape"]
        moments[row["key"]] = torch.frombuffer(bytearray(row["moments"]), dtype=torch.float32).reshape(2 * c, t, h, w)
    return moments


def test_per_channel_normalisation_is_stored_and_undone(caches, tmp_path):
    shift, scale = torch.tensor(CHANNEL_SHIFT).view(-1, 1, 1, 1), torch.tensor(CHANNEL_SCALE).view(-1, 1, 1, 1)
    dataset = LatentDataset(caches["per_channel"])
    assert (dataset.normalisation.shift, dataset.normalisation.scale) == (CHANNEL_SHIFT, CHANNEL_SCALE)
    metadata = read_cache_metadata(pq.read_schema(caches["per_channel"] / "shard-00000.parquet").metadata)
    assert (metadata["vae"]["shift_factor"], metadata["vae"]["scale_factor"]) == (list(CHANNEL_SHIFT), list(CHANNEL_SCALE))
    moments = _moments(caches["per_channel"])
    stored = {sample["key"]: sample["latent"] for sample in dataset}
    assert len(stored) == 6
    for key, latent in stored.items():
        mean = moments[key][:4]
        torch.testing.assert_close(latent, scale * (mean - shift), atol=1e-5, rtol=0)
        torch.testing.assert_close(dataset.normalisation.undo(latent), mean, atol=1e-5, rtol=1e-6)
    # Posterior samples are normalised the same way: undone, they are the posterior's N(mean, std) draws.
    noise = []
    for sample in LatentDataset(caches["per_channel"], sample_posterior=True, seed=3):
        mean, logvar = moments[sample["key"]].chunk(2)
        noise.append(((sample["latent"] / scale + shift - mean) / torch.exp(0.5 * logvar.clamp(-30, 20))).flatten())
    noise = torch.cat(noise)
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05
    with pytest.raises(ValueError, match="vae.scale_factor is 0.5 there but \\[0.5, 1.0, 2.0, 1.5\\] here"):
        LatentDataset([caches["main"], caches["per_channel"]])


def test_caches_of_contract_version_1_are_read_and_mixed_with_newer_ones(caches, tmp_path):
    # A contract-1 file has neither of the columns later minor versions added.
    old = _rewrite_metadata(caches["main"] / "shard-00001.parquet", tmp_path / "v1",
                            lambda m: m.update(contract_version=1), drop=("decoder", "bucket"))
    assert read_cache_metadata(pq.read_schema(old / "shard-00001.parquet").metadata)["contract_version"] == 1
    from_old = {sample["key"]: sample["latent"] for sample in LatentDataset(old)}
    mixed = {sample["key"]: sample["latent"] for sample in LatentDataset([caches["main"], old])}
    assert from_old and set(from_old) <= set(mixed)
    assert all(torch.equal(latent, mixed[key]) for key, latent in from_old.items())
    # An expression filter reads every metadata column a file has; bucketed batches need no bucket column.
    expression = LatentDataset([caches["main"], old], where=pc.field("num_frames") > 0)
    assert {sample["key"] for sample in expression} == set(mixed)
    every = sorted(sample["key"] for sample in LatentDataset([caches["main"], old]))  # old's keys twice
    batched = LatentDataset([caches["main"], old], batch_size=2)
    assert sorted(key for batch in batched for key in batch["key"]) == every
