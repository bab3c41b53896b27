"""Batches for one training worker: clips of a kind drawn from its `ClipSource`, images mixed in by ratio."""

from dataclasses import asdict, dataclass

import torch

from pipeline.train.clip_source import KINDS, ClipSource, SourceCursor, seeded_rng


@dataclass
class TrainBatch:
    kind: str
    keys: list[str]
    frames: torch.Tensor  # uint8 (B, T, H, W, 3)

    def model_input(self, device: torch.device) -> torch.Tensor:
        """(B, 3, T, H, W) float32 in [-1, 1], as the VAE takes clips."""
        clips = self.frames.to(device).permute(0, 4, 1, 2, 3).float()
        return clips.div_(127.5).sub_(1.0)


class BatchStream:
    """`batch_size` consecutive clips per step. A step is an image batch with probability `image_ratio`,
    decided by (seed, step) alone, so every worker takes the same kind at the same step and a resumed run
    takes the kinds it would have. `cursors()` is the data position after the last batch handed out."""

    def __init__(self, sources: dict[str, ClipSource], batch_size: int, image_ratio: float, seed: int):
        if not 0.0 <= image_ratio <= 1.0:
            raise ValueError(f"image ratio must be in [0, 1], got {image_ratio}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.sources, self.batch_size, self.image_ratio, self.seed = sources, batch_size, image_ratio, seed
        self._cursors = {kind: source.cursor for kind, source in sources.items()}
        self._iterators = {kind: iter(source) for kind, source in sources.items()}

    def kind_at(self, step: int) -> str:
        if self.image_ratio == 0.0:
            return "video"
        return "image" if seeded_rng(self.seed, step, "kind").random() < self.image_ratio else "video"

    def next_batch(self, step: int) -> TrainBatch:
        kind = self.kind_at(step)
        keys, frames = [], []
        for _ in range(self.batch_size):
            clip, self._cursors[kind] = next(self._iterators[kind])
            keys.append(clip.key)
            frames.append(clip.frames)
        return TrainBatch(kind, keys, torch.stack(frames))

    def cursors(self) -> dict[str, dict[str, int]]:
        return {kind: asdict(cursor) for kind, cursor in self._cursors.items()}


def cursors_from(saved: dict[str, dict[str, int]] | None) -> dict[str, SourceCursor]:
    saved = saved or {}
    return {kind: SourceCursor(**saved[kind]) if kind in saved else SourceCursor() for kind in KINDS}
