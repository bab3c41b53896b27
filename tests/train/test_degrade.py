"""Degraded fakes for the discriminator, on small synthetic clips on CPU (the codec paths are real libx264/JPEG)."""

import math

import pytest
import torch

from pipeline.train import degrade
from pipeline.train.degrade import DEGRADATIONS, degrade_batch, degrade_clip, mix_fakes

# The degradations that change pixel values everywhere, as opposed to frame_drop, which repeats whole frames.
PIXEL_DEGRADATIONS = {
    "blur": degrade.blur,
    "compression": degrade.compress,
    "noise": degrade.add_noise,
    "downscale": degrade.downscale,
}


def make_clip(frames: int = 8, height: int = 64, width: int = 64) -> torch.Tensor:
    """Smooth colour gradients plus fine texture, panning over time, so every frame differs from the last and
    blur, compression and downscaling all have detail to remove."""
    t = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1)
    y = torch.linspace(-1, 1, height).view(1, height, 1)
    x = torch.linspace(-1, 1, width).view(1, 1, width)
    shift = 0.1 * t
    rows, columns = torch.arange(height).view(1, height, 1), torch.arange(width).view(1, 1, width)
    texture = 0.25 * torch.sin(1.7 * columns + 2.3 * rows + t)
    channels = [
        0.5 * (x + shift).clamp(-1, 1) + texture,
        0.5 * y + 0.3 * torch.cos(3 * (x - shift)) - texture,
        0.4 * (x * y) + 0.5 * texture * torch.sign(x + 1e-3),
    ]
    return torch.stack(channels).clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # peak-to-peak of [-1, 1] is 2


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_valid(degraded: torch.Tensor, clip: torch.Tensor) -> None:
    assert degraded.shape == clip.shape
    assert degraded.dtype == clip.dtype
    assert degraded.device == clip.device
    assert torch.isfinite(degraded).all()
    assert degraded.min() >= -1 and degraded.max() <= 1


def test_degradations_are_named_and_exported():
    assert set(DEGRADATIONS) == {*PIXEL_DEGRADATIONS, "frame_drop"}


@pytest.mark.parametrize("name", sorted(PIXEL_DEGRADATIONS))
def test_pixel_degradation_keeps_shape_and_range_and_lowers_psnr(name):
    clip = make_clip()
    original = clip.clone()
    for seed in range(3):
        degraded = PIXEL_DEGRADATIONS[name](clip, seeded(seed))
        assert_valid(degraded, clip)
        assert psnr(degraded, clip) < 40, f"{name} (seed {seed}) barely changed the clip"
    assert torch.equal(clip, original), "the input clip was modified in place"


@pytest.mark.parametrize("name", sorted(PIXEL_DEGRADATIONS))
def test_pixel_degradation_of_a_single_frame(name):
    clip = make_clip(frames=1)
    degraded = PIXEL_DEGRADATIONS[name](clip, seeded(0))
    assert_valid(degraded, clip)
    assert psnr(degraded, clip) < 40


def test_frame_drop_repeats_predecessors():
    clip = make_clip()
    assert all(not torch.equal(clip[:, i], clip[:, i - 1]) for i in range(1, clip.shape[1]))
    for seed in range(10):
        degraded = degrade.drop_frames(clip, seeded(seed))
        assert_valid(degraded, clip)
        repeated = [i for i in range(1, clip.shape[1]) if torch.equal(degraded[:, i], degraded[:, i - 1])]
        assert 1 <= len(repeated) <= clip.shape[1] // 2
        assert torch.equal(degraded[:, 0], clip[:, 0])
        # Every frame is either the original one or a repeat of the (possibly repeated) frame before it.
        for i in range(1, clip.shape[1]):
            assert i in repeated or torch.equal(degraded[:, i], clip[:, i])


def test_frame_drop_of_two_frames_repeats_the_first():
    clip = make_clip(frames=2)
    degraded = degrade.drop_frames(clip, seeded(0))
    assert torch.equal(degraded[:, 0], clip[:, 0]) and torch.equal(degraded[:, 1], clip[:, 0])


def test_frame_drop_needs_two_frames():
    with pytest.raises(ValueError, match="2 frames"):
        degrade.drop_frames(make_clip(frames=1), seeded(0))


@pytest.mark.parametrize("frames", [1, 5])
def test_compression_handles_odd_frame_sizes(frames):
    clip = make_clip(frames=frames, height=33, width=47)
    degraded = degrade.compress(clip, seeded(0))
    assert_valid(degraded, clip)
    assert psnr(degraded, clip) < 40


def test_compression_raises_when_the_codec_loses_frames(monkeypatch):
    real_roundtrip = degrade._h264_roundtrip
    monkeypatch.setattr(degrade, "_h264_roundtrip", lambda frames, crf: real_roundtrip(frames, crf)[:-1])
    with pytest.raises(RuntimeError, match="codec"):
        degrade.compress(make_clip(), seeded(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_degrade_clip_covers_every_degradation(dtype):
    clip = make_clip().to(dtype)
    seen = set()
    for seed in range(20):
        degraded, name = degrade_clip(clip, seeded(seed))
        assert name in DEGRADATIONS
        assert_valid(degraded, clip)
        assert not torch.equal(degraded, clip)
        seen.add(name)
    assert seen == set(DEGRADATIONS)


def test_degrade_clip_of_a_single_frame_never_drops_frames():
    clip = make_clip(frames=1)
    seen = set()
    for seed in range(20):
        degraded, name = degrade_clip(clip, seeded(seed))
        assert_valid(degraded, clip)
        assert psnr(degraded, clip) < 40
        seen.add(name)
    assert seen == set(DEGRADATIONS) - {"frame_drop"}


def test_degrade_clip_rejects_bad_clips():
    with pytest.raises(ValueError, match="shape"):
        degrade_clip(torch.zeros(4, 2, 8, 8), seeded(0))
    with pytest.raises(ValueError, match="float"):
        degrade_clip(torch.zeros(3, 2, 8, 8, dtype=torch.uint8), seeded(0))


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_each_degradation_is_deterministic(name):
    function = {**PIXEL_DEGRADATIONS, "frame_drop": degrade.drop_frames}[name]
    clip = make_clip()
    first = function(clip, seeded(7))
    second = function(clip, seeded(7))
    assert torch.equal(first, second)


def test_same_generator_state_gives_same_fakes_whatever_the_global_rng():
    real = torch.stack([make_clip(), make_clip().flip(-1), make_clip().flip(-2)])
    reconstruction = torch.zeros_like(real)

    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    first, first_names = mix_fakes(real, reconstruction, 0.7, seeded(3))
    assert torch.equal(torch.get_rng_state(), global_state), "the global torch RNG was used"

    torch.manual_seed(12345)
    second, second_names = mix_fakes(real, reconstruction, 0.7, seeded(3))
    assert first_names == second_names
    assert torch.equal(first, second)

    # A generator carries on: the next draws give another batch, not the same one again.
    generator = seeded(3)
    mix_fakes(real, reconstruction, 0.7, generator)
    third, third_names = mix_fakes(real, reconstruction, 0.7, generator)
    assert third_names != first_names or not torch.equal(third, first)


def test_mix_fakes_with_probability_zero_returns_the_reconstruction():
    real = torch.stack([make_clip(), make_clip().flip(-1)])
    reconstruction = (real * 0.9).requires_grad_(True)
    fakes, names = mix_fakes(real, reconstruction, 0.0, seeded(0))
    assert torch.equal(fakes, reconstruction)
    assert names == ["reconstruction", "reconstruction"]
    assert not fakes.requires_grad


def test_mix_fakes_with_probability_one_never_returns_the_reconstruction():
    real = torch.stack([make_clip(), make_clip().flip(-1), make_clip().flip(-2), -make_clip()])
    reconstruction = (real * 0.9).requires_grad_(True)
    fakes, names = mix_fakes(real, reconstruction, 1.0, seeded(0))
    assert fakes.shape == real.shape and fakes.dtype == reconstruction.dtype
    assert not fakes.requires_grad
    assert all(name in DEGRADATIONS for name in names)
    for i in range(real.shape[0]):
        assert not torch.equal(fakes[i], reconstruction[i])
        assert not torch.equal(fakes[i], real[i])


def test_degrade_batch_degrades_some_and_keeps_the_rest():
    real = torch.stack([make_clip(frames=4, height=32, width=32)] * 16)
    degraded, names = degrade_batch(real, 0.5, seeded(1))
    assert degraded.shape == real.shape
    assert None in names and any(name in DEGRADATIONS for name in names)
    for i, name in enumerate(names):
        assert torch.equal(degraded[i], real[i]) == (name is None)


def test_mix_fakes_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        mix_fakes(torch.zeros(2, 3, 2, 8, 8), torch.zeros(2, 3, 2, 8, 4), 0.5, seeded(0))


@pytest.mark.parametrize("probability", [-0.1, 1.5, math.nan])
def test_bad_probability_raises(probability):
    real = torch.stack([make_clip(frames=2, height=16, width=16)])
    with pytest.raises(ValueError, match="probability"):
        mix_fakes(real, real.clone(), probability, seeded(0))
    with pytest.raises(ValueError, match="probability"):
        degrade_batch(real, probability, seeded(0))
