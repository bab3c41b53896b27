"""VAE and GAN training losses, with Open-Sora 2.0's definitions (`opensora/models/vae/losses.py`).

"Batch mean" below means a sum divided by the leading dim, as Open-Sora does: per frame for `VAELoss`'s
reconstruction terms (video is folded to (B*T, C, H, W) first), per sample for the KL term.
"""

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from vae.distributions import DiagonalGaussianDistribution

DISC_LOSS_TYPES = ("hinge", "vanilla", "wgan-gp")


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def wgan_gp_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The Wasserstein critic loss, halved as in Open-Sora. The penalty is separate: see `gradient_penalty`."""
    return 0.5 * (logits_fake.mean() - logits_real.mean())


def gradient_penalty(inputs: Tensor, logits: Tensor) -> Tensor:
    """Mean over the batch of (||d sum(logits) / d inputs||_2 - 1)^2, the norm taken per sample.

    `logits` must have been computed from `inputs` (which must require grad): real samples as in Open-Sora 1.x,
    or random interpolates of real and fake as in WGAN-GP. Differentiable (create_graph), so it can be trained on.
    """
    (grads,) = torch.autograd.grad(logits, inputs, torch.ones_like(logits), create_graph=True)
    return (grads.flatten(start_dim=1).norm(2, dim=1) - 1.0).square().mean()


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` before step `threshold`, `weight` from it on."""
    return value if global_step < threshold else weight


def l1(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).abs()


def l2(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).square()


def measure_perplexity(predicted_indices: Tensor, n_embed: int) -> tuple[Tensor, Tensor]:
    """Codebook perplexity exp(H(p)) of the index histogram p (n_embed when all codes are used equally),
    and the number of codes used."""
    probs = F.one_hot(predicted_indices.flatten(), n_embed).float().mean(dim=0)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    return perplexity, (probs > 0).sum()


def _batch_mean(x: Tensor) -> Tensor:
    return x.sum() / x.shape[0]


class VAELoss(nn.Module):
    """Reconstruction (L1 + weighted LPIPS) as a Laplace-like NLL over a learned scalar log-variance, plus KL.

    Per element: `(|x - x̂| + perceptual_loss_weight * lpips(frame)) / exp(logvar) + logvar`, each frame's LPIPS
    broadcast over its C*H*W elements, then batch-meaned over frames. Pass a loaded, frozen `LPIPS` when
    `perceptual_loss_weight > 0`; it is kept in eval mode (its heads' Dropout off) whatever `train()` says.
    `forward` returns `nll_loss`, `kl_loss` (already weighted), `recon_loss` and `perceptual_loss` (for logging,
    on the scale it enters the NLL: batch mean times C*H*W).
    """

    def __init__(
        self,
        lpips: nn.Module | None = None,
        logvar_init: float = 0.0,
        perceptual_loss_weight: float = 1.0,
        kl_loss_weight: float = 5e-4,
    ):
        super().__init__()
        if perceptual_loss_weight > 0 and lpips is None:
            raise ValueError("VAELoss with perceptual_loss_weight > 0 needs an LPIPS module with loaded weights")
        self.perceptual_loss_fn = lpips
        self.perceptual_loss_weight = perceptual_loss_weight
        self.kl_loss_weight = kl_loss_weight
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)))

    def train(self, mode: bool = True) -> "VAELoss":
        super().train(mode)
        if self.perceptual_loss_fn is not None:
            self.perceptual_loss_fn.eval()
        return self

    def forward(
        self, video: Tensor, recon_video: Tensor, posterior: DiagonalGaussianDistribution | None
    ) -> dict[str, Tensor]:
        """`video` and `recon_video` are (B,C,T,H,W) or (B,C,H,W) in [-1, 1]."""
        if video.shape != recon_video.shape:
            shapes = f"{tuple(video.shape)} vs {tuple(recon_video.shape)}"
            raise ValueError(f"video and reconstruction differ in shape: {shapes}")
        frames, recon_frames = (_frames(v) for v in (video, recon_video))
        recon_loss = l1(frames, recon_frames)
        nll = recon_loss
        perceptual_loss = recon_loss.new_zeros(())
        if self.perceptual_loss_weight > 0:
            per_frame = self.perceptual_loss_fn(frames, recon_frames).reshape(-1, 1, 1, 1).to(recon_loss.dtype)
            nll = nll + self.perceptual_loss_weight * per_frame
            perceptual_loss = _batch_mean(per_frame) * (frames.numel() // frames.shape[0])
        nll = nll / torch.exp(self.logvar) + self.logvar
        if posterior is None or not self.kl_loss_weight:
            kl_loss = recon_loss.new_zeros(())
        else:
            kl_loss = _batch_mean(posterior.kl()) * self.kl_loss_weight
        return {
            "nll_loss": _batch_mean(nll),
            "kl_loss": kl_loss,
            "recon_loss": _batch_mean(recon_loss),
            "perceptual_loss": perceptual_loss,
        }


def _frames(x: Tensor) -> Tensor:
    if x.ndim == 4:
        return x
    if x.ndim != 5:
        raise ValueError(f"expected (B,C,H,W) or (B,C,T,H,W), got shape {tuple(x.shape)}")
    return rearrange(x, "b c t h w -> (b t) c h w")


class GeneratorLoss(nn.Module):
    """Adversarial loss for the VAE: `-mean(logits_fake)`, scaled by the adaptive weight and, from `gen_start`,
    by `disc_factor`. `forward` returns `(weighted_gen_loss, gen_loss)`."""

    def __init__(self, gen_start: int = 2001, disc_factor: float = 1.0, disc_weight: float = 0.5):
        super().__init__()
        self.gen_start = gen_start
        self.disc_factor = disc_factor
        self.disc_weight = disc_weight

    def calculate_adaptive_weight(self, nll_loss: Tensor, gen_loss: Tensor, last_layer: Tensor) -> Tensor:
        """`disc_weight * clamp(||∇nll|| / (||∇gen|| + 1e-4), 0, 1e4)`, detached; gradients at the decoder's last
        layer (its weight tensor)."""
        (nll_grads,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
        (gen_grads,) = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)
        weight = torch.linalg.vector_norm(nll_grads) / (torch.linalg.vector_norm(gen_grads) + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.disc_weight

    def forward(
        self, logits_fake: Tensor, nll_loss: Tensor, last_layer: Tensor, global_step: int
    ) -> tuple[Tensor, Tensor]:
        gen_loss = -logits_fake.mean()
        factor = adopt_weight(self.disc_factor, global_step, threshold=self.gen_start)
        if not factor:
            # Open-Sora computes the adaptive weight here too, then multiplies it by zero.
            return gen_loss * 0.0, gen_loss
        if self.disc_factor is not None and self.disc_factor > 0:
            weight = self.calculate_adaptive_weight(nll_loss, gen_loss, last_layer)
        else:
            weight = gen_loss.new_ones(())
        return weight * factor * gen_loss, gen_loss


class DiscriminatorLoss(nn.Module):
    """`disc_factor` (0 before `disc_start`) times the hinge, vanilla or WGAN critic loss.

    Open-Sora 2.0's "wgan-gp" has no penalty term; set `gradient_penalty_weight` and pass `penalty_inputs` and
    the discriminator's `penalty_logits` on them to add `gradient_penalty_weight * gradient_penalty(...)`
    (also scaled by the factor). The default, 0, is Open-Sora's loss.
    """

    def __init__(
        self,
        disc_start: int = 2001,
        disc_factor: float = 1.0,
        disc_loss_type: str = "hinge",
        gradient_penalty_weight: float = 0.0,
    ):
        super().__init__()
        if disc_loss_type not in DISC_LOSS_TYPES:
            raise ValueError(f"unknown disc_loss_type {disc_loss_type!r}; expected one of {', '.join(DISC_LOSS_TYPES)}")
        self.disc_start = disc_start
        self.disc_factor = disc_factor
        self.disc_loss_type = disc_loss_type
        self.gradient_penalty_weight = gradient_penalty_weight
        self.loss_fn = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "wgan-gp": wgan_gp_loss}[disc_loss_type]

    def forward(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        global_step: int,
        penalty_inputs: Tensor | None = None,
        penalty_logits: Tensor | None = None,
    ) -> Tensor:
        if self.disc_factor is None or self.disc_factor <= 0:
            return real_logits.new_zeros(())
        loss = self.loss_fn(real_logits, fake_logits)
        factor = adopt_weight(self.disc_factor, global_step, threshold=self.disc_start)
        if factor and self.gradient_penalty_weight > 0:
            if penalty_inputs is None or penalty_logits is None:
                raise ValueError("gradient_penalty_weight > 0 needs penalty_inputs and penalty_logits")
            loss = loss + self.gradient_penalty_weight * gradient_penalty(penalty_inputs, penalty_logits)
        return factor * loss
