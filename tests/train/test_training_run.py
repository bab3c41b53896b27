"""Whole training runs in one process (no Ray): checkpoints, exact resume, frozen VAE, broken input, bad steps."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vae as vae_models
from pipeline.source.video_decode import ClipSampling
from pipeline.train.batches import BatchStream, cursors_from
from pipeline.train.checkpoints import (
    DISC_FILE,
    EMA_FILE,
    STATE_FILE,
    VAE_FILE,
    list_checkpoints,
    read_meta,
)
from pipeline.train.clip_source import ClipSource, CropSettings, shards_of_worker
from pipeline.train.settings import TrainJob, TrainSettings
from pipeline.train.training_log import read_metrics
from pipeline.train.training_run import (
    BAD_STEPS_FILE,
    METRICS_FILE,
    SKIPPED_FILE,
    TooManyBadSteps,
    build_models,
    run_training,
)
from tests.media import encode_mp4, moving_pattern, write_tar


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, list[str]]:
    """Two training shards of videos and images, and one held-out shard."""
    root = tmp_path_factory.mktemp("train_shards")
    train = []
    for shard in range(2):
        samples = [(f"s{shard}-v{i}", {"mp4": encode_mp4(moving_pattern(12, 48, 64, seed=10 * shard + i))})
                   for i in range(2)]
        samples.append((f"s{shard}-img", {"png": _png(shard)}))
        train.append(str(write_tar(root / f"train-{shard}.tar", samples)))
    val = write_tar(root / "val.tar", [("held-out", {"mp4": encode_mp4(moving_pattern(12, 48, 64, seed=99))})])
    return {"train": train, "val": [str(val)]}


def make_job(shards: dict[str, list[str]], out: Path, **changes) -> TrainJob:
    fields = dict(data=tuple(shards["train"]), val_data=tuple(shards["val"]), out=str(out), vae="tiny",
                  disc_ndf=8, disc_layers=2, num_frames=4, clips_per_video=2, resolution=32, crop=16,
                  image_ratio=0.3, batch_size=2, max_steps=4, checkpoint_every=2, val_every=2, val_clips=2,
                  log_every=1, degrade_fakes=0.5, run_id="test",
                  settings=TrainSettings(perceptual_loss_weight=0.0, disc_start=1, vae_lr=1e-3, disc_lr=1e-3))
    return TrainJob(**{**fields, **changes})


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def test_batches_resume_from_cursors_exactly(shards):
    sampling, crop = ClipSampling(4, 1, 2), CropSettings(32, 16)

    def stream(cursors=None) -> BatchStream:
        positions = cursors_from(cursors)
        sources = {kind: ClipSource(shards["train"], kind, sampling if kind == "video" else ClipSampling(1),
                                    crop, seed=3, cursor=positions[kind]) for kind in ("video", "image")}
        return BatchStream(sources, batch_size=3, image_ratio=0.4, seed=3)

    whole = stream()
    batches = [whole.next_batch(step) for step in range(9)]  # several epochs of 2x2 videos and 2 images
    assert {b.kind for b in batches} == {"video", "image"}
    first = stream()
    for step in range(4):
        first.next_batch(step)
    resumed = stream(json.loads(json.dumps(first.cursors())))  # as a checkpoint stores them
    for step in range(4, 9):
        batch = resumed.next_batch(step)
        assert batch.keys == batches[step].keys
        assert torch.equal(batch.frames, batches[step].frames)
    # Random crops and flips: a clip seen again in a later epoch is cut differently.
    seen: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        for key, frames in zip(batch.keys, batch.frames):
            seen.setdefault(key, []).append(frames)
    repeated = [views for views in seen.values() if len(views) > 1]
    assert repeated and any(not torch.equal(views[0], views[1]) for views in repeated)


def test_workers_get_disjoint_shards_covering_all():
    urls = [f"s{i}.tar" for i in range(5)]
    parts = [shards_of_worker(urls, rank, 2) for rank in range(2)]
    assert set(parts[0]).isdisjoint(parts[1]) and sorted(parts[0] + parts[1]) == urls
    with pytest.raises(ValueError, match="3 workers"):
        shards_of_worker(urls[:2], 0, 3)


def test_resume_continues_exactly_as_an_uninterrupted_run(shards, tmp_path):
    uninterrupted = tmp_path / "whole"
    assert run_training(make_job(shards, uninterrupted)) == 4
    interrupted = tmp_path / "halves"
    run_training(make_job(shards, interrupted, max_steps=2, run_id="first"))
    assert [p.name for p in list_checkpoints(interrupted)] == ["step-00000002"]
    assert run_training(make_job(shards, interrupted, resume=True, run_id="second")) == 4
    for name in (VAE_FILE, EMA_FILE, DISC_FILE):
        assert_same_tensors(tensors(uninterrupted / "checkpoints/step-00000004" / name),
                            tensors(interrupted / "checkpoints/step-00000004" / name))
    whole_state = torch.load(uninterrupted / "checkpoints/step-00000004" / STATE_FILE, weights_only=True)
    resumed_state = torch.load(interrupted / "checkpoints/step-00000004" / STATE_FILE, weights_only=True)
    assert whole_state["workers"][0]["cursors"] == resumed_state["workers"][0]["cursors"]
    assert whole_state["workers"][0]["clips_read"] == resumed_state["workers"][0]["clips_read"]
    assert torch.equal(whole_state["workers"][0]["torch_rng"], resumed_state["workers"][0]["torch_rng"])
    # The losses logged after the resume are the uninterrupted run's, step for step.
    def train_losses(out: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_metrics(out / METRICS_FILE) if r["kind"] == "train"}
    assert train_losses(interrupted) == train_losses(uninterrupted)
    assert read_meta(interrupted / "checkpoints/step-00000004")["step"] == 4
    # Validation ran at the start and at every --val-every, with images of the reconstructions.
    val_steps = [r["step"] for r in read_metrics(uninterrupted / METRICS_FILE) if r["kind"] == "val"]
    assert val_steps == [0, 2, 4]
    assert sorted(p.name for p in (uninterrupted / "reconstructions").iterdir())[-1] == "step-00000004.png"
    assert "<svg" in (uninterrupted / "metrics.html").read_text()


def test_freeze_vae_trains_only_the_discriminator(shards, tmp_path):
    weights = tmp_path / "vae.safetensors"
    torch.manual_seed(5)
    save_file(vae_models.load_model("tiny").state_dict(), weights)
    settings = TrainSettings(perceptual_loss_weight=0.0, disc_start=0, disc_lr=1e-2, freeze_vae=True)
    job = make_job(shards, tmp_path / "out", weights=str(weights), settings=settings, max_steps=3,
                   checkpoint_every=3)
    run_training(job)
    final = tmp_path / "out/checkpoints/step-00000003"
    assert_same_tensors(tensors(final / VAE_FILE), tensors(weights))
    assert_same_tensors(tensors(final / EMA_FILE), tensors(weights))
    initial = build_models(job, torch.device("cpu"))[1].state_dict()  # the discriminator the run started from
    trained = tensors(final / DISC_FILE)
    assert any(not torch.equal(trained[name], initial[name]) for name in trained if name.endswith("weight"))


def test_broken_samples_are_skipped_counted_and_named(shards, tmp_path):
    good = encode_mp4(moving_pattern(12, 48, 64, seed=7))
    broken = write_tar(tmp_path / "broken.tar", [
        ("cut", {"mp4": good[: len(good) // 3]}),
        ("not-a-video", {"mp4": b"this is text"}),
        ("fine", {"mp4": good}),
    ])
    job = make_job({"train": [str(broken)], "val": shards["val"]}, tmp_path / "out", image_ratio=0.0,
                   max_steps=2)
    run_training(job)
    skipped = read_metrics(tmp_path / "out" / SKIPPED_FILE)
    assert {record["key"].split("#")[1] for record in skipped} >= {"cut", "not-a-video"}
    assert all(record["reason"] for record in skipped)
    train = [r for r in read_metrics(tmp_path / "out" / METRICS_FILE) if r["kind"] == "train"]
    assert train[-1]["skipped_samples"] >= 2


def test_non_finite_losses_are_logged_with_their_clips_and_stop_the_run(shards, tmp_path):
    # A learning rate of 1e30 blows the weights up after the first update: every later loss is NaN or Inf.
    settings = TrainSettings(perceptual_loss_weight=0.0, disc_start=10**6, vae_lr=1e30)
    job = make_job(shards, tmp_path / "out", settings=settings, max_steps=20, max_bad_steps=2, val_data=())
    with pytest.raises(TooManyBadSteps, match="over --max-bad-steps 2") as raised:
        run_training(job)
    bad = read_metrics(tmp_path / "out" / BAD_STEPS_FILE)
    assert len(bad) == 3
    assert all(len(record["keys"]) == 2 and all("#" in key for key in record["keys"]) for record in bad)
    assert bad[-1]["keys"][0] in str(raised.value)


def test_a_causal_3d_vae_trains_and_resumes(shards, tmp_path):
    job = make_job(shards, tmp_path / "out", vae="tiny-3d", num_frames=5, image_ratio=0.0, max_steps=2,
                   checkpoint_every=1, val_every=2)
    assert run_training(job) == 2
    assert run_training(make_job(shards, tmp_path / "out", vae="tiny-3d", num_frames=5, image_ratio=0.0,
                                 max_steps=3, checkpoint_every=1, resume=True, run_id="again")) == 3
    config = json.loads((tmp_path / "out/checkpoints/step-00000003/vae_config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLHunyuanVideo"
    model = vae_models.load_model(str(tmp_path / "out/checkpoints/step-00000003/vae_config.json"),
                                  weights=tmp_path / "out/checkpoints/step-00000003" / VAE_FILE)
    assert model.temporal_factor == 4
