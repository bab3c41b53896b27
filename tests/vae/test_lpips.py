"""LPIPS (VGG16, v0.1). No published weights are available offline, so every test here uses random backbone
and head weights: they check the mechanism (layout, loaders, the definition, zero and monotonicity), not the
calibrated numbers. Equality with the definition is checked against a float64 computation written from the
paper / `lpips` package description with functional ops on the raw tensors, not with the module's pieces."""

import math
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from vae.lpips import LPIPS, find_torchvision_vgg16

# torchvision vgg16().features: conv index -> (in, out); the other indices up to 29 are ReLU, or max pool at 4, 9, ...
VGG_CONVS = {
    0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
HEAD_CHANNELS = [64, 128, 256, 512, 512]


def random_vgg16(seed=0, classifier=True):
    """A torchvision-layout VGG16 state_dict with He-scaled random weights (plus a stand-in classifier)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, (cin, cout) in VGG_CONVS.items():
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * math.sqrt(2.0 / (9 * cin))
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    if classifier:
        for i in (0, 3, 6):  # real shapes are (4096, 25088) etc.; the loader must ignore them whatever they are
            sd[f"classifier.{i}.weight"] = torch.randn(4, 4, generator=g)
            sd[f"classifier.{i}.bias"] = torch.randn(4, generator=g)
    return sd


def random_heads(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(HEAD_CHANNELS)}


def reference_lpips(x, y, vgg, heads):
    """d(x, y) = sum_l mean_hw sum_c w_lc (x̂_lchw - ŷ_lchw)^2, x̂ the channel-unit-normalised relu{1_2,...,5_3}."""
    x, y = x.double(), y.double()
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(img):
        h, out = (img - shift) / scale, []
        for i in range(30):
            if f"features.{i}.weight" in vgg:
                h = F.conv2d(h, vgg[f"features.{i}.weight"].double(), vgg[f"features.{i}.bias"].double(), padding=1)
            elif i in (4, 9, 16, 23):
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            else:
                h = F.relu(h)
            if i in (3, 8, 15, 22, 29):
                out.append(h)
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)
        total += ((a - b).pow(2) * w).sum(1).mean(dim=(1, 2))
    return total


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips")
    vgg, heads = random_vgg16(), random_heads()
    torch.save(vgg, folder / "vgg16-397923af.pth")
    torch.save(heads, folder / "vgg.pth")
    return folder / "vgg16-397923af.pth", folder / "vgg.pth", vgg, heads


@pytest.fixture(scope="module")
def lpips(weights):
    backbone, heads, _, _ = weights
    return LPIPS().load_vgg16_backbone(backbone).load_linear_heads(heads)


def smooth_images(n, size=32, seed=2):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return (F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1).clamp(-1, 1)


def test_state_dict_layout_is_lpips_and_taming():
    expected = {"scaling_layer.shift": (1, 3, 1, 1), "scaling_layer.scale": (1, 3, 1, 1)}
    for i, (cin, cout) in VGG_CONVS.items():
        slice_number = 1 + sum(i >= cut for cut in (4, 9, 16, 23))
        expected[f"net.slice{slice_number}.{i}.weight"] = (cout, cin, 3, 3)
        expected[f"net.slice{slice_number}.{i}.bias"] = (cout,)
    for k, c in enumerate(HEAD_CHANNELS):
        expected[f"lin{k}.model.1.weight"] = (1, c, 1, 1)
    model = LPIPS()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.scaling_layer.shift.flatten().tolist() == pytest.approx([-0.030, -0.088, -0.188])
    assert model.scaling_layer.scale.flatten().tolist() == pytest.approx([0.458, 0.448, 0.450])
    assert isinstance(model.lin0.model[0], torch.nn.Dropout)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_construction_reads_no_file(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("LPIPS() must not load anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("vae.checkpoint.load_file", refuse)
    LPIPS()


def test_equals_the_definition_on_fixed_weights(lpips, weights):
    _, _, vgg, heads = weights
    x = smooth_images(3)
    y = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    got = lpips(x, y)
    assert got.shape == (3,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_lpips(x, y, vgg, heads), rtol=1e-4, atol=1e-6)


def test_zero_for_identical_inputs_and_grows_with_distortion(lpips):
    x = smooth_images(1)
    assert torch.equal(lpips(x, x.clone()), torch.zeros(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    distances = [lpips(x, (x + s * noise).clamp(-1, 1)).item() for s in (0.02, 0.1, 0.3, 0.8)]
    assert 0 < distances[0] < distances[1] < distances[2] < distances[3]


def test_video_is_scored_per_frame_and_averaged_batched(lpips):
    frames = smooth_images(6, seed=5).reshape(2, 3, 3, 32, 32).transpose(1, 2)  # (B=2, C, T=3, H, W)
    other = (frames + 0.2 * torch.randn(frames.shape, generator=torch.Generator().manual_seed(6))).clamp(-1, 1)
    got = lpips(frames, other)
    per_frame = torch.stack([lpips(frames[:, :, t], other[:, :, t]) for t in range(3)], dim=1)
    assert got.shape == (2,)
    torch.testing.assert_close(got, per_frame.mean(dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lpips(frames, other, frames_per_batch=2), got, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(lpips(frames[1:], other[1:]), got[1:], rtol=1e-5, atol=1e-7)
    images, other_images = frames[:, :, 0], other[:, :, 0]
    torch.testing.assert_close(lpips(images, other_images, frames_per_batch=1), per_frame[:, 0], rtol=1e-5, atol=1e-7)


def test_gradients_reach_the_inputs(lpips):
    x = smooth_images(1)
    y = (x + 0.1).clamp(-1, 1).requires_grad_(True)
    lpips(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_bad_inputs_are_refused(lpips):
    with pytest.raises(ValueError, match="differ in shape"):
        lpips(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError, match="RGB"):
        lpips(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


def test_heads_loader_is_strict(tmp_path):
    good = random_heads()
    save_file(good, tmp_path / "heads.safetensors")
    LPIPS().load_linear_heads(tmp_path / "heads.safetensors")  # safetensors works too

    missing = {k: v for k, v in good.items() if not k.startswith("lin4")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys: lin4\.model\.1\.weight") as err:
        LPIPS().load_linear_heads(tmp_path / "missing.pth")
    assert "missing.pth" in str(err.value)

    extra = dict(good, **{"net.slice1.0.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: net\.slice1\.0\.weight"):
        LPIPS().load_linear_heads(tmp_path / "extra.pth")

    wrong = dict(good, **{"lin0.model.1.weight": torch.zeros(1, 32, 1, 1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"lin0\.model\.1\.weight \(1, 32, 1, 1\) vs \(1, 64, 1, 1\)"):
        LPIPS().load_linear_heads(tmp_path / "wrong.pth")


def test_backbone_loader_is_strict_and_ignores_the_classifier(tmp_path):
    vgg = random_vgg16()
    torch.save(vgg, tmp_path / "vgg.pth")
    model = LPIPS().load_vgg16_backbone(tmp_path / "vgg.pth")
    assert torch.equal(model.state_dict()["net.slice5.28.weight"], vgg["features.28.weight"])
    assert torch.equal(model.state_dict()["net.slice2.5.bias"], vgg["features.5.bias"])

    torch.save({k: v for k, v in vgg.items() if k != "features.28.bias"}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing keys: features\.28\.bias") as err:
        LPIPS().load_vgg16_backbone(tmp_path / "short.pth")
    assert "short.pth" in str(err.value)

    torch.save(dict(vgg, **{"features.30.weight": torch.zeros(1)}), tmp_path / "long.pth")
    with pytest.raises(ValueError, match=r"unexpected keys: features\.30\.weight"):
        LPIPS().load_vgg16_backbone(tmp_path / "long.pth")

    with pytest.raises(ValueError, match="missing keys"):  # the heads file is not a backbone
        torch.save(random_heads(), tmp_path / "heads.pth")
        LPIPS().load_vgg16_backbone(tmp_path / "heads.pth")


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return torch.zeros(1, 64, 1, 1)


class Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_pth_goes_through_weights_only(tmp_path):
    payload = dict(random_heads(), **{"lin0.model.1.weight": Payload()})
    torch.save(payload, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        LPIPS().load_linear_heads(tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        LPIPS().load_vgg16_backbone(tmp_path / "evil.pth")
    assert UNPICKLED == []


def test_find_torchvision_vgg16(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert find_torchvision_vgg16() is None
    target = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"")
    assert find_torchvision_vgg16() == target

    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert find_torchvision_vgg16() is None
    xdg_target = tmp_path / "xdg" / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    xdg_target.parent.mkdir(parents=True)
    xdg_target.write_bytes(b"")
    assert find_torchvision_vgg16() == xdg_target

    assert find_torchvision_vgg16(cache_dir=tmp_path / "torch_home") == target
    assert find_torchvision_vgg16(cache_dir=target.parent) == target
    assert find_torchvision_vgg16(cache_dir=tmp_path / "nowhere") is None
