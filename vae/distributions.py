"""The diagonal Gaussian posterior of a KL autoencoder (Stable Diffusion / Open-Sora definition)."""

import math

import torch
from torch import Tensor


class DiagonalGaussianDistribution:
    """N(mean, exp(logvar)) from moments `cat([mean, logvar], dim=1)`, for (B,C,H,W) or (B,C,T,H,W).

    Reductions (`kl`, `nll`) sum over every non-batch dim and return one value per batch element.
    With `deterministic=True` the variance is zero: `sample()` is the mean and `kl`/`nll` are zero.
    """

    def __init__(self, parameters: Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def _sum(self, x: Tensor, dims: list[int] | None = None) -> Tensor:
        return x.sum(dim=list(range(1, x.ndim)) if dims is None else dims)

    def _zeros(self) -> Tensor:
        return self.mean.new_zeros(self.mean.shape[0])

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        # Draw on the generator's device so a CPU generator gives the same noise for any model device.
        device = self.mean.device if generator is None else generator.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> Tensor:
        """KL(self || other), with `other` the standard normal when None."""
        if self.deterministic:
            return self._zeros()
        if other is None:
            return 0.5 * self._sum(self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return 0.5 * self._sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        )

    def nll(self, sample: Tensor, dims: list[int] | None = None) -> Tensor:
        """Negative log-likelihood of `sample`, summed over `dims` (all non-batch dims when None)."""
        if self.deterministic:
            return self._zeros()
        return 0.5 * self._sum(math.log(2.0 * math.pi) + self.logvar + (sample - self.mean).pow(2) / self.var, dims)
