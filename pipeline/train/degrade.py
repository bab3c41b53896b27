"""Degraded copies of real clips, used as extra "fakes" for the 3D discriminator (`--degrade-fakes P`).

A discriminator that only ever sees VAE reconstructions as fakes learns the VAE's artifacts, not what bad
footage looks like in general. With probability P a fake is instead the real clip damaged in one common way:
blur, heavy codec compression, noise, dropped (repeated) frames or a downscale-upscale round trip.

Clips are float (3, T, H, W) in [-1, 1]. Every random choice is drawn from the `torch.Generator` passed in (a
CPU one, so draws do not depend on the clip's device), never from torch's global RNG or numpy, and the codec
runs single-threaded, so the same generator state gives the same fakes.
"""

import io
import math
from collections.abc import Callable

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

DEGRADATIONS: tuple[str, ...] = ("blur", "compression", "noise", "frame_drop", "downscale")
RECONSTRUCTION = "reconstruction"

BLUR_SIGMA = (1.0, 3.0)  # pixels
H264_CRF = (40, 51)  # inclusive; 51 is libx264's worst quality
JPEG_QUALITY = (5, 20)  # inclusive
NOISE_STD = (0.05, 0.2)  # in [-1, 1] units
DOWNSCALE_FACTOR = (2.0, 4.0)
_FPS = 25  # only sets timestamps; x264's rate control with CRF barely depends on it


def _check_clip(clip: Tensor) -> None:
    if clip.dim() != 4 or clip.shape[0] != 3:
        raise ValueError(f"expected a clip of shape (3, T, H, W), got {tuple(clip.shape)}")
    if not clip.is_floating_point():
        raise ValueError(f"expected a float clip, got {clip.dtype}")


def _check_generator(generator: torch.Generator) -> None:
    if generator.device.type != "cpu":
        raise ValueError(f"expected a CPU torch.Generator, got one on {generator.device}")


def _check_probability(probability: float) -> None:
    # Written so NaN fails too.
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An int in [low, high], both inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _finish(degraded: Tensor, clip: Tensor) -> Tensor:
    return degraded.clamp(-1.0, 1.0).to(device=clip.device, dtype=clip.dtype)


def blur(clip: Tensor, generator: torch.Generator) -> Tensor:
    """Gaussian blur of every frame, one random sigma in `BLUR_SIGMA` for the whole clip."""
    _check_clip(clip)
    sigma = _uniform(generator, *BLUR_SIGMA)
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=clip.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    _, frames, height, width = clip.shape
    # Frames and channels become one batch of single-channel images; two 1-D passes instead of one 2-D kernel.
    images = clip.float().reshape(3 * frames, 1, height, width)
    # Replicate, not reflect: reflect needs the pad to be smaller than the frame, which small frames are not.
    images = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    images = F.conv2d(images, kernel.view(1, 1, 1, -1))
    images = F.conv2d(images, kernel.view(1, 1, -1, 1))
    return _finish(images.reshape(3, frames, height, width), clip)


def add_noise(clip: Tensor, generator: torch.Generator) -> Tensor:
    """Additive Gaussian noise, one random std in `NOISE_STD` for the whole clip, clamped to [-1, 1]."""
    _check_clip(clip)
    std = _uniform(generator, *NOISE_STD)
    noise = torch.randn(clip.shape, generator=generator, dtype=torch.float32).to(clip.device)
    return _finish(clip.float() + std * noise, clip)


def drop_frames(clip: Tensor, generator: torch.Generator) -> Tensor:
    """Replaces 1 to T // 2 random frames (never the first) by their predecessor, as a stuttering stream does.

    Consecutive drops chain, so a run of dropped frames freezes on the last frame kept. Needs T >= 2.
    """
    _check_clip(clip)
    frames = clip.shape[1]
    if frames < 2:
        raise ValueError("frame drops need a clip of at least 2 frames")
    count = _randint(generator, 1, frames // 2)
    dropped = (torch.randperm(frames - 1, generator=generator)[:count] + 1).sort().values.tolist()
    degraded = clip.clone()
    for index in dropped:
        degraded[:, index] = degraded[:, index - 1]
    return degraded


def downscale(clip: Tensor, generator: torch.Generator) -> Tensor:
    """Bilinear downscale of every frame by a random factor in `DOWNSCALE_FACTOR`, then back up to its size."""
    _check_clip(clip)
    factor = _uniform(generator, *DOWNSCALE_FACTOR)
    _, _, height, width = clip.shape
    small = (max(1, round(height / factor)), max(1, round(width / factor)))
    frames = clip.float().transpose(0, 1)  # (T, 3, H, W): frames as the batch
    # Antialiased on the way down, as a real resizer is; plain bilinear on the way up leaves the softness.
    frames = F.interpolate(frames, size=small, mode="bilinear", align_corners=False, antialias=True)
    frames = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False)
    return _finish(frames.transpose(0, 1), clip)


def _to_uint8(clip: Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 on the CPU."""
    pixels = ((clip.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().numpy()


def _from_uint8(frames: np.ndarray, clip: Tensor) -> Tensor:
    # np.array copies: the decoders' arrays may be read-only, which torch.from_numpy warns about.
    pixels = torch.from_numpy(np.array(frames)).permute(3, 0, 1, 2).float()
    return _finish(pixels / 127.5 - 1.0, clip)


def _h264_roundtrip(frames: np.ndarray, crf: int) -> np.ndarray:
    """Encodes (T, H, W, 3) uint8 frames (H and W even) into an in-memory H.264 mp4 and decodes them back."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        # One thread: x264's output is then the same on every run and machine for the same input.
        stream = container.add_stream(
            "libx264", rate=_FPS, options={"crf": str(crf), "preset": "ultrafast", "threads": "1"}
        )
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush the frames x264 still holds
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        container.streams.video[0].thread_type = "NONE"
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not decoded:
        return np.zeros((0, *frames.shape[1:]), dtype=np.uint8)
    return np.stack(decoded)


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def compress(clip: Tensor, generator: torch.Generator) -> Tensor:
    """Heavy lossy compression with a real codec: H.264 (libx264, CRF in `H264_CRF`) for a video, or JPEG
    (quality in `JPEG_QUALITY`) for a single frame, which is what a still image would have gone through.

    Raises RuntimeError if the codec gives back a different number or size of frames.
    """
    _check_clip(clip)
    frames = _to_uint8(clip)
    count, height, width, _ = frames.shape
    if count == 1:
        decoded = _jpeg_roundtrip(frames[0], _randint(generator, *JPEG_QUALITY))[None]
    else:
        crf = _randint(generator, *H264_CRF)
        # yuv420p needs even sides: pad by repeating the last row/column, and crop it off again after decoding.
        padded = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        decoded = _h264_roundtrip(padded, crf)
        if decoded.shape == padded.shape:
            decoded = decoded[:, :height, :width]
    if decoded.shape != frames.shape:
        raise RuntimeError(f"the codec turned frames of shape {frames.shape} into {decoded.shape}")
    return _from_uint8(decoded, clip)


_DEGRADE: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "blur": blur,
    "compression": compress,
    "noise": add_noise,
    "frame_drop": drop_frames,
    "downscale": downscale,
}
assert tuple(_DEGRADE) == DEGRADATIONS


def degrade_with(name: str, clip: Tensor, generator: torch.Generator) -> Tensor:
    """The degradation `name` (one of `DEGRADATIONS`) applied to `clip` (3, T, H, W) in [-1, 1]."""
    if name not in _DEGRADE:
        raise ValueError(f"unknown degradation {name!r}; choose from {', '.join(DEGRADATIONS)}")
    _check_clip(clip)
    _check_generator(generator)
    return _DEGRADE[name](clip, generator)


def degrade_clip(clip: Tensor, generator: torch.Generator) -> tuple[Tensor, str]:
    """clip: float (3, T, H, W) in [-1, 1] on any device; returns the degraded clip (same shape, dtype, device,
    values in [-1, 1]) and the name of the degradation applied, chosen uniformly from `DEGRADATIONS` (without
    "frame_drop" for a single frame)."""
    _check_clip(clip)
    _check_generator(generator)
    names = DEGRADATIONS if clip.shape[1] >= 2 else tuple(name for name in DEGRADATIONS if name != "frame_drop")
    name = names[_randint(generator, 0, len(names) - 1)]
    return _DEGRADE[name](clip, generator), name


def degrade_batch(real: Tensor, probability: float, generator: torch.Generator) -> tuple[Tensor, list[str | None]]:
    """Degrades each clip of `real` (B, 3, T, H, W) independently with probability `probability`; the others
    are returned unchanged. Names are the degradation applied, or None for an unchanged clip."""
    _check_probability(probability)
    _check_generator(generator)
    if real.dim() != 5:
        raise ValueError(f"expected a batch of shape (B, 3, T, H, W), got {tuple(real.shape)}")
    # One coin per clip, all drawn first, so which clips are degraded does not depend on what each one consumes.
    chosen = (torch.rand(real.shape[0], generator=generator) < probability).tolist()
    clips: list[Tensor] = []
    names: list[str | None] = []
    for clip, degrade in zip(real, chosen):
        if degrade:
            degraded, name = degrade_clip(clip, generator)
            clips.append(degraded)
            names.append(name)
        else:
            clips.append(clip)
            names.append(None)
    return torch.stack(clips), names


def mix_fakes(
    real: Tensor, reconstruction: Tensor, probability: float, generator: torch.Generator
) -> tuple[Tensor, list[str]]:
    """The discriminator's fake batch: each item is, with probability `probability`, a degraded copy of
    `real[i]`, and otherwise `reconstruction[i]` (detached). Names are "reconstruction" or the degradation's."""
    if real.shape != reconstruction.shape:
        raise ValueError(f"real {tuple(real.shape)} and reconstruction {tuple(reconstruction.shape)} differ")
    degraded, degradations = degrade_batch(real.detach(), probability, generator)
    reconstruction = reconstruction.detach()
    fakes = torch.stack(
        [
            reconstruction[i] if name is None else degraded[i].to(reconstruction.device, reconstruction.dtype)
            for i, name in enumerate(degradations)
        ]
    )
    return fakes, [RECONSTRUCTION if name is None else name for name in degradations]
