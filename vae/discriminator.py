"""The 3D PatchGAN discriminator of Open-Sora 2.0 (`opensora/models/vae/discriminator.py`, `NLayerDiscriminator3D`).

Not the Open-Sora 1.x class of the same name (4x4x4 kernels, no Dropout): here every conv is 3x3x3 with padding 1,
and the whole network is one `nn.Sequential` named `main`, so checkpoints hold `main.{N}.weight` etc.
"""

import os
import re

import torch
from torch import Tensor, nn

from vae.checkpoint import load_state_dict_file, load_weights_strictly

# Stripped, repeatedly, while every key of a discriminator file starts with one of them: DDP's `module.`,
# torch.compile's `_orig_mod.`, and `discriminator.` for checkpoints that nest it under that name.
KEY_PREFIXES = ("module.", "_orig_mod.", "discriminator.")

# Open-Sora 2.0's size: 64 channels after the first conv, 5 layers (18.8M parameters).
DEFAULT_NDF = 64
DEFAULT_N_LAYERS = 5


def weights_init(module: nn.Module) -> None:
    """Open-Sora's init, for `model.apply`: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0.

    Conv biases keep PyTorch's default init, as in Open-Sora.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)


class NLayerDiscriminator3D(nn.Module):
    """PatchGAN over video (B, input_nc, T, H, W) -> patch logits (B, 1, T', H', W'), initialised by `weights_init`.

    Strides: 2 in every dim for the first two convs, (1, 2, 2) for the next `n_layers - 2`, then 1, so with
    n_layers=5 a clip of (T, H, W) gives (ceil(T/4), H/32, W/32) patches (each stride-2 step rounds up).
    BatchNorm and Dropout make train and eval mode differ: score in eval mode.
    """

    def __init__(
        self,
        input_nc: int = 1,
        ndf: int = DEFAULT_NDF,
        n_layers: int = DEFAULT_N_LAYERS,
        norm_layer: type[nn.Module] = nn.BatchNorm3d,
        dropout: float = 0.30,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv3d(input_nc, ndf, kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = ndf
        for n in range(1, n_layers):
            out_channels = ndf * min(2**n, 8)
            stride = 2 if n == 1 else (1, 2, 2)
            layers += _block(channels, out_channels, stride, norm_layer, dropout)
            channels = out_channels
        out_channels = ndf * min(2**n_layers, 8)
        layers += _block(channels, out_channels, 1, norm_layer, dropout)
        layers.append(nn.Conv3d(out_channels, 1, kernel_size=3, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def _block(
    in_channels: int, out_channels: int, stride: int | tuple[int, int, int], norm_layer: type[nn.Module], dropout: float
) -> list[nn.Module]:
    return [
        nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        norm_layer(out_channels),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Dropout(dropout),
    ]


def load_discriminator(
    path: str | os.PathLike,
    input_nc: int = 3,
    ndf: int | None = None,
    n_layers: int | None = None,
    dropout: float = 0.30,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> NLayerDiscriminator3D:
    """An `NLayerDiscriminator3D` in eval mode without gradients, from a checkpoint file holding exactly its keys.

    `ndf` and `n_layers` left as None are read from the file's shapes (see `_infer_size`); given ones are
    checked against it like every other key. Keys may carry the prefixes in `KEY_PREFIXES`; BatchNorm's
    `num_batches_tracked` counters may be absent (they do not affect eval). Any other missing, unexpected
    or mis-shaped key is a ValueError naming the file.
    """
    state_dict = _strip_prefixes(load_state_dict_file(path))
    inferred_ndf, inferred_n_layers = _infer_size(state_dict)
    model = NLayerDiscriminator3D(
        input_nc=input_nc,
        ndf=inferred_ndf if ndf is None else ndf,
        n_layers=inferred_n_layers if n_layers is None else n_layers,
        dropout=dropout,
    )
    for key, value in model.state_dict().items():
        if key.endswith(".num_batches_tracked"):
            state_dict.setdefault(key, value)
    load_weights_strictly(model, state_dict, source=str(path))
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def _infer_size(state_dict: dict[str, Tensor]) -> tuple[int, int]:
    """(ndf, n_layers) of the network that saved `state_dict`: the first conv's output channels, and its count
    of convs (the 5-D `main.{N}.weight`s) less the first and the last.

    A file without that shape gives the constructor's defaults, so that strict loading names what is wrong.
    """
    first = state_dict.get("main.0.weight")
    convs = [k for k, v in state_dict.items() if re.fullmatch(r"main\.\d+\.weight", k) and v.ndim == 5]
    if first is None or first.ndim != 5 or len(convs) < 3:
        return DEFAULT_NDF, DEFAULT_N_LAYERS
    return first.shape[0], len(convs) - 2


def _strip_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict
