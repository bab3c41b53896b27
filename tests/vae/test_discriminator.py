import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vae.discriminator import NLayerDiscriminator3D, load_discriminator, weights_init

# Open-Sora 2.0 defaults with RGB input: (index in `main`, in, out, stride, bias); BatchNorm follows every conv
# without bias, then LeakyReLU(0.2) and Dropout(0.3).
DEFAULT_CONVS = [
    (0, 3, 64, (2, 2, 2), True),
    (2, 64, 128, (2, 2, 2), False),
    (6, 128, 256, (1, 2, 2), False),
    (10, 256, 512, (1, 2, 2), False),
    (14, 512, 512, (1, 2, 2), False),
    (18, 512, 512, (1, 1, 1), False),
    (22, 512, 1, (1, 1, 1), True),
]


def test_layer_shapes_and_keys_for_the_defaults():
    model = NLayerDiscriminator3D(input_nc=3)
    expected = {}
    for i, cin, cout, stride, bias in DEFAULT_CONVS:
        conv = model.main[i]
        assert isinstance(conv, nn.Conv3d)
        assert conv.kernel_size == (3, 3, 3) and conv.padding == (1, 1, 1) and conv.stride == stride
        expected[f"main.{i}.weight"] = (cout, cin, 3, 3, 3)
        if bias:
            expected[f"main.{i}.bias"] = (cout,)
        else:
            norm, act, drop = model.main[i + 1], model.main[i + 2], model.main[i + 3]
            assert isinstance(norm, nn.BatchNorm3d) and isinstance(act, nn.LeakyReLU) and isinstance(drop, nn.Dropout)
            assert act.negative_slope == 0.2 and drop.p == 0.3
            for name in ("weight", "bias", "running_mean", "running_var"):
                expected[f"main.{i + 1}.{name}"] = (cout,)
            expected[f"main.{i + 1}.num_batches_tracked"] = ()
    assert isinstance(model.main[1], nn.LeakyReLU) and len(model.main) == 23
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_parameter_count_for_the_defaults():
    def conv(cin, cout, bias):
        return cin * cout * 27 + (cout if bias else 0)

    # conv(3->64, bias); n=1..4: conv to 64*min(2^n, 8) + BatchNorm (2 per channel); stride-1 conv + BN; conv to 1.
    expected = conv(1, 64, True)  # input_nc=1 is Open-Sora's default
    for cin, cout in [(64, 128), (128, 256), (256, 512), (512, 512), (512, 512)]:
        expected += conv(cin, cout, False) + 2 * cout
    expected += conv(512, 1, True)
    assert sum(p.numel() for p in NLayerDiscriminator3D().parameters()) == expected == 18_820_097
    rgb = sum(p.numel() for p in NLayerDiscriminator3D(input_nc=3).parameters())
    assert rgb == expected + 2 * 64 * 27 == 18_823_553


def test_logits_shape_for_video():
    model = NLayerDiscriminator3D(input_nc=3).eval()
    with torch.no_grad():
        # T: 5 -> 3 -> 2, then unchanged; H, W: halved (rounding up) five times.
        assert model(torch.randn(2, 3, 5, 32, 32)).shape == (2, 1, 2, 1, 1)
        assert model(torch.randn(1, 3, 16, 64, 64)).shape == (1, 1, 4, 2, 2)


def test_weights_init():
    torch.manual_seed(0)
    model = NLayerDiscriminator3D(input_nc=3)  # the constructor applies weights_init
    big = model.main[18].weight
    assert abs(big.mean().item()) < 1e-3 and abs(big.std().item() - 0.02) < 1e-3
    norm = model.main[19]
    assert abs(norm.weight.mean().item() - 1.0) < 0.01 and abs(norm.weight.std().item() - 0.02) < 0.005
    assert torch.equal(norm.bias, torch.zeros(512))
    layer = nn.BatchNorm3d(4)
    nn.init.constant_(layer.bias, 3.0)
    layer.apply(weights_init)
    assert torch.equal(layer.bias, torch.zeros(4))


def test_eval_is_deterministic_and_train_is_not():
    torch.manual_seed(0)
    model = NLayerDiscriminator3D(input_nc=3, ndf=8, n_layers=3)
    x = torch.randn(2, 3, 4, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))  # Dropout


def small_state_dict(seed=0):
    torch.manual_seed(seed)
    return NLayerDiscriminator3D(input_nc=3, ndf=8, n_layers=3).state_dict()


@pytest.mark.parametrize("prefix", ["", "discriminator.", "module.", "module.discriminator.", "_orig_mod."])
def test_load_discriminator_strips_documented_prefixes(tmp_path, prefix):
    sd = small_state_dict()
    sd["main.3.running_mean"] += 0.5  # a buffer that must arrive too
    save_file({prefix + k: v.contiguous() for k, v in sd.items()}, tmp_path / "disc.safetensors")
    model = load_discriminator(tmp_path / "disc.safetensors", input_nc=3, ndf=8, n_layers=3)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for key, value in sd.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_discriminator_is_strict(tmp_path):
    sd = small_state_dict()
    without_counters = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(without_counters, tmp_path / "no_counters.pt")
    load_discriminator(tmp_path / "no_counters.pt", ndf=8, n_layers=3)

    torch.save({k: v for k, v in sd.items() if k != "main.14.bias"}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys: main\.14\.bias") as err:
        load_discriminator(tmp_path / "missing.pt", ndf=8, n_layers=3)
    assert "missing.pt" in str(err.value)

    torch.save(dict(sd, **{"main.99.weight": torch.zeros(1)}), tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected keys: main\.99\.weight"):
        load_discriminator(tmp_path / "extra.pt", ndf=8, n_layers=3)

    with pytest.raises(ValueError, match=r"main\.0\.weight \(8, 3, 3, 3, 3\) vs \(8, 1, 3, 3, 3\)"):
        load_discriminator(tmp_path / "no_counters.pt", input_nc=1, ndf=8, n_layers=3)

    # A mixed file (VAE and discriminator side by side) is refused, not silently filtered.
    mixed = dict({"discriminator." + k: v for k, v in sd.items()}, **{"vae.conv_in.weight": torch.zeros(1)})
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="unexpected keys"):
        load_discriminator(tmp_path / "mixed.pt", ndf=8, n_layers=3)


class Payload:
    def __reduce__(self):
        return (torch.zeros, (1,))


def test_load_discriminator_refuses_pickled_objects(tmp_path):
    torch.save(dict(small_state_dict(), **{"main.0.bias": Payload()}), tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_discriminator(tmp_path / "evil.pt", ndf=8, n_layers=3)


@pytest.mark.parametrize(("ndf", "n_layers"), [(16, 3), (64, 5)])
def test_load_discriminator_infers_its_size_from_the_file(tmp_path, ndf, n_layers):
    torch.manual_seed(0)
    sd = NLayerDiscriminator3D(input_nc=3, ndf=ndf, n_layers=n_layers).state_dict()
    save_file({"module." + k: v.contiguous() for k, v in sd.items()}, tmp_path / "disc.safetensors")
    model = load_discriminator(tmp_path / "disc.safetensors")
    assert model.main[0].out_channels == ndf
    assert sum(isinstance(layer, nn.Conv3d) for layer in model.main) == n_layers + 2
    for key, value in sd.items():
        assert torch.equal(model.state_dict()[key], value), key
    # Giving one size still infers the other.
    assert model.state_dict().keys() == load_discriminator(tmp_path / "disc.safetensors", ndf=ndf).state_dict().keys()


def test_load_discriminator_refuses_sizes_the_file_contradicts(tmp_path):
    save_file({k: v.contiguous() for k, v in small_state_dict().items()}, tmp_path / "disc.safetensors")  # ndf=8, 3
    with pytest.raises(ValueError, match=r"main\.0\.weight \(8, 3, 3, 3, 3\) vs \(16, 3, 3, 3, 3\)"):
        load_discriminator(tmp_path / "disc.safetensors", ndf=16)
    with pytest.raises(ValueError, match=r"missing keys: main\.15\.bias.*unexpected keys: main\.14\.bias"):
        load_discriminator(tmp_path / "disc.safetensors", n_layers=4)
    with pytest.raises(ValueError, match=r"missing keys: main\.10\.bias.*unexpected keys: main\.11\.bias"):
        load_discriminator(tmp_path / "disc.safetensors", n_layers=2)


def test_load_discriminator_without_a_first_conv_names_the_missing_keys(tmp_path):
    # Nothing to infer from: the defaults are tried, and strict loading says what the file lacks.
    save_file({"vae.conv_in.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "vae.safetensors")
    with pytest.raises(ValueError, match=r"missing keys: main\.0\.bias.*unexpected keys: vae\.conv_in\.weight"):
        load_discriminator(tmp_path / "vae.safetensors")
