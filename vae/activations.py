"""Activations for tensors that no one else holds, such as a GroupNorm's fresh output."""

import torch
from torch import Tensor
from torch.nn import functional as F


def inplace_silu(x: Tensor) -> Tensor:
    """SiLU written over `x` (no second activation-sized buffer), unless autograd needs `x` for the backward."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))
