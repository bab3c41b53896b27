"""Builds the job's VAE from its settings and describes it for the cache metadata."""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vae
from pipeline.cache.shard_writer import sha256_of_file
from pipeline.encode.settings import EncodeSettings
from pipeline.errors import UsageError
from vae.latent_normalisation import LatentNormalisation


def build_model(settings: EncodeSettings, device: str | torch.device | None = None) -> nn.Module:
    """The VAE with its weights, or seeded random weights (identical in every actor) when allowed."""
    if settings.weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            return vae.load_model(settings.vae, device=device)
    return vae.load_model(settings.vae, weights=settings.weights, device=device)


def with_shipped_weights(vae_spec: str, weights: str | None, disc_weights: str | None,
                         random_weights: bool = False) -> tuple[str | None, str | None]:
    """(weights, disc_weights) with the files shipped for preset `vae_spec` (`vae.SHIPPED`), or the weights file
    of a diffusers VAE folder, filling in what the user left out. A user's --weights keeps the shipped discriminator out too: it was trained against the
    shipped VAE's reconstructions, not theirs."""
    if weights is None and (folder := vae.diffusers_folder_weights(vae_spec)) is not None:
        # A diffusers VAE folder carries its own weights file: the one the model loads either way.
        return str(folder), disc_weights
    if weights is not None or random_weights:
        return weights, disc_weights
    try:
        shipped = vae.shipped_weights(vae_spec)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    if shipped is None:
        return weights, disc_weights
    return str(shipped.vae), disc_weights or str(shipped.discriminator)


def latent_normalisation(model: nn.Module, settings: EncodeSettings) -> LatentNormalisation:
    """The model's own normalisation with `--latent-shift` / `--latent-scale` replacing its parts."""
    own = model.latent_normalisation
    shift = own.shift if settings.latent_shift is None else settings.latent_shift
    scale = own.scale if settings.latent_scale is None else settings.latent_scale
    try:
        normalisation = LatentNormalisation(shift, scale)
        normalisation.check_channels(model.latent_channels)
    except ValueError as error:
        raise UsageError(f"--latent-shift/--latent-scale: {error}") from error
    return normalisation


def default_num_frames(temporal_factor: int) -> int:
    """16 frames for a per-frame VAE; 4k+1 = 17 for a 4x causal temporal VAE."""
    return 16 if temporal_factor == 1 else 4 * temporal_factor + 1


def check_num_frames(num_frames: int, temporal_factor: int, frame_step: int | None = None,
                     flag: str = "--num-frames") -> None:
    """A causal VAE compressing time by f takes 1 + f*k frames (1 + frame_step*k where its decoder needs more,
    as CogVideoX's does)."""
    step = frame_step or temporal_factor
    if step == 1 or (num_frames - 1) % step == 0:
        return
    below = 1 + (num_frames - 1) // step * step
    above = below + step
    nearest = f"{below} or {above}" if below > 1 else f"{above}"
    raise UsageError(
        f"{flag} {num_frames} does not fit a VAE that compresses time by {temporal_factor} "
        f"(it takes 1 + {step}k frames); use {nearest}"
    )


def describe_vae(settings: EncodeSettings) -> dict[str, Any]:
    """The VAE's identity for the cache metadata, checked on the driver before any actor starts.

    The model is built on the meta device, so no parameter memory is allocated; the weights file is
    read once to check that every key and shape fits, so a bad file stops the job before any actor
    starts.
    """
    if settings.weights is not None and not Path(settings.weights).is_file():
        raise UsageError(f"--weights {settings.weights!r}: no such file")
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            model = vae.load_model(settings.vae, weights=settings.weights)
    except (ValueError, KeyError, OSError, TypeError, RuntimeError, ImportError, pickle.UnpicklingError) as exc:
        raise UsageError(f"--vae {settings.vae!r} with --weights {settings.weights!r}: {exc}") from exc
    # A diffusers VAE folder loads its own weights file when --weights names none.
    weights = settings.weights if settings.weights is not None else vae.diffusers_folder_weights(settings.vae)
    weights = None if weights is None else str(weights)
    config = model.config
    description = {
        "kind": model.kind,
        "spec": settings.vae,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
        "weights": weights,
        "weights_sha256": None if weights is None else sha256_of_file(weights),
        "random_init_seed": settings.seed if weights is None else None,
        # Numbers, or lists for a per-channel normalisation: what the cache stores is scale * (mode - shift).
        **latent_normalisation(model, settings).as_metadata(),
        "spatial_factor": int(model.spatial_factor),
        "temporal_factor": int(model.temporal_factor),
        "latent_channels": int(model.latent_channels),
    }
    frame_step = int(getattr(model, "frame_step", model.temporal_factor))
    if frame_step != model.temporal_factor:
        # Only where it differs (CogVideoX), so that other VAEs' descriptions, part of the job hash, stay as they were.
        description["frame_step"] = frame_step
    return description
