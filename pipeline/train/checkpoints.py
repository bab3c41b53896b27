"""Training checkpoints: weights any job can load as they are, plus everything an exact resume needs.

`OUT/checkpoints/step-00001000/` holds
- `vae.safetensors`, `vae_ema.safetensors`: the VAE and its EMA in the model's own keys (`jobs.encode --weights`),
  `vae_config.json`: its config (`jobs.encode --vae`);
- `discriminator.safetensors`: `jobs.encode --disc-weights` (its size is read back from the shapes);
- `trainer_state.pt`: optimizers, schedulers and, per worker, RNG states and data cursors; only tensors,
  numbers and strings, read back with `torch.load(weights_only=True)`;
- `checkpoint.json`: step, run id, worker count, the discriminator's size.
A checkpoint is written to a temporary folder and renamed into place, so a kill leaves the previous one whole.
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from pipeline.errors import UsageError
from pipeline.train.steps import VAETrainer
from vae.checkpoint import load_state_dict_file, load_weights_strictly
from vae.presets import DIFFUSERS_CLASS_3D

CHECKPOINTS_DIR = "checkpoints"
VAE_FILE, EMA_FILE, DISC_FILE = "vae.safetensors", "vae_ema.safetensors", "discriminator.safetensors"
VAE_CONFIG_FILE, STATE_FILE, META_FILE = "vae_config.json", "trainer_state.pt", "checkpoint.json"


def vae_config_fields(vae: nn.Module) -> dict[str, Any]:
    """The VAE's config as `vae.load_model` reads it back from JSON (the 3D VAE in diffusers' form)."""
    fields = dataclasses.asdict(vae.config)
    return {"_class_name": DIFFUSERS_CLASS_3D, **fields} if vae.kind != "autoencoder_2d" else fields


def _save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file({name: value.detach().contiguous().cpu() for name, value in tensors.items()}, path, metadata=metadata)


def _fsync_folder(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save_checkpoint(out: Path, step: int, trainer: VAETrainer, workers: list[dict[str, Any]],
                    meta: dict[str, Any], keep: int) -> Path:
    """Write the checkpoint after `step` steps; `workers` holds each worker's RNG states and cursors, `meta`
    what checkpoint.json records beside the step. Keeps the newest `keep` checkpoints."""
    root = out / CHECKPOINTS_DIR
    final = root / f"step-{step:08d}"
    temporary = root / f".step-{step:08d}.partial"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    tag = {"step": str(step)}
    _save_tensors(trainer.vae.state_dict(), temporary / VAE_FILE, tag)
    _save_tensors(trainer.ema.state_dict(), temporary / EMA_FILE, tag)
    _save_tensors(trainer.discriminator.state_dict(), temporary / DISC_FILE, tag)
    (temporary / VAE_CONFIG_FILE).write_text(json.dumps(vae_config_fields(trainer.vae), indent=1) + "\n")
    optimizers = {
        "vae_optimizer": trainer.vae_optimizer, "vae_scheduler": trainer.vae_scheduler,
        "disc_optimizer": trainer.disc_optimizer, "disc_scheduler": trainer.disc_scheduler,
    }
    state = {name: part.state_dict() for name, part in optimizers.items() if part is not None}
    torch.save({**state, "workers": workers}, temporary / STATE_FILE)
    (temporary / META_FILE).write_text(json.dumps({"step": step, **meta}, indent=1) + "\n")
    _fsync_folder(temporary)
    if final.exists():  # the same step written again by a resumed run that had not yet passed it
        shutil.rmtree(final)
    os.replace(temporary, final)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = out / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / META_FILE).is_file())


def read_meta(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / META_FILE).read_text())


def restore_checkpoint(checkpoint: Path, trainer: VAETrainer) -> dict[str, Any]:
    """Load weights, EMA, optimizers and schedulers into `trainer`; returns the saved trainer state (with the
    per-worker RNG states and cursors). A file that does not fit the models is a UsageError naming keys."""
    try:
        load_weights_strictly(trainer.vae, load_state_dict_file(checkpoint / VAE_FILE), str(checkpoint / VAE_FILE))
        load_weights_strictly(trainer.discriminator, load_state_dict_file(checkpoint / DISC_FILE),
                              str(checkpoint / DISC_FILE))
        trainer.ema.load_state_dict(load_state_dict_file(checkpoint / EMA_FILE))
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
        parts = {
            "vae_optimizer": trainer.vae_optimizer, "vae_scheduler": trainer.vae_scheduler,
            "disc_optimizer": trainer.disc_optimizer, "disc_scheduler": trainer.disc_scheduler,
        }
        for name, part in parts.items():
            if part is None:
                continue
            if name not in state:
                raise ValueError(f"{checkpoint / STATE_FILE} has no {name} (saved by a --freeze-vae run?)")
            part.load_state_dict(state[name])
    except (ValueError, KeyError, RuntimeError) as error:
        raise UsageError(f"checkpoint {checkpoint} does not fit this run: {error}") from error
    return state
