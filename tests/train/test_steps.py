"""One training step at a time, on tiny models and one fixed 32x32 clip, on CPU."""

import inspect
import math

import pytest
import torch
from torch import nn

from pipeline.errors import UsageError
from pipeline.train.ema import EMA
from pipeline.train.settings import TrainSettings
from pipeline.train.steps import NonFiniteLossError, VAETrainer
from vae.discriminator import NLayerDiscriminator3D
from vae.losses import DiscriminatorLoss, GeneratorLoss, VAELoss
from vae.presets import load_model

# The 2D VAE takes any number of frames; the causal 3D one takes 1 + 4k.
FRAMES = {"tiny": 8, "tiny-3d": 5}


def make_trainer(preset: str = "tiny", **overrides) -> VAETrainer:
    torch.manual_seed(0)
    settings = TrainSettings(**{"perceptual_loss_weight": 0.0, "vae_lr": 1e-3, "disc_lr": 1e-3, **overrides})
    discriminator = NLayerDiscriminator3D(input_nc=3, ndf=8, n_layers=3)
    return VAETrainer(load_model(preset), discriminator, settings)


def clip(preset: str = "tiny") -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    # Smooth content (a coarse random pattern upsampled), so a tiny VAE can learn it in a few steps.
    coarse = torch.rand(1, 3, FRAMES[preset], 4, 4, generator=generator) * 2 - 1
    return nn.functional.interpolate(coarse, size=(FRAMES[preset], 32, 32), mode="trilinear")


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def assert_identical(before: dict[str, torch.Tensor], module: nn.Module) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    changed = [name for name, value in after.items() if not torch.equal(value, before[name])]
    assert changed == []


@pytest.mark.parametrize("preset", ["tiny", "tiny-3d"])
def test_a_short_run_lowers_the_reconstruction_loss(preset):
    # Few steps at a high learning rate: this machine's CPU may be shared. The VAE trains on posterior samples,
    # so the curve is noisy; the seeds make it the same on every run.
    trainer = make_trainer(preset, disc_start=10**6, vae_lr=3e-3)
    real = clip(preset)
    losses = [trainer.step(real, global_step)["recon_loss"] for global_step in range(12)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) / 3 < 0.95 * losses[0]


def test_discriminator_loss_is_zero_before_disc_start_and_trains_from_it():
    trainer = make_trainer(disc_start=2)
    real = clip()
    for global_step in (0, 1):
        before = [p.detach().clone() for p in trainer.discriminator.parameters()]
        metrics = trainer.step(real, global_step)
        assert metrics["disc_loss"] == 0.0 and metrics["weighted_gen_loss"] == 0.0
        assert "disc_grad_norm" not in metrics
        assert all(torch.equal(b, p) for b, p in zip(before, trainer.discriminator.parameters()))
    before = [p.detach().clone() for p in trainer.discriminator.parameters()]
    metrics = trainer.step(real, 2)
    assert metrics["disc_loss"] > 0.0 and metrics["weighted_gen_loss"] != 0.0
    assert not all(torch.equal(b, p) for b, p in zip(before, trainer.discriminator.parameters()))


@pytest.mark.parametrize("preset", ["tiny", "tiny-3d"])
def test_adaptive_weight_matches_a_hand_computation(preset):
    trainer = make_trainer(preset, disc_start=0, disc_weight=0.5, disc_factor=2.0)
    # Named here rather than through the trainer: the decoder's output conv (wrapped by CausalConv3d in 3D).
    conv_out = trainer.vae.decoder.conv_out
    last_layer = conv_out.weight if preset == "tiny" else conv_out.conv.weight
    losses = trainer.generator_losses(clip(preset), global_step=0)
    (nll_grads,) = torch.autograd.grad(losses.nll_loss, last_layer, retain_graph=True)
    (gen_grads,) = torch.autograd.grad(losses.gen_loss, last_layer, retain_graph=True)
    ratio = nll_grads.flatten().norm() / (gen_grads.flatten().norm() + 1e-4)
    weight = 0.5 * min(max(ratio.item(), 0.0), 1e4)
    assert weight > 0
    expected = weight * 2.0 * losses.gen_loss.item()
    assert losses.weighted_gen_loss.item() == pytest.approx(expected, rel=1e-5)


def test_freeze_vae_trains_only_the_discriminator():
    trainer = make_trainer(freeze_vae=True, disc_start=0)
    vae_before, disc_before = snapshot(trainer.vae), snapshot(trainer.discriminator)
    real = clip()
    for global_step in range(3):
        metrics = trainer.step(real, global_step)
        assert "gen_loss" not in metrics and "vae_grad_norm" not in metrics
    assert trainer.vae_optimizer is None
    assert all(not p.requires_grad for p in trainer.vae.parameters())
    assert_identical(vae_before, trainer.vae)
    disc_after = trainer.discriminator.state_dict()
    assert any(not torch.equal(disc_after[name], value) for name, value in disc_before.items())


def test_ema_averages_parameters_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.75)
    assert ema.state_dict().keys() == model.state_dict().keys()
    before = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    model.train()(torch.randn(3, 2))  # moves BatchNorm's running stats and counter
    ema.update(model)
    averaged, current = ema.state_dict(), model.state_dict()
    for name, _ in model.named_parameters():
        torch.testing.assert_close(averaged[name], before[name] + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    for name, _ in model.named_buffers():
        assert torch.equal(averaged[name], current[name])
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


def test_trainer_ema_has_the_vae_keys_and_moves_toward_it():
    trainer = make_trainer(ema_decay=0.5, disc_start=10**6)
    initial = snapshot(trainer.vae)
    for global_step in range(2):
        trainer.step(clip(), global_step)
    averaged, current = trainer.ema.state_dict(), trainer.vae.state_dict()
    assert averaged.keys() == current.keys()
    for name, value in current.items():
        # Each parameter's average lies between where it started and where it is now, strictly inside overall.
        distance_now = (averaged[name] - value).norm()
        assert distance_now <= (initial[name] - value).norm()
    total = sum((averaged[n] - v).norm() for n, v in current.items())
    assert 0 < total < sum((initial[n] - v).norm() for n, v in current.items())


def test_a_nan_input_raises_and_updates_nothing():
    trainer = make_trainer(disc_start=0)
    trainer.step(clip(), 0)  # optimizer state exists, so a wrongly applied step would move the weights
    vae_before, disc_before = snapshot(trainer.vae), snapshot(trainer.discriminator)
    ema_before = trainer.ema.state_dict()
    real = clip()
    real[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="step 7: .*nll_loss=nan") as error:
        trainer.step(real, 7)
    assert error.value.step == 7
    assert_identical(vae_before, trainer.vae)
    assert_identical(disc_before, trainer.discriminator)  # BatchNorm statistics included
    assert all(torch.equal(v, trainer.ema.state_dict()[k]) for k, v in ema_before.items())


def test_settings_defaults_are_those_of_vae_losses():
    defaults = TrainSettings()

    def default(cls, name):
        return inspect.signature(cls.__init__).parameters[name].default

    assert defaults.perceptual_loss_weight == default(VAELoss, "perceptual_loss_weight")
    assert defaults.kl_loss_weight == default(VAELoss, "kl_loss_weight")
    assert defaults.logvar_init == default(VAELoss, "logvar_init")
    assert defaults.disc_start == default(DiscriminatorLoss, "disc_start") == default(GeneratorLoss, "gen_start")
    assert defaults.disc_weight == default(GeneratorLoss, "disc_weight")
    assert defaults.disc_factor == default(DiscriminatorLoss, "disc_factor")
    assert defaults.disc_loss_type == default(DiscriminatorLoss, "disc_loss_type")
    assert defaults.gradient_penalty_weight == default(DiscriminatorLoss, "gradient_penalty_weight")
    assert not defaults.freeze_vae


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kl_loss_weight": -1.0}, "kl_loss_weight"),
        ({"vae_lr": 0.0}, "vae_lr"),
        ({"disc_start": -1}, "disc_start"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
        ({"disc_loss_type": "non-saturating"}, "disc_loss_type"),
        ({"gradient_penalty_weight": 10.0}, "wgan-gp"),
        ({"adam_betas": (0.9, 1.0)}, "adam_betas"),
        ({"grad_clip_norm": 0.0}, "grad_clip_norm"),
        ({"ema_decay": 1.1}, "ema_decay"),
    ],
)
def test_bad_settings_are_usage_errors(fields, message):
    with pytest.raises(UsageError, match=message):
        TrainSettings(**fields)


def test_perceptual_loss_without_lpips_is_a_usage_error():
    with pytest.raises(UsageError, match="LPIPS"):
        VAETrainer(load_model("tiny"), NLayerDiscriminator3D(input_nc=3, ndf=8, n_layers=3), TrainSettings())


def test_wgan_gp_step_trains_the_discriminator_with_the_penalty():
    trainer = make_trainer(disc_start=0, disc_loss_type="wgan-gp", gradient_penalty_weight=10.0)
    metrics = trainer.step(clip(), 0)
    assert math.isfinite(metrics["disc_loss"]) and metrics["disc_grad_norm"] > 0
