import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vae import DiagonalGaussianDistribution

SHAPES = {"image": (2, 3, 4, 5), "video": (2, 3, 2, 4, 5)}  # mean/logvar shape per layout


def moments(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return torch.cat([mean, logvar], dim=1)


def per_batch(shape, values) -> torch.Tensor:
    """A tensor of `shape` whose batch element i is filled with values[i]."""
    return torch.tensor(values, dtype=torch.float32).reshape(-1, *[1] * (len(shape) - 1)).expand(shape).clone()


@pytest.mark.parametrize("layout", SHAPES)
def test_parameters_split_and_clamp(layout):
    shape = SHAPES[layout]
    mean, logvar = torch.randn(shape), torch.randn(shape)
    logvar[0, 0] = 100.0
    logvar[1, 0] = -100.0
    dist = DiagonalGaussianDistribution(moments(mean, logvar))
    assert torch.equal(dist.mean, mean)
    assert dist.logvar[0, 0].eq(20.0).all() and dist.logvar[1, 0].eq(-30.0).all()
    assert torch.equal(dist.logvar[:, 1:], logvar[:, 1:])
    torch.testing.assert_close(dist.var, dist.logvar.exp())
    torch.testing.assert_close(dist.std, (0.5 * dist.logvar).exp())
    assert torch.equal(dist.mode(), mean)


@pytest.mark.parametrize("layout", SHAPES)
def test_kl_and_nll_hand_computed(layout):
    shape = SHAPES[layout]
    n = math.prod(shape[1:])  # elements per batch element
    # batch 0: N(1, 1); batch 1: N(0, 2)
    dist = DiagonalGaussianDistribution(moments(per_batch(shape, [1.0, 0.0]), per_batch(shape, [0.0, math.log(2.0)])))

    # KL(N(m, v) || N(0, 1)) = 0.5 * (m^2 + v - 1 - log v) per element
    expected_kl = [0.5 * n * (1 + 1 - 1 - 0), 0.5 * n * (0 + 2 - 1 - math.log(2.0))]
    torch.testing.assert_close(dist.kl(), torch.tensor(expected_kl))

    # KL(N(m1, v1) || N(m2, v2)) = 0.5 * ((m1-m2)^2/v2 + v1/v2 - 1 - log v1 + log v2); other = N(2, 4)
    other = DiagonalGaussianDistribution(moments(per_batch(shape, [2.0, 2.0]), per_batch(shape, [math.log(4.0)] * 2)))
    kl0 = 0.5 * (1 / 4 + 1 / 4 - 1 - 0 + math.log(4.0))
    kl1 = 0.5 * (4 / 4 + 2 / 4 - 1 - math.log(2.0) + math.log(4.0))
    torch.testing.assert_close(dist.kl(other), torch.tensor([n * kl0, n * kl1]))

    # NLL of x = m + 1: 0.5 * (log 2pi + log v + 1 / v) per element
    x = dist.mean + 1.0
    expected_nll = [0.5 * n * (math.log(2 * math.pi) + 0 + 1), 0.5 * n * (math.log(2 * math.pi) + math.log(2.0) + 0.5)]
    torch.testing.assert_close(dist.nll(x), torch.tensor(expected_nll))
    # over a subset of dims: the channel dim only leaves the other dims in place
    per_channel_sum = dist.nll(x, dims=[1])
    assert per_channel_sum.shape == (shape[0], *shape[2:])
    torch.testing.assert_close(per_channel_sum.flatten(1).sum(1), torch.tensor(expected_nll))


@pytest.mark.parametrize("layout", SHAPES)
def test_kl_and_nll_match_torch_distributions(layout):
    shape = SHAPES[layout]
    gen = torch.Generator().manual_seed(0)
    mean, logvar, mean2, logvar2, x = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(5))
    dist = DiagonalGaussianDistribution(moments(mean, logvar))
    other = DiagonalGaussianDistribution(moments(mean2, logvar2))
    p, q = Normal(mean, (0.5 * logvar).exp()), Normal(mean2, (0.5 * logvar2).exp())
    dims = list(range(1, len(shape)))
    torch.testing.assert_close(dist.kl(), kl_divergence(p, Normal(0.0, 1.0)).sum(dims))
    torch.testing.assert_close(dist.kl(other), kl_divergence(p, q).sum(dims))
    torch.testing.assert_close(dist.nll(x), -p.log_prob(x).sum(dims))


@pytest.mark.parametrize("layout", SHAPES)
def test_sample_is_reproducible_with_a_generator(layout):
    shape = SHAPES[layout]
    dist = DiagonalGaussianDistribution(moments(torch.randn(shape), torch.randn(shape)))
    a = dist.sample(torch.Generator().manual_seed(7))
    b = dist.sample(torch.Generator().manual_seed(7))
    c = dist.sample(torch.Generator().manual_seed(8))
    assert a.shape == shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, dist.mean + dist.std * noise)


def test_deterministic_has_no_variance():
    shape = SHAPES["video"]
    dist = DiagonalGaussianDistribution(moments(torch.randn(shape), torch.randn(shape)), deterministic=True)
    assert torch.equal(dist.sample(torch.Generator().manual_seed(0)), dist.mean)
    assert torch.equal(dist.std, torch.zeros(shape)) and torch.equal(dist.var, torch.zeros(shape))
    assert torch.equal(dist.kl(), torch.zeros(2))
    assert torch.equal(dist.nll(dist.mean), torch.zeros(2))


def test_bfloat16_sample_keeps_dtype():
    shape = SHAPES["image"]
    dist = DiagonalGaussianDistribution(moments(torch.randn(shape), torch.randn(shape)).bfloat16())
    assert dist.sample(torch.Generator().manual_seed(0)).dtype == torch.bfloat16
