"""Named VAE configs and `load_model`, the one place that turns a spec into a model."""

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vae.autoencoder_2d import AutoEncoder2D, AutoEncoderConfig
from vae.autoencoder_3d import DOWN_BLOCK, UP_BLOCK, AutoEncoder3D, AutoEncoder3DConfig
from vae.checkpoint import load_state_dict_file, load_weights_strictly
from vae.diffusers_vae import (
    CONFIG_NAME,
    DIFFUSERS_CLASSES,
    diffusers_folder_weights,
    diffusers_vae_from_config,
)

PRESETS: dict[str, AutoEncoderConfig] = {
    "flux-ae": AutoEncoderConfig(
        ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=16, scale_factor=0.3611, shift_factor=0.1159
    ),
    "sd-ae": AutoEncoderConfig(
        ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=4, scale_factor=0.18215, use_quant_conv=True
    ),
    "lightweight": AutoEncoderConfig(ch=64, ch_mult=[1, 2, 2, 4], num_res_blocks=1, z_channels=4, scale_factor=0.18215),
    "high-res": AutoEncoderConfig(ch=192, ch_mult=[1, 2, 4, 8], num_res_blocks=3, z_channels=8, scale_factor=0.15),
    # The project's own small VAE (spatial factor 8, 4 latent channels), trained by scripts/train_default_weights.sh;
    # its weights ship in weights/small-f8/ (see the card there).
    "small-f8": AutoEncoderConfig(ch=32, ch_mult=[1, 2, 4, 4], num_res_blocks=1, z_channels=4, scale_factor=0.4916),
    # For tests: spatial factor 2, fast on CPU (GroupNorm(32) needs ch to be a multiple of 32).
    "tiny": AutoEncoderConfig(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, scale_factor=1.0),
}

# Causal 3D VAEs in the layout of diffusers' AutoencoderKLHunyuanVideo (and Open-Sora 2.0's hunyuan_vae).
PRESETS_3D: dict[str, AutoEncoder3DConfig] = {
    "hunyuan-vae": AutoEncoder3DConfig(),
    # For tests: spatial factor 4, temporal factor 4, fast on CPU.
    "tiny-3d": AutoEncoder3DConfig(
        latent_channels=4,
        down_block_types=[DOWN_BLOCK] * 3,
        up_block_types=[UP_BLOCK] * 3,
        block_out_channels=[32, 32, 32],
        layers_per_block=1,
        norm_num_groups=8,
        scaling_factor=1.0,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
    ),
}

DIFFUSERS_CLASS_3D = "AutoencoderKLHunyuanVideo"
# Fields a diffusers config may carry that do not change the architecture.
_IGNORED_DIFFUSERS_FIELDS = {"sample_size", "force_upcast"}


def load_model(
    spec: str | dict[str, Any] | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A VAE in eval mode without gradients, from a preset name, a dict of config fields, a JSON file or a
    diffusers VAE folder (`config.json` + `diffusion_pytorch_model.safetensors`, a model repo's `vae/`).

    A diffusers config (`_class_name`) of `AutoencoderKLHunyuanVideo` gives the native causal 3D VAE; one of
    `DIFFUSERS_CLASSES` gives a `DiffusersVAE` (needs the `diffusers` extra); any dict without `_class_name`
    gives the 2D autoencoder.

    Without `weights` (or a folder's weights file) the model is randomly initialised; with them every key
    must match. Nothing is downloaded.
    """
    config = _config(spec)
    if isinstance(config, dict):
        model = diffusers_vae_from_config(config, source=str(spec) if not isinstance(spec, dict) else "config dict")
        weights = weights if weights is not None else diffusers_folder_weights(spec)
        if weights is not None:
            model.load_weights(load_state_dict_file(weights), source=str(weights))
    else:
        model = AutoEncoder3D(config) if isinstance(config, AutoEncoder3DConfig) else AutoEncoder2D(config)
        if weights is not None:
            load_weights_strictly(model, load_state_dict_file(weights), source=str(weights))
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def _config(spec: str | dict[str, Any] | os.PathLike) -> AutoEncoderConfig | AutoEncoder3DConfig | dict[str, Any]:
    """The native config dataclass, or the config dict of a class run through diffusers."""
    if isinstance(spec, dict):
        return _config_from_fields(spec, source="config dict")
    if isinstance(spec, str) and spec in PRESETS:
        # A copy, so that a caller editing model.config does not change the preset.
        return _config_from_fields(vars(PRESETS[spec]), source=f"preset {spec!r}")
    if isinstance(spec, str) and spec in PRESETS_3D:
        return _config_3d_from_fields(vars(PRESETS_3D[spec]), source=f"preset {spec!r}")
    path = Path(spec)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"VAE folder {path} has no {CONFIG_NAME} (a diffusers VAE folder holds "
                                    f"{CONFIG_NAME} and diffusion_pytorch_model.safetensors)")
        path = path / CONFIG_NAME
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"VAE config file not found: {path}")
        return _config_from_fields(json.loads(path.read_text()), source=str(path))
    presets = ", ".join([*PRESETS, *PRESETS_3D])
    raise ValueError(f"unknown VAE preset {spec!r}; presets: {presets} (or pass a dict or a .json path)")


def _config_from_fields(
    values: dict[str, Any], source: str
) -> AutoEncoderConfig | AutoEncoder3DConfig | dict[str, Any]:
    if "_class_name" in values:
        if values["_class_name"] in DIFFUSERS_CLASSES:
            return values
        if values["_class_name"] != DIFFUSERS_CLASS_3D:
            raise ValueError(
                f"{source} is a diffusers config for {values['_class_name']}; supported diffusers configs: "
                f"{DIFFUSERS_CLASS_3D} (the causal 3D VAE, native), {', '.join(DIFFUSERS_CLASSES)} (through diffusers)"
            )
        fields_3d = {k: v for k, v in values.items() if not k.startswith("_") and k not in _IGNORED_DIFFUSERS_FIELDS}
        return _config_3d_from_fields(fields_3d, source)
    known = {f.name for f in fields(AutoEncoderConfig)}
    unknown = sorted(values.keys() - known)
    if unknown:
        raise ValueError(f"unknown AutoEncoderConfig fields in {source}: {', '.join(unknown)}")
    return AutoEncoderConfig(**{k: list(v) if isinstance(v, list) else v for k, v in values.items()})


def _config_3d_from_fields(values: dict[str, Any], source: str) -> AutoEncoder3DConfig:
    known = {f.name for f in fields(AutoEncoder3DConfig)}
    unknown = sorted(values.keys() - known)
    if unknown:
        raise ValueError(f"unsupported {DIFFUSERS_CLASS_3D} fields in {source}: {', '.join(unknown)}")
    values = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()}
    if values.get("shift_factor", 0.0) is None:
        values["shift_factor"] = 0.0
    return AutoEncoder3DConfig(**values)
