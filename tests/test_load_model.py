import json

import pytest
import torch
from safetensors.torch import save_file

from vae import PRESETS, AutoEncoder2D, AutoEncoderConfig, load_model, load_state_dict_file

TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=4)


def test_presets():
    assert set(PRESETS) == {"flux-ae", "sd-ae", "lightweight", "high-res", "tiny"}
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


def test_diffusers_config_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "AutoencoderKLHunyuanVideo", "latent_channels": 16}))
    with pytest.raises(ValueError, match="diffusers.*3D VAE"):
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

