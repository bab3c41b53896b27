"""Small JPEG contact strips of a clip and its reconstruction, for reports and eyeballing a cache."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

PREVIEW_FRAMES = 4
PREVIEW_HEIGHT = 96
PREVIEW_QUALITY = 85


def preview_jpeg(frames: torch.Tensor, reconstruction: torch.Tensor) -> bytes:
    """One JPEG: the top row shows `PREVIEW_FRAMES` source frames spread over the clip, the bottom
    row the same frames as the VAE reconstructs them, each scaled to `PREVIEW_HEIGHT` pixels.

    `frames` is uint8 (T, H, W, 3); `reconstruction` is (3, T, H, W) in [-1, 1].
    """
    t, h, w, _ = frames.shape
    picks = torch.linspace(0, t - 1, min(PREVIEW_FRAMES, t)).round().long()
    source = rearrange(frames[picks], "n h w c -> n c h w").float()
    recon = rearrange(reconstruction[:, picks], "c n h w -> n c h w").float().clamp(-1, 1).add(1).mul(127.5)
    width = max(1, round(w * PREVIEW_HEIGHT / h))
    rows = [F.interpolate(row, size=(PREVIEW_HEIGHT, width), mode="bilinear", antialias=True, align_corners=False)
            for row in (source, recon)]
    # Two rows (source, reconstruction) of n frames side by side.
    grid = torch.stack(rows).round().clamp(0, 255).byte()
    image = rearrange(grid, "row n c h w -> (row h) (n w) c").numpy()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()
