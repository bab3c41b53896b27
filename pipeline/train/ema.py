"""`EMA`: an exponential moving average of a module's weights, saved in the module's own layout."""

import torch
from torch import Tensor, nn


class EMA:
    """Averages the module's floating-point parameters; copies its buffers (and integer parameters) as they
    are, since a running statistic or a counter is already its own kind of average.

    `state_dict()` has exactly the module's `state_dict()` keys, so it loads into the same architecture (and
    through `vae.checkpoint`'s strict loading) as the trained weights do.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self._averaged = {name for name, p in model.named_parameters() if p.is_floating_point()}
        self._state = {name: value.detach().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = decay * shadow + (1 - decay) * weight, for every averaged parameter; buffers copied."""
        current = model.state_dict()
        if current.keys() != self._state.keys():
            raise ValueError("EMA.update got a module whose state_dict keys differ from the one it was built from")
        for name, value in current.items():
            if name in self._averaged:
                self._state[name].lerp_(value.detach().to(self._state[name].dtype), 1.0 - self.decay)
            else:
                self._state[name].copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        """A copy of the averaged weights, keyed as the module's `state_dict()`."""
        return {name: value.clone() for name, value in self._state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore averaged weights saved by `state_dict()` (a resumed run continues the same average)."""
        if state.keys() != self._state.keys():
            raise ValueError("EMA state keys differ from the module's state_dict keys")
        for name, value in state.items():
            self._state[name].copy_(value)
