"""How good a VAE and its discriminator are on held-out shards, against baselines a reader can judge.

- Reconstruction: PSNR/SSIM of the VAE's cached reconstruction (posterior mode) next to bicubic down- and
  up-sampling that keeps the same number of values per frame as the latent (`C·(H/f)·(W/f)`), the trivial
  codec at the same compression.
- Discriminator: for each held-out clip and each degradation, whether the original scores above the degraded
  copy (pairwise ranking accuracy), and the same against the VAE's reconstruction.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.encode.scoring import psnr, ssim
from pipeline.source.video_decode import ClipSampling
from pipeline.train.clip_source import ClipSource, CropSettings
from pipeline.train.degrade import DEGRADATIONS, degrade_with
from pipeline.train.validation import reconstruct

_SEED = 20261202


@dataclass
class HeldOutClips:
    keys: list[str]
    clips: Tensor  # float (N, 3, T, H, W) in [-1, 1]


def load_held_out(urls: list[str], kind: str, sampling: ClipSampling, size: int, limit: int) -> HeldOutClips:
    """Up to `limit` clips (or stills) of one pass over `urls`: short side to `size`, center `size`² crop."""
    source = ClipSource(urls, kind, sampling, CropSettings(size, size, random=False), seed=0, shuffle_shards=False)
    keys, clips = [], []
    for clip, cursor in source:
        if cursor.epoch > 0 or len(clips) == limit:
            break
        keys.append(clip.key)
        clips.append(clip.frames)
    if not clips:
        raise ValueError(f"no held-out {kind} clips in {len(urls)} shard(s)")
    return HeldOutClips(keys, torch.stack(clips).permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0))


def bicubic_round_trip(clips: Tensor, values_per_frame: int) -> Tensor:
    """Bicubic (antialiased) down-sampling to the size holding `values_per_frame` RGB values, and back."""
    batch, channels, frames, height, width = clips.shape
    scale = math.sqrt(values_per_frame / (channels * height * width))
    small = max(1, round(height * scale)), max(1, round(width * scale))
    flat = clips.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    down = F.interpolate(flat, size=small, mode="bicubic", antialias=True, align_corners=False)
    up = F.interpolate(down, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)
    return up.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)


def _quality(source: Tensor, reconstruction: Tensor) -> dict[str, float]:
    real, decoded = source.add(1).div(2), reconstruction.add(1).div(2)
    return {"psnr": float(psnr(real, decoded).mean()), "ssim": float(ssim(real, decoded).mean())}


@torch.no_grad()
def evaluate_reconstruction(vae: nn.Module, held_out: HeldOutClips, batch_size: int = 2) -> dict[str, dict[str, float]]:
    """Mean PSNR/SSIM of the VAE and of the bicubic baseline at the VAE's compression."""
    reconstructions = torch.cat([reconstruct(vae, held_out.clips[i:i + batch_size]).float().clamp(-1, 1)
                                 for i in range(0, len(held_out.keys), batch_size)])
    height, width = held_out.clips.shape[-2:]
    factor = vae.spatial_factor
    values = vae.latent_channels * (height // factor) * (width // factor)
    return {
        "vae": _quality(held_out.clips, reconstructions),
        "bicubic_same_values": _quality(held_out.clips, bicubic_round_trip(held_out.clips, values)),
        "values_per_frame": {"latent": values, "pixels": 3 * height * width},
    }


def _scores(discriminator: nn.Module, clips: Tensor) -> Tensor:
    return torch.cat([discriminator(clips[i:i + 1]).float().flatten(1).mean(dim=1) for i in range(len(clips))])


@torch.no_grad()
def evaluate_ranking(discriminator: nn.Module, held_out: HeldOutClips, vae: nn.Module | None = None) -> dict[str, float]:
    """Pairwise ranking accuracy: the fraction of (original, worse copy) pairs where the original scores
    higher, per degradation, over all degradations, and against the VAE's reconstruction when given."""
    discriminator.eval()
    real = _scores(discriminator, held_out.clips)
    generator = torch.Generator().manual_seed(_SEED)
    accuracy: dict[str, float] = {}
    wins, pairs = 0, 0
    for name in DEGRADATIONS:
        if name == "frame_drop" and held_out.clips.shape[2] < 2:
            continue
        degraded = torch.stack([degrade_with(name, clip, generator) for clip in held_out.clips])
        won = real > _scores(discriminator, degraded)
        accuracy[name] = float(won.float().mean())
        wins, pairs = wins + int(won.sum()), pairs + len(won)
    accuracy["all_degradations"] = wins / pairs
    if vae is not None:
        reconstructions = torch.cat([reconstruct(vae, held_out.clips[i:i + 1]).float().clamp(-1, 1)
                                     for i in range(len(held_out.keys))])
        accuracy["reconstruction"] = float((real > _scores(discriminator, reconstructions)).float().mean())
    return accuracy
