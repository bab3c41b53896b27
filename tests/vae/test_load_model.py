import json

import pytest
import torch
from safetensors.torch import save_file

from vae import (
    PRESETS,
    AutoEncoder2D,
    AutoEncoderConfig,
    load_model,
    load_state_dict_file,
)

TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=4)


def test_presets():
    assert set(PRESETS) == {"flux-ae", "sd-ae", "lightweight", "high-res", "small-f8", "tiny"}
    flux, sd = PRESETS["flux-ae"], PRESETS["sd-ae"]
    assert (flux.z_channels, flux.scale_factor, flux.shift_factor, flux.use_quant_conv) == (16, 0.3611, 0.1159, False)
    assert (sd.z_channels, sd.scale_factor, sd.shift_factor, sd.use_quant_conv) == (4, 0.18215, 0.0, True)
    assert PRESETS["lightweight"].ch_mult == [1, 2, 2, 4] and PRESETS["high-res"].ch_mult == [1, 2, 4, 8]


def test_preset_by_name():
    model = load_model("tiny")
    assert isinstance(model, AutoEncoder2D) and model.config == PRESETS["tiny"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.config.ch_mult.append(4)
    assert PRESETS["tiny"].ch_mult == [1, 2]


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="flux-ae.*sd-ae.*lightweight.*high-res.*tiny"):
        load_model("flux")


def test_partial_dict_takes_defaults():
    model = load_model({**TINY, "scale_factor": 0.5})
    assert model.config == AutoEncoderConfig(**TINY, scale_factor=0.5)
    assert model.config.resolution == 256 and model.config.out_ch == 3


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="chanels.*z_chan"):
        load_model({**TINY, "z_chan": 4, "chanels": 3})


def test_json_path(tmp_path):
    path = tmp_path / "vae.json"
    path.write_text(json.dumps({**TINY, "use_quant_conv": True}))
    for spec in (path, str(path)):
        model = load_model(spec)
        assert model.config == AutoEncoderConfig(**TINY, use_quant_conv=True)
        assert model.quant_conv is not None
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_model(tmp_path / "missing.json")


def test_unsupported_diffusers_config_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "AutoencoderKLTemporalDecoder", "latent_channels": 16}))
    with pytest.raises(ValueError, match="diffusers.*3D VAE.*AutoencoderKLWan"):
        load_model(path)


def test_device_and_dtype():
    model = load_model("tiny", device="cpu", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())


def weights_of(spec, seed):
    torch.manual_seed(seed)
    return load_model(spec).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".ckpt"])
def test_weights_roundtrip(tmp_path, suffix):
    state_dict = weights_of("tiny", seed=1)
    path = tmp_path / f"ae{suffix}"
    if suffix == ".safetensors":
        save_file(state_dict, path)
    elif suffix == ".ckpt":
        torch.save({"state_dict": state_dict, "global_step": 10}, path)
    else:
        torch.save(state_dict, path)
    model = load_model("tiny", weights=path)
    loaded = model.state_dict()
    assert loaded.keys() == state_dict.keys() and all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)
    x = torch.randn(1, 3, 8, 8)
    torch.manual_seed(1)
    reference = AutoEncoder2D(PRESETS["tiny"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x)[0], reference.encode(x)[0])


def test_sd_layout_weights(tmp_path):
    path = tmp_path / "sd.safetensors"
    save_file(weights_of({**TINY, "use_quant_conv": True}, seed=2), path)
    model = load_model({**TINY, "use_quant_conv": True}, weights=path)
    assert model.post_quant_conv.weight.shape == (4, 4, 1, 1)
    expected = "4 unexpected keys: post_quant_conv.bias, post_quant_conv.weight, quant_conv.bias"
    with pytest.raises(ValueError, match=expected):
        load_model("tiny", weights=path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state_dict = weights_of("tiny", seed=0)
    del state_dict["encoder.conv_in.weight"], state_dict["decoder.mid.attn_1.q.bias"]
    state_dict["encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state_dict, path)
    with pytest.raises(ValueError) as error:
        load_model("tiny", weights=path)
    message = str(error.value)
    assert "2 missing keys: decoder.mid.attn_1.q.bias, encoder.conv_in.weight" in message
    assert "1 unexpected keys: encoder.extra.weight" in message
    assert str(path) in message


def test_many_missing_keys_are_counted(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(weights_of("tiny", seed=0), path)
    with pytest.raises(ValueError, match=r"missing keys: .*\(\d+ more\)"):
        load_model({**TINY, "ch_mult": [1, 2, 2]}, weights=path)


def test_shape_mismatch_is_named(tmp_path):
    path = tmp_path / "z8.safetensors"
    save_file(weights_of({**TINY, "z_channels": 8}, seed=0), path)
    expected = r"shape mismatches.*decoder.conv_in.weight \(64, 8, 3, 3\) vs \(64, 4, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        load_model("tiny", weights=path)


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"encoder.conv_in.weight": NotATensor()}, path)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        load_state_dict_file(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_state_dict_file(tmp_path / "nowhere.safetensors")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported weights file"):
        load_state_dict_file(other)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        load_state_dict_file(not_a_state_dict)


def diffusers_hunyuan_config(**changes):
    """A `vae/config.json` as diffusers writes it for AutoencoderKLHunyuanVideo, narrowed for CPU."""
    return {
        "_class_name": "AutoencoderKLHunyuanVideo",
        "_diffusers_version": "0.32.0.dev0",
        "act_fn": "silu",
        "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["HunyuanVideoDownBlock3D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "mid_block_add_attention": True,
        "norm_num_groups": 4,
        "out_channels": 3,
        "scaling_factor": 0.476986,
        "spatial_compression_ratio": 8,
        "temporal_compression_ratio": 4,
        "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
        **changes,
    }


def test_3d_presets():
    from vae import PRESETS_3D, AutoEncoder3D

    assert set(PRESETS_3D) == {"hunyuan-vae", "tiny-3d"}
    model = load_model("tiny-3d")
    assert isinstance(model, AutoEncoder3D) and model.config == PRESETS_3D["tiny-3d"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    model.config.block_out_channels.append(64)
    assert PRESETS_3D["tiny-3d"].block_out_channels == [32, 32, 32]
    with pytest.raises(ValueError, match="tiny.*hunyuan-vae.*tiny-3d"):
        load_model("hunyuan")


def test_diffusers_config_json_gives_the_3d_vae(tmp_path):
    from vae import AutoEncoder3D

    path = tmp_path / "config.json"
    path.write_text(json.dumps(diffusers_hunyuan_config(sample_size=256, _name_or_path="x")))
    model = load_model(path)
    assert isinstance(model, AutoEncoder3D)
    assert (model.config.block_out_channels, model.config.scale_factor, model.config.shift_factor) == (
        [8, 16, 16, 16], 0.476986, 0.0)
    assert load_model(diffusers_hunyuan_config(shift_factor=0.1, use_tiling=False)).config.shift_factor == 0.1


def test_unsupported_diffusers_fields_are_named():
    with pytest.raises(ValueError, match="unsupported AutoencoderKLHunyuanVideo fields .*: dropout, time_compression"):
        load_model(diffusers_hunyuan_config(dropout=0.1, time_compression=4))
    pytest.importorskip("diffusers")
    with pytest.raises(ValueError, match="unsupported AutoencoderKLWan fields in config dict.*: act_fn, block_out_channels"):
        load_model({**diffusers_hunyuan_config(), "_class_name": "AutoencoderKLWan"})
    with pytest.raises(ValueError, match="spatial_compression_ratio 32 needs 5 blocks"):
        load_model(diffusers_hunyuan_config(spatial_compression_ratio=32))


def test_diffusers_layout_weights_load_strictly(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    config = diffusers_hunyuan_config()
    torch.manual_seed(3)
    reference = diffusers.AutoencoderKLHunyuanVideo(
        **{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    reference.use_framewise_encoding = False
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(reference.state_dict(), path)
    model = load_model(config, weights=path)
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_moments(x), reference.encode(x).latent_dist.parameters,
                                   atol=1e-4, rtol=1e-4)
    wrong = diffusers_hunyuan_config(latent_channels=8)
    with pytest.raises(ValueError, match=r"shape mismatches.*decoder.conv_in.conv.weight \(16, 4, 3, 3, 3\) vs "
                                         r"\(16, 8, 3, 3, 3\)"):
        load_model(wrong, weights=path)
    with pytest.raises(ValueError, match=r"missing keys: decoder.up_blocks.0.resnets.2.conv1.conv.bias, .*more\)"):
        load_model(diffusers_hunyuan_config(layers_per_block=2), weights=path)
    with pytest.raises(ValueError, match="unexpected keys: decoder.mid_block.attentions.0"):
        load_model(diffusers_hunyuan_config(mid_block_add_attention=False), weights=path)
    with pytest.raises(ValueError, match="do not fit AutoEncoder2D"):
        load_model("tiny", weights=path)
