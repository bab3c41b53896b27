"""Reading weight files without unpickling, and strict loading that says which keys are wrong."""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}
_SHOWN_KEYS = 5


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state_dict from `.safetensors`, or from `.pt`/`.pth`/`.bin`/`.ckpt` with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_file(path, device="cpu")
    if suffix not in _TORCH_SUFFIXES:
        raise ValueError(f"unsupported weights file {path}: expected .safetensors or one of {sorted(_TORCH_SUFFIXES)}")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return state_dict


def _some(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def load_weights_strictly(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Copy `state_dict` into `model`; any missing, unexpected or mis-shaped key is a ValueError."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    mismatched = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected.keys() & state_dict.keys()
        if state_dict[k].shape != expected[k].shape
    )
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches (file vs model)": mismatched}
    problems = [f"{len(keys)} {what}: {_some(keys)}" for what, keys in found.items() if keys]
    if problems:
        raise ValueError(f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
