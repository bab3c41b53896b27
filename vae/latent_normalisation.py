"""How a VAE's raw latents become the ones a diffusion model is trained on: `z = scale * (latent - shift)`.

Flux and SD scale by scalars (`scaling_factor`, `shift_factor`); Wan, LTX-Video, LTX-2 and Mochi standardise
each latent channel with published statistics, which is the same formula with per-channel vectors
(`shift = latents_mean`, `scale = scaling_factor / latents_std`, as their diffusers pipelines compute it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Factor = float | tuple[float, ...]


def _factor(value: float | Sequence[float], name: str) -> Factor:
    if isinstance(value, (int, float)):
        values: tuple[float, ...] = (float(value),)
    else:
        values = tuple(float(v) for v in value)
        if not values:
            raise ValueError(f"{name} is an empty list")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {list(values)}")
    return values[0] if isinstance(value, (int, float)) else values


@dataclass(frozen=True)
class LatentNormalisation:
    """`z = scale * (latent - shift)` with `shift` and `scale` each a scalar or one value per latent channel.

    Latents are (..., C, T, H, W): per-channel values apply along the fourth axis from the end, so one
    normalisation serves a single latent (C, T, H, W) and a batch (B, C, T, H, W).
    """

    shift: Factor = 0.0
    scale: Factor = 1.0

    def __post_init__(self) -> None:
        shift, scale = _factor(self.shift, "shift"), _factor(self.scale, "scale")
        if 0.0 in (scale if isinstance(scale, tuple) else (scale,)):
            raise ValueError("scale must not be 0")
        lengths = {len(v) for v in (shift, scale) if isinstance(v, tuple)}
        if len(lengths) > 1:
            raise ValueError(f"shift and scale have different channel counts: {sorted(lengths)}")
        object.__setattr__(self, "shift", shift)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def from_channel_stats(cls, mean: Sequence[float], std: Sequence[float],
                           scaling_factor: float = 1.0) -> LatentNormalisation:
        """Per-channel standardisation `(latent - mean) * scaling_factor / std`."""
        if len(mean) != len(std):
            raise ValueError(f"latents_mean has {len(mean)} values but latents_std {len(std)}")
        if any(float(s) == 0.0 for s in std):
            raise ValueError("latents_std holds a 0")
        return cls(tuple(float(m) for m in mean), tuple(scaling_factor / float(s) for s in std))

    @classmethod
    def from_metadata(cls, vae: dict[str, Any]) -> LatentNormalisation:
        """From a cache's `vae` metadata entry (`shift_factor`, `scale_factor`: numbers or lists)."""
        return cls(vae["shift_factor"], vae["scale_factor"])

    def as_metadata(self) -> dict[str, float | list[float]]:
        """`shift_factor` and `scale_factor` as the cache metadata holds them: numbers, or lists per channel."""
        return {"shift_factor": _plain(self.shift), "scale_factor": _plain(self.scale)}

    @property
    def channels(self) -> int | None:
        """The channel count the per-channel values fit; None when both are scalars."""
        for value in (self.shift, self.scale):
            if isinstance(value, tuple):
                return len(value)
        return None

    def check_channels(self, channels: int) -> None:
        if self.channels not in (None, channels):
            raise ValueError(f"a per-channel latent normalisation of {self.channels} values does not fit a VAE "
                             f"with {channels} latent channels")

    def apply(self, latent: Tensor) -> Tensor:
        """Raw latents (..., C, T, H, W) → normalised `scale * (latent - shift)`."""
        return self._as(self.scale, latent) * (latent - self._as(self.shift, latent))

    def undo(self, z: Tensor) -> Tensor:
        """Normalised latents (..., C, T, H, W) → raw `z / scale + shift`."""
        return z / self._as(self.scale, z) + self._as(self.shift, z)

    def describe(self) -> str:
        if self.channels is None:
            return f"scale {self.scale}, shift {self.shift}"
        return f"per-channel scale and shift ({self.channels} channels)"

    @staticmethod
    def _as(value: Factor, like: Tensor) -> Tensor | float:
        if not isinstance(value, tuple):
            return value
        if like.ndim < 4 or like.shape[-4] != len(value):
            raise ValueError(f"a per-channel normalisation of {len(value)} channels does not fit latents of shape "
                             f"{tuple(like.shape)} (..., C, T, H, W)")
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return torch.tensor(value, dtype=dtype, device=like.device).view(-1, 1, 1, 1)


def _plain(value: Factor) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value
