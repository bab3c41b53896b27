"""The weights that ship in weights/small-f8 still load and measure what their card says."""

import json

import pytest

from pipeline.source.video_decode import ClipSampling
from pipeline.train.held_out_evaluation import (
    evaluate_ranking,
    evaluate_reconstruction,
    load_held_out,
)
from tests.media import sample_video_path, write_tar
from vae import PRESETS, SHIPPED, load_model
from vae.discriminator import load_discriminator

SHIPPED_F8 = SHIPPED["small-f8"]


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads(SHIPPED_F8.card.read_text())


def test_files_are_small_and_match_the_preset(card):
    assert SHIPPED_F8.vae.stat().st_size <= 10 * 1024**2
    assert PRESETS["small-f8"].scale_factor == card["scale_factor"]
    model = load_model("small-f8", weights=SHIPPED_F8.vae)
    assert (model.spatial_factor, model.latent_channels) == (8, 4)


@pytest.mark.slow  # encodes and decodes 64 frames at 256² with the real model: over a minute on CPU
def test_held_out_footage_reconstructs_and_ranks_as_the_card_says(card, tmp_path):
    # bikes.mp4 was held out of training; the card measured the same clips (8 frames, stride 2, 256² crops).
    shard = write_tar(tmp_path / "held-out.tar", [("bikes", {"mp4": sample_video_path("bikes.mp4").read_bytes()})])
    held_out = load_held_out([str(shard)], "video", ClipSampling(8, 2, 8), 256, 16)
    assert len(held_out.keys) == card["held_out"]["video"]["count"]
    model = load_model("small-f8", weights=SHIPPED_F8.vae)
    measured = evaluate_reconstruction(model, held_out)["vae"]
    assert measured["psnr"] >= card["held_out"]["video"]["vae"]["psnr"] - 0.5
    ranking = evaluate_ranking(load_discriminator(SHIPPED_F8.discriminator), held_out)
    assert ranking["all_degradations"] >= card["held_out"]["video"]["disc_ranking_accuracy"]["all_degradations"] - 0.05
