"""`VAETrainer`: one training step of a VAE and its 3D discriminator, with the losses of `vae.losses`.

Each step computes every loss before it applies any update, so a NaN/Inf anywhere (loss or gradient norm)
raises `NonFiniteLossError` with the weights as they were. The discriminator judges the reconstructions made
before this step's VAE update, as in Open-Sora.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from pipeline.errors import UsageError
from pipeline.train.data_parallel import DataParallel
from pipeline.train.degrade import mix_fakes
from pipeline.train.ema import EMA
from pipeline.train.settings import TrainSettings
from vae.distributions import DiagonalGaussianDistribution
from vae.losses import DiscriminatorLoss, GeneratorLoss, VAELoss


class NonFiniteLossError(RuntimeError):
    """A loss or gradient norm of step `step` was NaN or Inf; no weight was updated."""

    def __init__(self, step: int, values: dict[str, float]):
        self.step = step
        self.values = values
        named = ", ".join(f"{name}={value}" for name, value in values.items())
        super().__init__(f"step {step}: non-finite loss or gradient norm ({named}); no update was applied")


@dataclass
class GeneratorLosses:
    """The VAE side of one step, still attached to the graph (except when the VAE is frozen)."""

    reconstruction: Tensor
    nll_loss: Tensor
    kl_loss: Tensor
    recon_loss: Tensor
    perceptual_loss: Tensor
    gen_loss: Tensor | None  # -mean(logits_fake); None when the VAE is frozen (it has nothing to learn from it)
    weighted_gen_loss: Tensor | None  # adaptive weight * disc_factor (0 before disc_start) * gen_loss

    @property
    def total(self) -> Tensor:
        total = self.nll_loss + self.kl_loss
        return total if self.weighted_gen_loss is None else total + self.weighted_gen_loss


def decoder_last_layer(vae: nn.Module) -> Tensor:
    """The weight of the decoder's output convolution, where the adaptive weight compares gradients.

    `decoder.conv_out` is an `nn.Conv2d` in `AutoEncoder2D` and a `CausalConv3d` wrapping one in `AutoEncoder3D`.
    """
    weights = [p for name, p in vae.decoder.conv_out.named_parameters() if name.endswith("weight")]
    if len(weights) != 1:
        raise ValueError(f"expected one weight in the decoder's conv_out, found {len(weights)}")
    return weights[0]


class VAETrainer:
    """Holds the VAE, the discriminator, their AdamW optimizers with linear warm-up, the losses and the VAE's EMA.

    `vae` is an `AutoEncoder2D` (video is folded into frames by its own encode/decode) or an `AutoEncoder3D`,
    e.g. from `vae.presets.load_model`; the trainer puts both networks in train mode and on `vae`'s device.
    `lpips` (with loaded weights) is needed when `settings.perceptual_loss_weight > 0`. On CUDA the forward
    passes run under bf16 autocast; elsewhere in fp32. With `degrade_fakes` P > 0 each fake the discriminator
    sees is, with probability P, a degraded copy of its real clip (drawn from `fake_generator`, whose state
    a checkpoint keeps). `data_parallel` averages gradients over workers; by default there is one.
    """

    def __init__(
        self, vae: nn.Module, discriminator: nn.Module, settings: TrainSettings, lpips: nn.Module | None = None,
        degrade_fakes: float = 0.0, data_parallel: DataParallel | None = None, seed: int = 0,
    ):
        if not 0.0 <= degrade_fakes <= 1.0:
            raise UsageError(f"--degrade-fakes must be a probability in [0, 1], got {degrade_fakes}")
        if settings.perceptual_loss_weight > 0 and lpips is None:
            raise UsageError("perceptual_loss_weight > 0 needs LPIPS weights: pass lpips, or set the weight to 0")
        self.settings = settings
        self.vae = vae
        self.device = next(vae.parameters()).device
        self.discriminator = discriminator.to(self.device).train().requires_grad_(True)
        # The frozen VAE keeps no optimizer at all, so nothing can move its weights.
        self.vae.train(not settings.freeze_vae).requires_grad_(not settings.freeze_vae)
        self.last_layer = decoder_last_layer(vae)
        self.vae_loss = VAELoss(
            lpips,
            logvar_init=settings.logvar_init,
            perceptual_loss_weight=settings.perceptual_loss_weight,
            kl_loss_weight=settings.kl_loss_weight,
        ).to(self.device)
        # Open-Sora optimizes the VAE only; its loss's logvar stays at logvar_init.
        self.vae_loss.requires_grad_(False)
        self.gen_loss = GeneratorLoss(
            gen_start=settings.disc_start, disc_factor=settings.disc_factor, disc_weight=settings.disc_weight
        )
        self.disc_loss = DiscriminatorLoss(
            disc_start=settings.disc_start,
            disc_factor=settings.disc_factor,
            disc_loss_type=settings.disc_loss_type,
            gradient_penalty_weight=settings.gradient_penalty_weight,
        )
        self.vae_optimizer: AdamW | None = None
        self.vae_scheduler: LambdaLR | None = None
        if not settings.freeze_vae:
            self.vae_optimizer = self._adamw(vae, settings.vae_lr)
            self.vae_scheduler = LambdaLR(self.vae_optimizer, _linear_warmup(settings.warmup_steps))
        self.disc_optimizer = self._adamw(self.discriminator, settings.disc_lr)
        self.disc_scheduler = LambdaLR(self.disc_optimizer, _linear_warmup(settings.warmup_steps))
        self.ema = EMA(vae, settings.ema_decay)
        self.degrade_fakes = degrade_fakes
        self.fake_generator = torch.Generator().manual_seed(seed)
        self.data_parallel = data_parallel or DataParallel()

    def _adamw(self, model: nn.Module, lr: float) -> AdamW:
        s = self.settings
        return AdamW(model.parameters(), lr=lr, betas=s.adam_betas, eps=s.adam_eps, weight_decay=s.weight_decay)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def reconstruct(self, real: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution]:
        """The VAE's reconstruction of `real` and its posterior. A trained VAE decodes a posterior sample, as in
        Open-Sora; a frozen one decodes as it encodes for the cache (`config.sample`), which is what its
        discriminator will be asked to score."""
        posterior = DiagonalGaussianDistribution(self.vae.encode_moments(real))
        sample = self.vae.config.sample or not self.settings.freeze_vae
        latent = posterior.sample() if sample else posterior.mode()
        return self.vae.decode(self.vae.latent_normalisation.apply(latent)), posterior

    def generator_losses(self, real: Tensor, global_step: int) -> GeneratorLosses:
        """The VAE's losses on `real` (B,3,T,H,W) in [-1, 1]; raises `NonFiniteLossError` before the
        discriminator sees a non-finite reconstruction (its BatchNorm statistics would keep the NaN)."""
        frozen = self.settings.freeze_vae
        with self._autocast(), torch.no_grad() if frozen else contextlib.nullcontext():
            reconstruction, posterior = self.reconstruct(real)
            terms = self.vae_loss(real, reconstruction, posterior)
        _check_finite(global_step, terms)
        if frozen:
            return GeneratorLosses(reconstruction, **terms, gen_loss=None, weighted_gen_loss=None)
        if global_step < self.settings.disc_start:
            # The adversarial term is weighted 0 until disc_start: skip the discriminator's forward pass.
            zero = torch.zeros((), device=real.device)
            return GeneratorLosses(reconstruction, **terms, gen_loss=zero, weighted_gen_loss=zero)
        with self._autocast(), _without_grads(self.discriminator):
            logits_fake = self.discriminator(reconstruction)
            weighted_gen_loss, gen_loss = self.gen_loss(logits_fake, terms["nll_loss"], self.last_layer, global_step)
        _check_finite(global_step, {"gen_loss": gen_loss, "weighted_gen_loss": weighted_gen_loss})
        return GeneratorLosses(reconstruction, **terms, gen_loss=gen_loss, weighted_gen_loss=weighted_gen_loss)

    def discriminator_loss(self, real: Tensor, fake: Tensor, global_step: int) -> Tensor:
        """`DiscriminatorLoss` on real and (detached) fake clips: zero before `disc_start`."""
        fake = fake.detach()
        if global_step < self.settings.disc_start:
            return torch.zeros((), device=real.device)  # zero until disc_start: no forward pass needed
        with self._autocast():
            logits_real = self.discriminator(real)
            logits_fake = self.discriminator(fake)
            penalty_inputs = penalty_logits = None
            if self.settings.gradient_penalty_weight > 0 and global_step >= self.settings.disc_start:
                alpha = torch.rand(real.shape[0], *[1] * (real.ndim - 1), device=real.device, dtype=real.dtype)
                penalty_inputs = (alpha * real + (1 - alpha) * fake.to(real.dtype)).requires_grad_(True)
                penalty_logits = self.discriminator(penalty_inputs)
            return self.disc_loss(logits_real, logits_fake, global_step, penalty_inputs, penalty_logits)

    def step(self, real: Tensor, global_step: int) -> dict[str, float]:
        """One generator update (unless the VAE is frozen) and one discriminator update (from `disc_start`;
        before it the loss is zero and the discriminator's weights are not updated) on `real` (B,3,T,H,W) in
        [-1, 1], with `global_step` counting steps from 0.

        Returns the losses and gradient norms as floats. Raises `NonFiniteLossError`, having updated nothing,
        when a loss or gradient norm is NaN or Inf.
        """
        real = real.to(self.device)
        self.data_parallel.broadcast_buffers(self.discriminator)
        failure: NonFiniteLossError | None = None
        try:
            generator = self.generator_losses(real, global_step)
            fake = generator.reconstruction
            if self.degrade_fakes > 0:
                fake, _ = mix_fakes(real, fake, self.degrade_fakes, self.fake_generator)
            disc_loss = self.discriminator_loss(real, fake, global_step)
            _check_finite(global_step, {"disc_loss": disc_loss})
        except NonFiniteLossError as error:
            failure = error
        # Every worker skips a step that is bad on any one of them, else the gradient all-reduce would hang.
        if not self.data_parallel.all_true(failure is None, self.device):
            raise failure or NonFiniteLossError(global_step, {"loss_on_another_worker": float("nan")})
        train_vae = self.vae_optimizer is not None
        train_disc = global_step >= self.settings.disc_start
        norms: dict[str, Tensor] = {}
        if train_vae:
            self.vae_optimizer.zero_grad(set_to_none=True)
            generator.total.backward()
            self.data_parallel.average_gradients(self.vae)
            norms["vae_grad_norm"] = nn.utils.clip_grad_norm_(self.vae.parameters(), self.settings.grad_clip_norm)
        if train_disc:
            self.disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            self.data_parallel.average_gradients(self.discriminator)
            norms["disc_grad_norm"] = nn.utils.clip_grad_norm_(
                self.discriminator.parameters(), self.settings.grad_clip_norm
            )
        _check_finite(global_step, norms)
        if train_vae:
            self.vae_optimizer.step()
            self.vae_scheduler.step()
            self.ema.update(self.vae)
        if train_disc:
            self.disc_optimizer.step()
            self.disc_scheduler.step()
        metrics = {
            "loss": generator.total,
            "nll_loss": generator.nll_loss,
            "kl_loss": generator.kl_loss,
            "recon_loss": generator.recon_loss,
            "perceptual_loss": generator.perceptual_loss,
            "disc_loss": disc_loss,
            **norms,
        }
        if generator.gen_loss is not None:
            metrics.update(gen_loss=generator.gen_loss, weighted_gen_loss=generator.weighted_gen_loss)
        return {name: float(value.detach()) for name, value in metrics.items()}


def _linear_warmup(warmup_steps: int) -> Callable[[int], float]:
    """The LR factor after `updates` updates: (updates + 1) / warmup_steps, reaching 1 at the last warm-up update."""
    return lambda updates: 1.0 if warmup_steps == 0 else min(1.0, (updates + 1) / warmup_steps)


@contextlib.contextmanager
def _without_grads(module: nn.Module) -> Iterator[None]:
    """The generator's adversarial loss flows through the discriminator without filling its gradients."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _check_finite(step: int, values: dict[str, Tensor]) -> None:
    if not all(torch.isfinite(v).all() for v in values.values()):
        raise NonFiniteLossError(step, {name: float(v.detach()) for name, v in values.items()})
