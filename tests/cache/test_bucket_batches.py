"""Bucketed training batches: one latent shape per batch, every clip exactly once per epoch under any
rank × worker split, deterministic per seed and epoch, per-bucket batch sizes."""

from collections import Counter

import pytest
from torch.utils.data import DataLoader

from pipeline.cache.reader import LatentDataset
from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.run.runner import run_encode_job
from tests.media import encode_mp4, moving_pattern, write_tar

SIZES = [(64, 112), (112, 64), (56, 56)]  # landscape, portrait, square


@pytest.fixture(scope="module")
def bucketed_cache(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("bucket_batches")
    for shard in range(4):
        samples = [(f"v{shard}{i}", {"mp4": encode_mp4(moving_pattern(12, h, w, seed=10 * shard + i))})
                   for i, (h, w) in enumerate(SIZES)]
        write_tar(root / f"shard-{shard:05d}.tar", samples)
    settings = EncodeSettings(vae="tiny", allow_random_weights=True, clips_per_video=2,
                              buckets="area=32,48;aspect=16:9,1:1,9:16;frames=4,8", scoring=ScoreSettings(scores=()))
    report = run_encode_job(str(root / "shard-*.tar"), str(root / "cache"), settings,
                            RunSettings(num_actors=1, progress=False))
    assert report.exit_status == 0
    return root / "cache"


def _keys(dataset: LatentDataset, workers: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(bucket, key, latent shape) of every clip in every batch, through a real DataLoader."""
    seen = []
    for batch in DataLoader(dataset, batch_size=None, num_workers=workers):
        shape = tuple(batch["latent"].shape[1:])
        seen += [(batch["bucket"], key, shape) for key in batch["key"]]
    return seen


def test_batches_hold_one_shape_and_respect_per_bucket_sizes(bucketed_cache):
    all_keys = [sample["key"] for sample in LatentDataset(bucketed_cache)]
    assert len(all_keys) == 36  # 12 videos x (2 clips of 4 frames + 1 of 8)
    dataset = LatentDataset(bucketed_cache, batch_size=4, bucket_batch_sizes={"48x48x8": 1})
    batches = list(DataLoader(dataset, batch_size=None))
    for batch in batches:
        height, width, frames = map(int, batch["bucket"].split("x"))
        assert batch["latent"].shape[1:] == (4, frames, height // 2, width // 2)
        assert len(batch["key"]) <= (1 if batch["bucket"] == "48x48x8" else 4)
    sizes = Counter(batch["bucket"] for batch in batches for _ in batch["key"])
    assert sizes == {"36x64x4": 8, "36x64x8": 4, "64x36x4": 8, "64x36x8": 4, "48x48x4": 8, "48x48x8": 4}
    assert sorted(key for batch in batches for key in batch["key"]) == sorted(all_keys)


@pytest.mark.parametrize("world_size, workers", [(1, 1), (2, 1), (1, 2), (3, 1), (2, 2), (3, 2)])
def test_every_clip_is_in_exactly_one_batch_under_any_split(bucketed_cache, world_size, workers):
    expected = sorted(sample["key"] for sample in LatentDataset(bucketed_cache))
    seen = []
    for rank in range(world_size):
        dataset = LatentDataset(bucketed_cache, batch_size=3, shuffle=True, seed=5, rank=rank, world_size=world_size)
        seen += _keys(dataset, workers)
    assert sorted(key for _, key, _ in seen) == expected
    dropping = [LatentDataset(bucketed_cache, batch_size=3, drop_last=True, rank=rank, world_size=world_size)
                for rank in range(world_size)]
    kept = [key for dataset in dropping for key in _keys(dataset, workers)]
    assert len(set(kept)) == len(kept) <= len(expected)


def test_batches_are_deterministic_per_seed_and_epoch(bucketed_cache):
    def order(seed: int, epoch: int) -> list[list[str]]:
        dataset = LatentDataset(bucketed_cache, batch_size=2, shuffle=True, seed=seed, shuffle_buffer=8)
        dataset.set_epoch(epoch)
        return [batch["key"] for batch in dataset]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)


def test_bad_batch_settings_are_refused(bucketed_cache):
    with pytest.raises(ValueError, match="needs batch_size"):
        LatentDataset(bucketed_cache, bucket_batch_sizes={"48x48x4": 2})
    with pytest.raises(ValueError, match="positive integers"):
        LatentDataset(bucketed_cache, batch_size=0)
    with pytest.raises(TypeError, match="unknown"):
        len(LatentDataset(bucketed_cache, batch_size=2))


def test_a_where_on_one_bucket_opens_only_that_buckets_row_groups(bucketed_cache):
    everything = LatentDataset(bucketed_cache)
    one = LatentDataset(bucketed_cache, where="bucket = '48x48x8'")
    assert len(one.row_groups) == 4 < len(everything.row_groups)  # one row group per file, the others pruned
    assert {sample["key"].split("/")[0] for sample in one} == {f"shard-{i:05d}" for i in range(4)}
    assert all(sample["latent"].shape == (4, 8, 24, 24) for sample in one)
