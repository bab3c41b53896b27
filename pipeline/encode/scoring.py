"""Per-clip quality scores (PSNR, SSIM, LPIPS, discriminator) and the thresholds that set `passed`.

Definitions are the cache contract's (`pipeline.cache.schema.SCORE_DEFINITIONS`). A metric whose weights are
missing is null with a recorded reason, never computed on random weights unless the job allows it.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from pipeline.cache.shard_writer import sha256_of_file
from vae.discriminator import NLayerDiscriminator3D, load_discriminator
from vae.lpips import LPIPS, find_torchvision_vgg16

SCORE_NAMES = ("psnr", "ssim", "lpips", "disc")
PSNR_CAP_DB = 100.0
# VGG16 at 256x256 needs ~130 MiB per frame pair: bound the frames that go through it at once.
LPIPS_FRAMES_PER_CALL = 8
_SSIM_WINDOW, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03


@dataclass(frozen=True)
class ScoreSettings:
    """Which scores to compute, from which weights, and the thresholds that decide `passed`."""

    scores: tuple[str, ...] = SCORE_NAMES
    min_psnr: float | None = None
    min_ssim: float | None = None
    max_lpips: float | None = None
    min_disc: float | None = None
    lpips_backbone: str | None = None
    lpips_heads: str | None = None
    disc_weights: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scores) - set(SCORE_NAMES))
        if unknown:
            raise ValueError(f"unknown scores {unknown}; choose from {', '.join(SCORE_NAMES)}")

    @property
    def thresholds(self) -> dict[str, tuple[str, float]]:
        """Score name → (">=" or "<=", bound), for the thresholds in force."""
        bounds = {"psnr": (">=", self.min_psnr), "ssim": (">=", self.min_ssim),
                  "lpips": ("<=", self.max_lpips), "disc": (">=", self.min_disc)}
        return {name: (op, value) for name, (op, value) in bounds.items() if value is not None}


@dataclass(frozen=True)
class ScoringPlan:
    """What the actors compute, resolved once on the driver: files found, null reasons decided."""

    computed: tuple[str, ...]
    null_reasons: dict[str, str]
    thresholds: dict[str, tuple[str, float]]
    lpips_backbone: str | None = None
    lpips_heads: str | None = None
    disc_weights: str | None = None
    random_weights: tuple[str, ...] = field(default_factory=tuple)

    @property
    def needs_decoder(self) -> bool:
        return any(name in self.computed for name in ("psnr", "ssim", "lpips"))


def _file(path: str | None, flag: str) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"{flag} {path!r}: no such file")
    return path


def plan_scoring(settings: ScoreSettings, allow_random_weights: bool) -> ScoringPlan:
    """Decide which scores are computed; a threshold on a score that would be null is refused."""
    computed, null_reasons, random_weights = [], {}, []
    backbone = _file(settings.lpips_backbone, "--lpips-backbone")
    if backbone is None:
        found = find_torchvision_vgg16()
        backbone = str(found) if found is not None else None
    heads = _file(settings.lpips_heads, "--lpips-heads")
    disc = _file(settings.disc_weights, "--disc-weights")
    for name in SCORE_NAMES:
        if name not in settings.scores:
            null_reasons[name] = "not requested (--scores)"
        elif name == "lpips" and (backbone is None or heads is None):
            missing = " and ".join(
                what for what, path in (("VGG16 backbone (--lpips-backbone, or vgg16-397923af.pth in torchvision's "
                                         "cache)", backbone), ("calibrated heads (--lpips-heads)", heads))
                if path is None)
            if allow_random_weights:
                computed.append(name)
                random_weights.append(name)
            else:
                null_reasons[name] = f"no LPIPS weights: missing the {missing}"
        elif name == "disc" and disc is None:
            if allow_random_weights:
                computed.append(name)
                random_weights.append(name)
            else:
                null_reasons[name] = "no discriminator weights (--disc-weights)"
        else:
            computed.append(name)
    for name in settings.thresholds:
        if name not in computed:
            raise ValueError(f"a threshold is set on {name}, which will not be computed: {null_reasons[name]}")
    plan = ScoringPlan(tuple(computed), null_reasons, settings.thresholds, backbone, heads, disc, tuple(random_weights))
    # Load every weight file once into meta-device modules: a file of the wrong layout stops the job
    # here, naming its keys, instead of killing every actor.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        ClipScorer(plan, torch.device("meta"), torch.float32)
    return plan


def _same_shape(source: Tensor, reconstruction: Tensor) -> None:
    if source.shape != reconstruction.shape:
        raise ValueError(f"source {tuple(source.shape)} and reconstruction {tuple(reconstruction.shape)} differ in shape")


def psnr(source: Tensor, reconstruction: Tensor) -> Tensor:
    """Per clip, in dB on [0, 1] RGB from the clip's mean squared error, capped at 100 dB."""
    _same_shape(source, reconstruction)
    mse = (source - reconstruction).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse)).clamp(max=PSNR_CAP_DB).nan_to_num(posinf=PSNR_CAP_DB)


def _gaussian_kernel(device: torch.device, dtype: torch.dtype) -> Tensor:
    coords = torch.arange(_SSIM_WINDOW, device=device, dtype=dtype) - (_SSIM_WINDOW - 1) / 2
    g = torch.exp(-(coords**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _gaussian_filter(x: Tensor, kernel: Tensor) -> Tensor:
    """The 11x11 Gaussian as two 1-D passes over the valid positions (22 instead of 121 MACs a pixel)."""
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return F.conv2d(x, kernel.view(1, 1, 1, -1))


def ssim(source: Tensor, reconstruction: Tensor) -> Tensor:
    """Per clip: SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
    data range 1, over the window's valid positions, per channel and frame, averaged.

    Inputs are (B, 3, T, H, W) in [0, 1].
    """
    _same_shape(source, reconstruction)
    b, c, t, h, w = source.shape
    if min(h, w) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {_SSIM_WINDOW}x{_SSIM_WINDOW}, got {h}x{w}")
    # Every (frame, channel) plane filtered on its own.
    x, y = (rearrange(v, "b c t h w -> (b t c) 1 h w").float() for v in (source, reconstruction))
    kernel = _gaussian_kernel(x.device, x.dtype)
    # One filtering pass over the five maps stacked along the batch.
    mu_x, mu_y, xx, yy, xy = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y]), kernel).chunk(5)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(b, -1).mean(dim=1)


def passes(scores: dict[str, float], thresholds: dict[str, tuple[str, float]]) -> bool:
    return all(scores[name] >= bound if op == ">=" else scores[name] <= bound
               for name, (op, bound) in thresholds.items())


class ClipScorer:
    """Holds the scoring networks (built once per actor) and scores batches of clips."""

    def __init__(self, plan: ScoringPlan, device: torch.device, dtype: torch.dtype, seed: int = 0) -> None:
        self.plan = plan
        self.device, self.dtype = device, dtype
        self.lpips: LPIPS | None = None
        self.discriminator: NLayerDiscriminator3D | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # identical random scorers in every actor, when random ones are allowed
            if "lpips" in plan.computed:
                self.lpips = LPIPS()
                if "lpips" not in plan.random_weights:
                    self.lpips.load_vgg16_backbone(plan.lpips_backbone).load_linear_heads(plan.lpips_heads)
                self.lpips = self.lpips.to(device=device, dtype=dtype).eval()
            if "disc" in plan.computed:
                if "disc" in plan.random_weights:
                    self.discriminator = NLayerDiscriminator3D(input_nc=3).eval().requires_grad_(False)
                else:
                    self.discriminator = load_discriminator(plan.disc_weights, input_nc=3)
                self.discriminator = self.discriminator.to(device=device, dtype=dtype)

    @torch.inference_mode()
    def score(self, frames: Tensor, reconstruction: Tensor | None) -> list[dict[str, float] | str]:
        """Per clip, its scores, or the reason it cannot be scored (a NaN or Inf anywhere).

        `frames` are uint8 (B, T, H, W, 3); `reconstruction` is (B, 3, T, H, W) in [-1, 1], or None
        when no requested score needs it.
        """
        source = frames.to(self.device).permute(0, 4, 1, 2, 3).float().div_(255.0)
        results: dict[str, Tensor] = {}
        problems: list[str | None] = [None] * frames.shape[0]
        if reconstruction is not None:
            finite = torch.isfinite(reconstruction).flatten(1).all(dim=1).tolist()
            problems = [None if ok else "the VAE's reconstruction holds NaN or Inf" for ok in finite]
            recon = reconstruction.to(self.device).float().nan_to_num(0.0).clamp(-1.0, 1.0).add_(1.0).div_(2.0)
            if "psnr" in self.plan.computed:
                results["psnr"] = psnr(source, recon)
            if "ssim" in self.plan.computed:
                results["ssim"] = ssim(source, recon)
            if self.lpips is not None:
                results["lpips"] = self.lpips(
                    (source * 2 - 1).to(self.dtype), (recon * 2 - 1).to(self.dtype), frames_per_batch=LPIPS_FRAMES_PER_CALL
                ).float()
        if self.discriminator is not None:
            logits = self.discriminator((source * 2 - 1).to(self.dtype)).float()
            results["disc"] = logits.flatten(1).mean(dim=1)
        per_clip: list[dict[str, float] | str] = []
        for index, problem in enumerate(problems):
            scores = {name: float(values[index]) for name, values in results.items()}
            bad = [name for name, value in scores.items() if not math.isfinite(value)]
            per_clip.append(problem or (f"non-finite score: {', '.join(bad)}" if bad else scores))
        return per_clip


def weights_checksums(plan: ScoringPlan) -> dict[str, str | None]:
    """sha256 of each scoring weight file in use, for the cache's identity."""
    files = {"lpips_backbone": plan.lpips_backbone, "lpips_heads": plan.lpips_heads, "disc_weights": plan.disc_weights}
    used = {"lpips_backbone": "lpips", "lpips_heads": "lpips", "disc_weights": "disc"}
    return {name: sha256_of_file(path) if path and used[name] in plan.computed
            and used[name] not in plan.random_weights and os.path.isfile(path) else None
            for name, path in files.items()}
