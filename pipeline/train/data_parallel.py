"""Data parallelism by hand: gradients averaged over workers after backward, buffers broadcast from rank 0.

DDP wraps `forward`, but the trainer calls `encode_moments`/`decode` and runs the discriminator twice per
step, which DDP's hooks would not see as one forward. Averaging after backward gives DDP's result (one
all-reduce per network per step) whatever methods the step calls.
"""

import torch
import torch.distributed as dist
from torch import nn


class DataParallel:
    """No-ops in a single process; collective operations over the default process group otherwise."""

    def __init__(self) -> None:
        self.enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world_size = dist.get_world_size() if self.enabled else 1
        self.rank = dist.get_rank() if self.enabled else 0

    def _device(self, module: nn.Module) -> torch.device:
        return next(module.parameters()).device

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """True only when `flag` is True on every worker: a step that is bad anywhere is skipped everywhere."""
        if not self.enabled:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def average_gradients(self, module: nn.Module) -> None:
        if not self.enabled:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def broadcast_buffers(self, module: nn.Module) -> None:
        """BatchNorm statistics drift apart per worker; rank 0's are the ones a checkpoint keeps."""
        if not self.enabled:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def all_gather(self, value: object) -> list[object]:
        """Every worker's `value` (small picklable objects between our own workers, never shard data)."""
        if not self.enabled:
            return [value]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
