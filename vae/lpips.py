"""LPIPS, VGG16 variant, version 0.1 (Zhang et al. 2018), in the `lpips` / taming-transformers layout.

Two weight files make the calibrated metric, and `LPIPS()` loads neither:

* the **backbone**: torchvision's ImageNet VGG16, `vgg16-397923af.pth` (what `torchvision.models.vgg16(
  weights="IMAGENET1K_V1")` downloads into `$TORCH_HOME/hub/checkpoints/`; `find_torchvision_vgg16` finds it),
  loaded by `LPIPS.load_vgg16_backbone`;
* the **linear heads**: the five non-negative 1x1 weights calibrated on human judgements (BAPPS), shipped inside
  the `lpips` package as `lpips/weights/v0.1/vgg.pth` (7 KB; `pip download lpips --no-deps` and unzip it, the
  package need not be installed). taming-transformers' `vgg.pth` is the same file (MD5
  d507d7349b931f0638a25a48a722f98a). Loaded by `LPIPS.load_linear_heads`.

With the backbone alone the number is not LPIPS; with the heads alone it is meaningless. Callers must have both.
"""

import os
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from vae.checkpoint import load_state_dict_file, load_weights_strictly

TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"

# torchvision's vgg16().features[:30], as (kind, in_channels, out_channels); "M" is a 2x2 max pool.
_VGG16_FEATURES = [
    ("C", 3, 64), ("R",), ("C", 64, 64), ("R",), ("M",),
    ("C", 64, 128), ("R",), ("C", 128, 128), ("R",), ("M",),
    ("C", 128, 256), ("R",), ("C", 256, 256), ("R",), ("C", 256, 256), ("R",), ("M",),
    ("C", 256, 512), ("R",), ("C", 512, 512), ("R",), ("C", 512, 512), ("R",), ("M",),
    ("C", 512, 512), ("R",), ("C", 512, 512), ("R",), ("C", 512, 512), ("R",),
]  # fmt: skip
# Cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
CHANNELS = (64, 128, 256, 512, 512)
_EPS = 1e-10


def _vgg_layer(spec: tuple) -> nn.Module:
    if spec[0] == "C":
        return nn.Conv2d(spec[1], spec[2], kernel_size=3, padding=1)
    if spec[0] == "R":
        return nn.ReLU(inplace=True)
    return nn.MaxPool2d(kernel_size=2, stride=2)


class VGG16Slices(nn.Module):
    """VGG16 features up to relu5_3, in five slices named by torchvision's feature indices."""

    def __init__(self):
        super().__init__()
        for k, (start, stop) in enumerate(_SLICES, start=1):
            block = nn.Sequential()
            for i in range(start, stop):
                block.add_module(str(i), _vgg_layer(_VGG16_FEATURES[i]))
            setattr(self, f"slice{k}", block)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for k in range(1, len(_SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            features.append(x)
        return features


class ScalingLayer(nn.Module):
    """Maps [-1, 1] RGB to the ImageNet-normalised input VGG16 was trained on."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """A 1x1 conv without bias to one channel; `model.0` is the Dropout the `lpips` package puts first."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(in_channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class TorchvisionVGG16Features(nn.Module):
    """torchvision's key names (`features.N.weight`) over the convs of an `LPIPS`, shared, for loading."""

    def __init__(self, net: VGG16Slices):
        super().__init__()
        self.features = nn.Sequential()
        for name, module in net.named_modules():
            if isinstance(module, nn.Conv2d):
                self.features.add_module(name.rsplit(".", 1)[1], module)


class LPIPSLinearHeads(nn.Module):
    """The `lin{k}` heads of an `LPIPS`, shared, so that loading them checks exactly their keys."""

    def __init__(self, lpips: "LPIPS"):
        super().__init__()
        for k in range(len(CHANNELS)):
            setattr(self, f"lin{k}", getattr(lpips, f"lin{k}"))


class LPIPS(nn.Module):
    """Learned perceptual distance, VGG16, v0.1. Built in eval mode with every parameter frozen; loads nothing.

    `forward(x, y)` takes RGB in [-1, 1], (B,3,H,W) or video (B,3,T,H,W), H and W at least 16, and returns one
    distance per image, or per clip the mean over its frames, shape (B,), float32. Gradients flow to the inputs.
    The backbone runs in the module's dtype; the unit normalisation and heads run in float32 (1e-10 is zero in
    half precision). In train mode the heads' Dropout is active, as in the `lpips` package: keep it in eval.
    """

    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices()
        for k, channels in enumerate(CHANNELS):
            setattr(self, f"lin{k}", NetLinLayer(channels))
        self.eval().requires_grad_(False)

    def load_vgg16_backbone(self, path: str | os.PathLike) -> "LPIPS":
        """Load torchvision's VGG16 (`features.{0,2,...,28}.weight|bias`; `classifier.*` is ignored)."""
        state_dict = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("classifier.")}
        load_weights_strictly(TorchvisionVGG16Features(self.net), state_dict, source=str(path))
        return self

    def load_linear_heads(self, path: str | os.PathLike) -> "LPIPS":
        """Load the calibrated heads: exactly `lin{0..4}.model.1.weight`, as in the `lpips` package's v0.1/vgg.pth."""
        load_weights_strictly(LPIPSLinearHeads(self), load_state_dict_file(path), source=str(path))
        return self

    def forward(self, x: Tensor, y: Tensor, frames_per_batch: int | None = None) -> Tensor:
        """Distances (B,). Frames (images, or all frames of all clips) go through VGG `frames_per_batch` at a
        time, all at once when None; peak memory grows with it."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.ndim not in (4, 5) or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects RGB (B,3,H,W) or (B,3,T,H,W), got shape {tuple(x.shape)}")
        if frames_per_batch is not None and frames_per_batch < 1:
            raise ValueError(f"frames_per_batch must be at least 1, got {frames_per_batch}")
        b, t = x.shape[0], 1 if x.ndim == 4 else x.shape[2]
        if x.ndim == 5:
            x, y = (rearrange(v, "b c t h w -> (b t) c h w") for v in (x, y))
        if b * t == 0:
            return x.new_zeros(b, dtype=torch.float32)
        step = frames_per_batch or b * t
        per_frame = torch.cat([self._distances(x[i : i + step], y[i : i + step]) for i in range(0, b * t, step)])
        return rearrange(per_frame, "(b t) -> b t", b=b).mean(dim=1)

    def _distances(self, x: Tensor, y: Tensor) -> Tensor:
        dtype = self.scaling_layer.shift.dtype
        features_x = self.net(self.scaling_layer(x.to(dtype)))
        features_y = self.net(self.scaling_layer(y.to(dtype)))
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for k, (fx, fy) in enumerate(zip(features_x, features_y)):
            diff = (_unit_normalize(fx.float()) - _unit_normalize(fy.float())).square()
            head = getattr(self, f"lin{k}")
            total = total + head(diff.to(dtype)).float().mean(dim=(1, 2, 3))
        return total


def _unit_normalize(features: Tensor) -> Tensor:
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + _EPS)


def find_torchvision_vgg16(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """torchvision's cached ImageNet VGG16 weights, if present; never downloads.

    Looks in `cache_dir` and `cache_dir/hub/checkpoints` when given, else in torchvision's own location:
    `torch.hub.get_dir()/checkpoints`, i.e. `$TORCH_HOME/hub/checkpoints` with TORCH_HOME defaulting to
    `$XDG_CACHE_HOME/torch` or `~/.cache/torch`.
    """
    if cache_dir is not None:
        candidates = [Path(cache_dir), Path(cache_dir) / "hub" / "checkpoints"]
    else:
        candidates = [Path(torch.hub.get_dir()) / "checkpoints"]
    for folder in candidates:
        path = folder / TORCHVISION_VGG16_FILE
        if path.is_file():
            return path
    return None
