import dataclasses
import inspect

import pytest
import torch

from vae import (
    PRESETS_3D,
    AutoEncoder3D,
    AutoEncoder3DConfig,
    DiagonalGaussianDistribution,
    load_model,
)

DOWN, UP = "HunyuanVideoDownBlock3D", "HunyuanVideoUpBlock3D"
# HunyuanVideo's shape (4 levels, spatial x8, temporal x4, attention), narrow enough for CPU tests.
SMALL = dict(
    latent_channels=4,
    down_block_types=[DOWN] * 4,
    up_block_types=[UP] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=2,
    norm_num_groups=4,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
)


def small_model(seed=0, **changes):
    torch.manual_seed(seed)
    return AutoEncoder3D(AutoEncoder3DConfig(**{**SMALL, **changes})).eval()


def diffusers_model(model):
    diffusers = pytest.importorskip("diffusers")
    parameters = inspect.signature(diffusers.AutoencoderKLHunyuanVideo.__init__).parameters
    architecture = {f.name for f in dataclasses.fields(AutoEncoder3DConfig)} & parameters.keys()
    reference = diffusers.AutoencoderKLHunyuanVideo(**{k: getattr(model.config, k) for k in architecture}).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    return reference


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_diffusers_parity(channels_last):
    model = small_model(scaling_factor=0.5, shift_factor=0.1)
    reference = diffusers_model(model)
    reference.use_framewise_encoding = reference.use_framewise_decoding = False
    x = torch.randn(2, 3, 9, 32, 48)
    z = torch.randn(2, 4, 3, 4, 6)
    with torch.no_grad():
        expected_moments = reference.encode(x).latent_dist.parameters
        expected_video = reference.decode(z).sample
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    with torch.inference_mode():
        moments = model.encode_moments(x.contiguous(memory_format=layout))
        video = model.decode(0.5 * (z - 0.1).contiguous(memory_format=layout))
    torch.testing.assert_close(moments, expected_moments, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(video, expected_video, atol=1e-4, rtol=1e-4)


def test_temporal_tiles_match_diffusers_framewise_encoding():
    # diffusers encodes clips over 16 frames in tiles of 1+16 frames, 12 apart; 29 frames fall on whole tiles.
    model = load_model("tiny-3d")
    assert (model.config.tile_sample_num_frames, model.config.tile_sample_overlap_frames) == (16, 4)
    reference = diffusers_model(model)
    x = torch.randn(1, 3, 29, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_moments(x), reference.encode(x).latent_dist.parameters, atol=1e-5, rtol=1e-5
        )


def test_state_dict_is_that_of_diffusers():
    model = small_model(mid_block_add_attention=False)
    reference = diffusers_model(model)
    assert reference.state_dict().keys() == model.state_dict().keys()
    assert not any("attentions" in k for k in model.state_dict())


def test_hunyuan_preset_has_the_published_key_set():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        reference = diffusers.AutoencoderKLHunyuanVideo()
        model = load_model("hunyuan-vae")
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert "encoder.mid_block.attentions.0.to_out.0.weight" in expected
    assert expected["encoder.down_blocks.1.downsamplers.0.conv.conv.weight"] == (256, 256, 3, 3, 3)
    config = PRESETS_3D["hunyuan-vae"]
    assert (config.latent_channels, config.block_out_channels, config.layers_per_block) == (16, [128, 256, 512, 512], 2)
    assert (config.scale_factor, config.shift_factor, model.spatial_factor, model.temporal_factor) == (0.476986, 0.0, 8, 4)


def test_hunyuan_preset_shapes_on_meta():
    with torch.device("meta"):
        model = load_model("hunyuan-vae")
        z, posterior = model.encode(torch.empty(1, 3, 17, 64, 48))
        assert z.shape == (1, 16, 5, 8, 6) and posterior.parameters.shape == (1, 32, 5, 8, 6)
        assert model.decode(z).shape == (1, 3, 17, 64, 48)


def test_tiny_preset_contract():
    model = load_model("tiny-3d")
    assert (model.kind, model.spatial_factor, model.temporal_factor, model.latent_channels) == ("autoencoder_3d", 4, 4, 4)
    x = torch.randn(1, 3, 9, 32, 32)
    with torch.inference_mode():
        recon, posterior, z = model(x)
        moments = model.encode_moments(x)
    assert z.shape == (1, 4, 3, 8, 8) and recon.shape == x.shape
    assert isinstance(posterior, DiagonalGaussianDistribution) and torch.equal(posterior.parameters, moments)


def test_scale_and_shift():
    model = small_model(scaling_factor=0.5, shift_factor=0.25)
    assert (model.config.scale_factor, model.config.shift_factor) == (0.5, 0.25)
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        z, posterior = model.encode(x)
        torch.testing.assert_close(z, 0.5 * (posterior.mean - 0.25))
        unscaled = dataclasses.replace(model.config, scaling_factor=1.0, shift_factor=0.0)
        plain = AutoEncoder3D(unscaled).eval()
        plain.load_state_dict(model.state_dict())
        torch.testing.assert_close(model.decode(z), plain.decode(posterior.mean), atol=5e-4, rtol=1e-4)


def test_sample_draws_from_the_posterior():
    model = small_model(sample=True)
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        z, posterior = model.encode(x)
    assert not torch.equal(z, posterior.mean)


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (9, 3), (13, 4)])
def test_valid_frame_counts(frames, latent_frames):
    model = load_model("tiny-3d")
    with torch.no_grad():
        z, _ = model.encode(torch.randn(1, 3, frames, 16, 16))
        assert z.shape == (1, 4, latent_frames, 4, 4)
        assert model.decode(z).shape == (1, 3, frames, 16, 16)


@pytest.mark.parametrize("frames, message", [
    (0, "0 frames is too short for one latent frame"),
    (2, r"2 frames does not fit temporal factor 4.*nearest: 1 or 5"),
    (8, r"8 frames does not fit temporal factor 4.*nearest: 5 or 9"),
    (16, r"nearest: 13 or 17"),
])
def test_invalid_frame_counts(frames, message):
    model = load_model("tiny-3d")
    with pytest.raises(ValueError, match=message):
        model.encode_moments(torch.randn(1, 3, frames, 16, 16))


def test_bad_shapes():
    model = load_model("tiny-3d")
    with pytest.raises(ValueError, match="multiples of the spatial factor 4"):
        model.encode_moments(torch.randn(1, 3, 5, 18, 16))
    with pytest.raises(ValueError, match=r"expected video \(B,C,T,H,W\)"):
        model.encode_moments(torch.randn(3, 5, 16, 16))
    with pytest.raises(ValueError, match="expected 3 channels"):
        model.encode_moments(torch.randn(1, 4, 5, 16, 16))
    with pytest.raises(ValueError, match=r"expected latents \(B,4,t,h,w\)"):
        model.decode(torch.randn(1, 8, 2, 4, 4))


@pytest.mark.parametrize("changes, message", [
    (dict(spatial_compression_ratio=32), "spatial_compression_ratio 32 needs 5 blocks .* has 4 blocks"),
    (dict(temporal_compression_ratio=16), "temporal_compression_ratio 16 needs 4 blocks .* has 4 blocks"),
    (dict(spatial_compression_ratio=6), "spatial_compression_ratio must be a power of 2, got 6"),
    (dict(down_block_types=[DOWN] * 3), "down_block_types has 3 blocks but block_out_channels has 4"),
    (dict(up_block_types=[UP, UP, UP, "UpDecoderBlock2D"]), "unsupported up_block_types: UpDecoderBlock2D"),
    (dict(norm_num_groups=32), r"block_out_channels \[8, 16, 16, 16\] are not multiples of norm_num_groups 32"),
    (dict(act_fn="gelu"), "unsupported act_fn 'gelu'"),
    (dict(layers_per_block=0), "layers_per_block must be at least 1"),
    (dict(tile_sample_size=100), "tile_sample_size must be a positive multiple of 8, got 100"),
    (dict(tile_sample_overlap=256), "tile_sample_overlap 256 must be below tile_sample_size 256"),
    (dict(tile_sample_num_frames=6), "tile_sample_num_frames must be a positive multiple of 4, got 6"),
    (dict(tile_sample_overlap_frames=16), "tile_sample_overlap_frames 16 must be below tile_sample_num_frames 16"),
])
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        small_model(**changes)


def blend(a, b, overlap, dim):
    """The expected linear blend of two tiles that overlap by `overlap` along `dim`, written out plainly."""
    weight = (torch.arange(overlap, dtype=a.dtype) / overlap).view([-1 if d == dim else 1 for d in range(5)])
    head, tail = a.narrow(dim, 0, a.shape[dim] - overlap), a.narrow(dim, a.shape[dim] - overlap, overlap)
    middle = tail * (1 - weight) + b.narrow(dim, 0, overlap) * weight
    return torch.cat([head, middle, b.narrow(dim, overlap, b.shape[dim] - overlap)], dim)


def test_spatial_tiles_are_blended_linearly():
    model = load_model({**vars(PRESETS_3D["tiny-3d"]), "_class_name": "AutoencoderKLHunyuanVideo",
                        "tile_sample_size": 32, "tile_sample_overlap": 8})
    x = torch.randn(1, 3, 5, 32, 48)  # two tiles across: pixels 0-32 and 16-48 (the last tile ends at the edge)
    z = torch.randn(1, 4, 2, 8, 12)
    with torch.no_grad():
        left, right = model.encoder(x[..., :32]), model.encoder(x[..., 16:])
        expected = model.quant_conv(blend(left, right, 4, dim=4))
        torch.testing.assert_close(model.encode_moments(x), expected, atol=1e-5, rtol=1e-5)
        latent = model.post_quant_conv(z)
        expected = blend(model.decoder(latent[..., :8]), model.decoder(latent[..., 4:]), 16, dim=4)
        torch.testing.assert_close(model.decode(z), expected, atol=1e-5, rtol=1e-5)


def test_tiled_equals_untiled_where_tiles_see_the_same_statistics():
    """GroupNorm and the mid-block attention see the whole tile, so with random weights tiles change the
    result wherever the content differs between tiles. Where it does not (a still clip across time
    tiles, a flat clip across space tiles) tiled and untiled agree within 1e-4."""
    model = load_model({**vars(PRESETS_3D["tiny-3d"]), "_class_name": "AutoencoderKLHunyuanVideo",
                        "tile_sample_size": 32, "tile_sample_overlap": 8, "tile_sample_num_frames": 8})
    untiled = AutoEncoder3D(dataclasses.replace(model.config, use_tiling=False)).eval()
    untiled.load_state_dict(model.state_dict())
    still = torch.randn(1, 3, 1, 8, 8).expand(1, 3, 17, 8, 8)
    flat = torch.randn(1, 3, 5, 1, 1).expand(1, 3, 5, 48, 40)
    with torch.no_grad():
        for x in (still, flat):
            moments = model.encode_moments(x)
            torch.testing.assert_close(moments, untiled.encode_moments(x), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(model.decode(moments[:, :4]), untiled.decode(moments[:, :4]), atol=1e-4, rtol=1e-4)


def test_long_clip_is_tiled_in_time(monkeypatch):
    model = load_model("tiny-3d")
    seen = []
    encoder = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda x: seen.append(x.shape[2]) or encoder(x))
    with torch.no_grad():
        z, _ = model.encode(torch.randn(1, 3, 49, 8, 8))
    assert z.shape[2] == 13
    assert max(seen) == 17 and len(seen) == 4  # frames 0-16, 12-28, 24-40, 32-48
