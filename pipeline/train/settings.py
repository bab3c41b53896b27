"""`TrainSettings`: every loss weight, optimizer setting and schedule of VAE / discriminator training."""

import math
from dataclasses import dataclass

from pipeline.errors import UsageError
from vae.losses import DISC_LOSS_TYPES


@dataclass(frozen=True)
class TrainSettings:
    """The loss weights, `disc_start` and hinge are the defaults of Open-Sora's loss classes (`vae.losses`);
    Open-Sora's own VAE training configs override some of them (perceptual 0.1, KL 1e-6, and for its 2.0 VAE
    WGAN-GP with disc_weight 0.05 from step 0): pass those as flags to train as it does. The learning rate
    (1e-5) and clipping (max norm 1.0) are those configs' too; AdamW keeps PyTorch's betas, no weight decay,
    no warm-up. Open-Sora keeps no EMA of its VAE; ours (decay 0.99) is saved beside the raw weights."""

    # VAELoss: (L1 + perceptual_loss_weight * LPIPS) / exp(logvar) + logvar, plus kl_loss_weight * KL.
    perceptual_loss_weight: float = 1.0
    kl_loss_weight: float = 5e-4
    logvar_init: float = 0.0
    # The adversarial terms, both zero before disc_start (the generator's term starts at the same step).
    disc_start: int = 2001
    disc_factor: float = 1.0
    disc_weight: float = 0.5
    disc_loss_type: str = "hinge"
    # Only with "wgan-gp": the penalty on random interpolates of real and reconstructed clips.
    gradient_penalty_weight: float = 0.0
    # AdamW, one per network, each with a linear warm-up over its own first `warmup_steps` updates.
    vae_lr: float = 1e-5
    disc_lr: float = 1e-5
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # Max total gradient norm per network per update; math.inf measures the norm without clipping.
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.99
    # Train only the discriminator, against the reconstructions of a VAE whose weights stay as loaded.
    freeze_vae: bool = False

    def __post_init__(self) -> None:
        for name in ("perceptual_loss_weight", "kl_loss_weight", "disc_factor", "disc_weight", "weight_decay",
                     "gradient_penalty_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("vae_lr", "disc_lr", "adam_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a finite number > 0, got {value}")
        if not math.isfinite(self.logvar_init):
            raise UsageError(f"logvar_init must be finite, got {self.logvar_init}")
        for name in ("disc_start", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{name} must be an integer >= 0, got {value!r}")
        if self.disc_loss_type not in DISC_LOSS_TYPES:
            raise UsageError(f"disc_loss_type must be one of {', '.join(DISC_LOSS_TYPES)}, got {self.disc_loss_type!r}")
        if self.gradient_penalty_weight > 0 and self.disc_loss_type != "wgan-gp":
            raise UsageError(
                f"gradient_penalty_weight > 0 needs disc_loss_type 'wgan-gp', got {self.disc_loss_type!r}"
            )
        if len(self.adam_betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.adam_betas):
            raise UsageError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not self.grad_clip_norm > 0:  # also rejects NaN; inf is allowed
            raise UsageError(f"grad_clip_norm must be > 0 (inf for no clipping), got {self.grad_clip_norm}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise UsageError(f"ema_decay must be in [0, 1], got {self.ema_decay}")


@dataclass(frozen=True)
class TrainJob:
    """Everything a training worker needs besides the loss settings: data, models, schedule and output."""

    data: tuple[str, ...]  # shard URLs, split between workers
    val_data: tuple[str, ...]  # held-out shards (whole videos never trained on)
    out: str
    vae: str
    weights: str | None = None
    disc_weights: str | None = None  # start the discriminator from these (its size read from the file)
    disc_ndf: int = 64
    disc_layers: int = 5
    lpips_backbone: str | None = None
    lpips_heads: str | None = None
    num_frames: int = 16
    frame_stride: int = 1
    clips_per_video: int = 4
    resolution: int = 256
    crop: int = 256
    image_ratio: float = 0.0
    batch_size: int = 1
    max_steps: int = 1000
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    val_every: int = 500
    val_clips: int = 8
    log_every: int = 10
    degrade_fakes: float = 0.0
    max_bad_steps: int = 10
    seed: int = 0
    resume: bool = False
    run_id: str = ""
    threads_per_worker: int = 1
    use_gpu: bool = False
    settings: TrainSettings = TrainSettings()

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_stride", "clips_per_video", "resolution", "crop", "batch_size",
                     "max_steps", "checkpoint_every", "keep_checkpoints", "val_every", "val_clips", "log_every",
                     "threads_per_worker", "disc_ndf", "disc_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_bad_steps < 0:
            raise UsageError(f"--max-bad-steps must be >= 0, got {self.max_bad_steps}")
        if self.crop > self.resolution:
            raise UsageError(f"--crop {self.crop} is larger than --resolution {self.resolution}")
        if not 0.0 <= self.image_ratio <= 1.0:
            raise UsageError(f"--image-ratio must be in [0, 1], got {self.image_ratio}")
        if not 0.0 <= self.degrade_fakes <= 1.0:
            raise UsageError(f"--degrade-fakes must be in [0, 1], got {self.degrade_fakes}")
        if self.settings.freeze_vae and self.weights is None:
            raise UsageError("--freeze-vae trains a discriminator for a VAE's reconstructions: pass its --weights")
