"""Held-out validation: reconstruction quality of the VAE and how well the discriminator ranks real clips
above reconstructed and degraded copies of them."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.encode.scoring import psnr, ssim
from pipeline.source.video_decode import ClipSampling
from pipeline.train.clip_source import ClipSource, CropSettings
from pipeline.train.degrade import degrade_clip

# Degraded copies are drawn once from this seed: every validation compares against the same clips.
_DEGRADE_SEED = 1234


@dataclass
class ValidationSet:
    keys: list[str]
    real: Tensor  # float (N, 3, T, H, W) in [-1, 1]
    degraded: Tensor  # the same clips, each degraded once
    degradations: list[str]


def load_validation_set(urls: list[str], sampling: ClipSampling, resolution: int, crop: int,
                        count: int) -> ValidationSet:
    """The first `count` clips of one pass over `urls` (in order, center crops, no flips)."""
    source = ClipSource(urls, "video", sampling, CropSettings(resolution, crop, random=False), seed=0,
                        shuffle_shards=False)
    keys, clips = [], []
    for clip, cursor in source:
        if cursor.epoch > 0 or len(clips) == count:
            break
        keys.append(clip.key)
        clips.append(clip.frames)
    real = torch.stack(clips).permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)
    generator = torch.Generator().manual_seed(_DEGRADE_SEED)
    degraded, names = zip(*(degrade_clip(clip, generator) for clip in real))
    return ValidationSet(keys, real, torch.stack(degraded), list(names))


def reconstruct(vae: nn.Module, clips: Tensor) -> Tensor:
    """The reconstruction the encode job's cache holds: the posterior mode, scaled and shifted, decoded."""
    mean = vae.encode_moments(clips).chunk(2, dim=1)[0]
    return vae.decode(vae.latent_normalisation.apply(mean))


@torch.no_grad()
def validate(vae: nn.Module, discriminator: nn.Module, val: ValidationSet, batch_size: int,
             lpips: nn.Module | None = None) -> tuple[dict[str, float], Tensor]:
    """Mean PSNR/SSIM (and LPIPS) of the reconstructions, and the discriminator's pairwise ranking accuracy
    (real scored above its reconstruction; real above its degraded copy) with its mean scores.

    Returns the metrics and the reconstructions (for images). Both networks are evaluated in eval mode and
    put back in the mode they were in."""
    modes = vae.training, discriminator.training
    vae.eval()
    discriminator.eval()
    device = next(vae.parameters()).device
    recon, scores = [], {"real": [], "recon": [], "degraded": []}
    try:
        for start in range(0, len(val.keys), batch_size):
            real = val.real[start:start + batch_size].to(device)
            reconstruction = reconstruct(vae, real).float().clamp(-1, 1)
            recon.append(reconstruction.cpu())
            for name, clips in (("real", real), ("recon", reconstruction),
                                ("degraded", val.degraded[start:start + batch_size].to(device))):
                scores[name].append(discriminator(clips).float().flatten(1).mean(dim=1).cpu())
    finally:
        vae.train(modes[0])
        discriminator.train(modes[1])
    reconstruction = torch.cat(recon)
    score = {name: torch.cat(values) for name, values in scores.items()}
    source, decoded = val.real.add(1).div(2), reconstruction.add(1).div(2)
    metrics = {
        "psnr": float(psnr(source, decoded).mean()),
        "ssim": float(ssim(source, decoded).mean()),
        "disc_accuracy_vs_recon": float((score["real"] > score["recon"]).float().mean()),
        "disc_accuracy_vs_degraded": float((score["real"] > score["degraded"]).float().mean()),
        "disc_score_real": float(score["real"].mean()),
        "disc_score_recon": float(score["recon"].mean()),
        "disc_score_degraded": float(score["degraded"].mean()),
    }
    if lpips is not None:
        metrics["lpips"] = float(lpips(val.real.to(device), reconstruction.to(device)).mean())
    return metrics, reconstruction
