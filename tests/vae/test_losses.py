"""Losses against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch
from torch import nn

from vae.distributions import DiagonalGaussianDistribution
from vae.losses import (
    DiscriminatorLoss,
    GeneratorLoss,
    VAELoss,
    adopt_weight,
    gradient_penalty,
    hinge_d_loss,
    l1,
    l2,
    measure_perplexity,
    vanilla_d_loss,
    wgan_gp_loss,
)

REAL = torch.tensor([0.5, 2.0])
FAKE = torch.tensor([-0.5, 0.3])


def test_hinge_d_loss():
    # real: relu(1 - 0.5) = 0.5, relu(1 - 2) = 0 -> 0.25; fake: relu(1 - 0.5) = 0.5, relu(1.3) = 1.3 -> 0.9
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (0.25 + 0.9))


def test_vanilla_d_loss():
    # softplus(-0.5) = 0.474077, softplus(-2) = 0.126928, softplus(0.3) = 0.854355
    expected = 0.5 * ((0.474077 + 0.126928) / 2 + (0.474077 + 0.854355) / 2)
    assert vanilla_d_loss(REAL, FAKE).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.482359, abs=1e-6)


def test_wgan_gp_loss():
    # 0.5 * (mean(fake) - mean(real)) = 0.5 * (-0.1 - 1.25)
    assert wgan_gp_loss(REAL, FAKE).item() == pytest.approx(-0.675)


def test_gradient_penalty_on_tiny_cases():
    # D(x) = 3 x0 + 4 x1: the gradient is (3, 4) for every sample, norm 5, penalty (5 - 1)^2 = 16.
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], requires_grad=True)
    assert gradient_penalty(x, x @ torch.tensor([3.0, 4.0])).item() == pytest.approx(16.0)
    # D(x) = |x|^2: gradients 2x = (1.2, 1.6) and (0, 3), norms 2 and 3, penalties 1 and 4, mean 2.5.
    x = torch.tensor([[0.6, 0.8], [0.0, 1.5]], requires_grad=True)
    assert gradient_penalty(x, x.square().sum(dim=1)).item() == pytest.approx(2.5)
    # Differentiable in the discriminator's weights: D(x) = w . x with w = (3, 4); d/dw (|w| - 1)^2 = 2 (5 - 1) w / 5.
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    x = torch.ones(2, 2, requires_grad=True)
    gradient_penalty(x, x @ w).backward()
    torch.testing.assert_close(w.grad, torch.tensor([4.8, 6.4]))


def test_adopt_weight_thresholds():
    assert adopt_weight(1.5, global_step=9, threshold=10) == 0.0
    assert adopt_weight(1.5, global_step=10, threshold=10) == 1.5
    assert adopt_weight(1.5, global_step=0) == 1.5
    assert adopt_weight(1.5, global_step=3, threshold=5, value=0.25) == 0.25


def test_l1_l2_are_elementwise():
    x, y = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0])
    assert l1(x, y).tolist() == [0.5, 3.0]
    assert l2(x, y).tolist() == [0.25, 9.0]


def test_measure_perplexity():
    # p = (1/2, 1/4, 1/4, 0): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2, exp(H) = 2^1.5; three codes used.
    perplexity, used = measure_perplexity(torch.tensor([[0, 0], [1, 2]]), n_embed=4)
    assert perplexity.item() == pytest.approx(2**1.5, rel=1e-6)
    assert used.item() == 3
    perplexity, used = measure_perplexity(torch.arange(8), n_embed=8)
    assert perplexity.item() == pytest.approx(8.0, rel=1e-6) and used.item() == 8


class FixedPerceptual(nn.Module):
    """Stands in for LPIPS: 0.1 for the first frame, 0.3 for the second (whatever the pixels)."""

    def forward(self, x, y):
        assert x.shape == (2, 1, 1, 2)  # (B*T, C, H, W)
        return torch.tensor([0.1, 0.3])


def test_vae_loss_by_hand():
    # B=1, C=1, T=2, H=1, W=2. |x - x̂| per frame: (1, 2) and (0.5, 0.5); L1 batch mean = 4 / 2 frames = 2.
    video = torch.zeros(1, 1, 2, 1, 2)
    recon = torch.tensor([[1.0, 2.0], [0.5, -0.5]]).reshape(1, 1, 2, 1, 2)
    # posterior: mean 1, logvar 0 on one element -> KL = 0.5 * (1 + 1 - 1 - 0) = 0.5
    posterior = DiagonalGaussianDistribution(torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1, 1))
    loss = VAELoss(FixedPerceptual(), logvar_init=1.0, perceptual_loss_weight=0.5, kl_loss_weight=0.1)
    out = loss(video, recon, posterior)
    # elements + 0.5 * per-frame LPIPS: (1.05, 2.05), (0.65, 0.65), sum 4.4; NLL = (4.4 / e + 4 * 1) / 2 frames
    assert out["nll_loss"].item() == pytest.approx((4.4 / math.e + 4.0) / 2)
    assert out["recon_loss"].item() == pytest.approx(2.0)
    assert out["perceptual_loss"].item() == pytest.approx((0.1 + 0.3) / 2 * 2)  # batch mean x C*H*W
    assert out["kl_loss"].item() == pytest.approx(0.05)
    out["nll_loss"].backward()
    # d/dlogvar: -4.4 e^-1 / 2 + 4 / 2
    assert loss.logvar.grad.item() == pytest.approx(-4.4 / math.e / 2 + 2.0)


def test_vae_loss_without_perceptual_term():
    with pytest.raises(ValueError, match="LPIPS"):
        VAELoss(None, perceptual_loss_weight=1.0)
    loss = VAELoss(None, perceptual_loss_weight=0.0)
    out = loss(torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5), posterior=None)  # images work too
    assert out["nll_loss"].item() == pytest.approx(0.5 * 48 * 2 / 2)
    assert out["kl_loss"].item() == 0.0 and out["perceptual_loss"].item() == 0.0


def test_vae_loss_keeps_lpips_in_eval_mode():
    loss = VAELoss(FixedPerceptual().eval(), perceptual_loss_weight=1.0).train()
    assert loss.training and not loss.perceptual_loss_fn.training


def generator_case(b_second):
    """nll = w . (3, 4): gradient norm 5. logits_fake = w * (0, b): gen loss -mean, gradient norm b / 2."""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    nll = w @ torch.tensor([3.0, 4.0])
    logits_fake = w * torch.tensor([0.0, b_second])
    return w, nll, logits_fake


def test_generator_loss_adaptive_weight():
    w, nll, logits = generator_case(2.0)
    weighted, gen = GeneratorLoss(gen_start=0, disc_factor=2.0, disc_weight=0.5)(logits, nll, w, global_step=0)
    # gen = -mean(0, 2) = -1; weight = 0.5 * 5 / (1 + 1e-4); weighted = weight * disc_factor * gen
    assert gen.item() == pytest.approx(-1.0)
    assert weighted.item() == pytest.approx(0.5 * 5 / (1 + 1e-4) * 2.0 * -1.0)


def test_generator_loss_adaptive_weight_is_clamped():
    w, nll, logits = generator_case(2e-9)
    # 5 / (1e-9 + 1e-4) = 49999.5 -> clamped to 1e4, times disc_weight 0.5
    weight = GeneratorLoss(disc_weight=0.5).calculate_adaptive_weight(nll, -logits.mean(), w)
    assert weight.item() == pytest.approx(5000.0) and not weight.requires_grad


def test_generator_loss_starts_at_gen_start():
    w, nll, logits = generator_case(2.0)
    weighted, gen = GeneratorLoss(gen_start=100)(logits, nll, w, global_step=99)
    assert weighted.item() == 0.0 and gen.item() == pytest.approx(-1.0)
    weighted, _ = GeneratorLoss(gen_start=100, disc_weight=0.5)(logits, nll, w, global_step=100)
    assert weighted.item() == pytest.approx(0.5 * 5 / (1 + 1e-4) * -1.0)


def test_discriminator_loss_types_and_start():
    hinge = DiscriminatorLoss(disc_start=10, disc_factor=2.0, disc_loss_type="hinge")
    assert hinge(REAL, FAKE, global_step=9).item() == 0.0
    assert hinge(REAL, FAKE, global_step=10).item() == pytest.approx(2.0 * 0.575)
    vanilla = DiscriminatorLoss(disc_start=0, disc_loss_type="vanilla")
    assert vanilla(REAL, FAKE, global_step=0).item() == pytest.approx(0.482359, abs=1e-6)
    wgan = DiscriminatorLoss(disc_start=0, disc_loss_type="wgan-gp")
    assert wgan(REAL, FAKE, global_step=0).item() == pytest.approx(-0.675)
    assert DiscriminatorLoss(disc_factor=0.0)(REAL, FAKE, global_step=10**6).item() == 0.0
    with pytest.raises(ValueError, match="unknown disc_loss_type"):
        DiscriminatorLoss(disc_loss_type="non-saturating")


def test_discriminator_loss_with_gradient_penalty():
    loss = DiscriminatorLoss(disc_start=0, disc_loss_type="wgan-gp", gradient_penalty_weight=10.0)
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], requires_grad=True)
    logits = x @ torch.tensor([3.0, 4.0])  # penalty 16, as in the tiny case above
    assert loss(REAL, FAKE, 0, penalty_inputs=x, penalty_logits=logits).item() == pytest.approx(-0.675 + 160.0)
    with pytest.raises(ValueError, match="penalty_inputs"):
        loss(REAL, FAKE, 0)


def test_vae_loss_with_lpips_module():
    from vae.lpips import LPIPS

    torch.manual_seed(0)  # random LPIPS weights: this checks the plumbing (shapes, gradients), not the values
    loss = VAELoss(LPIPS(), perceptual_loss_weight=0.1)
    video = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    recon = (video + 0.1 * torch.randn_like(video)).requires_grad_(True)
    out = loss(video, recon, posterior=None)
    assert out["perceptual_loss"].item() != 0  # random heads may be negative
    out["nll_loss"].backward()
    assert recon.grad.abs().sum() > 0 and loss.logvar.grad is not None
