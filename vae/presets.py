"""Named VAE configs and `load_model`, the one place that turns a spec into a model."""

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vae.autoencoder_2d import AutoEncoder2D, AutoEncoderConfig
from vae.checkpoint import load_state_dict_file, load_weights_strictly

PRESETS: dict[str, AutoEncoderConfig] = {
    "flux-ae": AutoEncoderConfig(
        ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=16, scale_factor=0.3611, shift_factor=0.1159
    ),
    "sd-ae": AutoEncoderConfig(
        ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=4, scale_factor=0.18215, use_quant_conv=True
    ),
    "lightweight": AutoEncoderConfig(ch=64, ch_mult=[1, 2, 2, 4], num_res_blocks=1, z_channels=4, scale_factor=0.18215),
    "high-res": AutoEncoderConfig(ch=192, ch_mult=[1, 2, 4, 8], num_res_blocks=3, z_channels=8, scale_factor=0.15),
    # For tests: spatial factor 2, fast on CPU (GroupNorm(32) needs ch to be a multiple of 32).
    "tiny": AutoEncoderConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, scale_factor=1.0),
}


def load_model(
    spec: str | dict[str, Any] | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A VAE in eval mode without gradients, from a preset name, a dict of config fields or a JSON file.

    Without `weights` the model is randomly initialised; with them every key must match.
    """
    model = AutoEncoder2D(_config(spec))
    if weights is not None:
        load_weights_strictly(model, load_state_dict_file(weights), source=str(weights))
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def _config(spec: str | dict[str, Any] | os.PathLike) -> AutoEncoderConfig:
    if isinstance(spec, dict):
        return _config_from_fields(spec, source="config dict")
    if isinstance(spec, str) and spec in PRESETS:
        # A copy, so that a caller editing model.config does not change the preset.
        return _config_from_fields(vars(PRESETS[spec]), source=f"preset {spec!r}")
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"VAE config file not found: {path}")
        return _config_from_fields(json.loads(path.read_text()), source=str(path))
    raise ValueError(f"unknown VAE preset {spec!r}; presets: {', '.join(PRESETS)} (or pass a dict or a .json path)")


def _config_from_fields(values: dict[str, Any], source: str) -> AutoEncoderConfig:
    if "_class_name" in values:
        raise ValueError(
            f"{source} is a diffusers config ({values['_class_name']}); diffusers configs are handled by "
            "the 3D VAE, which is not implemented yet"
        )
    known = {f.name for f in fields(AutoEncoderConfig)}
    unknown = sorted(values.keys() - known)
    if unknown:
        raise ValueError(f"unknown AutoEncoderConfig fields in {source}: {', '.join(unknown)}")
    return AutoEncoderConfig(**{k: list(v) if isinstance(v, list) else v for k, v in values.items()})
