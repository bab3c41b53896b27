"""Turns batches of decoded uint8 clips into scaled posterior-mode latents with a loaded VAE."""

from __future__ import annotations

import os

import torch
from einops import rearrange
from torch import nn

from vae import DiagonalGaussianDistribution, chunk_conv3d_layers
from vae.latent_normalisation import LatentNormalisation

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CPU_LAYOUTS = {"autoencoder_2d": torch.channels_last, "autoencoder_3d": torch.channels_last_3d}


def resolve_compute(compute_dtype: str, device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """The accelerator when one is visible (bf16 there by default), else the CPU in fp32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if compute_dtype == "auto":
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, _DTYPES[compute_dtype]


def available_host_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), else the free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def conv3d_chunk_limit(setting: str, device: torch.device, dtype: torch.dtype, channels_last: bool) -> int | None:
    """Elements per Conv3d call above which the call is split over channels (`--conv3d-chunk-elements`); None: the
    model's convolutions stay as they are.

    auto sizes the limit from the memory there is, so chunking costs nothing while a clip fits comfortably: an
    eighth of the available memory per input or output chunk (a quarter of free GPU memory on a GPU, which also
    bounds cuDNN's workspace), between 2**22 and 2**31 elements (32-bit indexing). benchmarks.conv3d_chunking
    measured the trade on CPU at 17x128²: a model run contiguous (diffusers' Wan 2.1) chunked at 2**22 encoded at
    0.87x the speed for 1.05-1.75x less peak memory growth (two runs). A model run channels-last on CPU (the native
    3D VAE) needed more memory chunked, since oneDNN's channels-last 3D convolution takes little beyond its
    output, so it is chunked only above 2**31."""
    if setting == "off":
        return None
    if setting != "auto":
        return int(setting)
    element_size = torch.finfo(dtype).bits // 8
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(2**22, min(2**31, free // (4 * element_size)))
    if channels_last:
        return 2**31
    return max(2**22, min(2**31, available_host_memory() // (8 * element_size)))


def frames_to_model_input(frames: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) → (B, 3, T, H, W) in [-1, 1].

    The rearrange is a view, so a 2D VAE folding time into batch sees channels-last frames for free.
    """
    x = rearrange(frames.to(device, non_blocking=True), "b t h w c -> b c t h w")
    return x.to(dtype).div_(127.5).sub_(1.0)


class ClipEncoder:
    """Holds one VAE on one device and encodes (and decodes) same-shaped clip batches.

    A 2D VAE folds every frame of the batch into one forward pass, so activations grow with
    clips x frames; `max_frames_per_call` splits a batch into calls of at most that many frames.
    """

    def __init__(
        self, model: nn.Module, device: torch.device, dtype: torch.dtype, max_frames_per_call: int = 32,
        normalisation: LatentNormalisation | None = None, conv3d_chunk_elements: str = "auto",
    ) -> None:
        self.max_frames_per_call = max_frames_per_call
        self.device = device
        self.dtype = dtype
        model = model.to(device=device, dtype=dtype).eval()
        layout = _CPU_LAYOUTS.get(model.kind) if device.type == "cpu" else None
        if layout is not None:
            # Measured 1.2-2x faster for conv stacks on CPU; GPUs pick their own layouts. Not for diffusers'
            # models, whose `.view` reshapes need contiguous activations.
            model = model.to(memory_format=layout)
        chunk_limit = conv3d_chunk_limit(conv3d_chunk_elements, device, dtype, channels_last=layout is not None)
        if chunk_limit is not None:
            chunk_conv3d_layers(model, chunk_limit)
        self.model = model
        # What the cache stores; the model's own unless the job replaced it (--latent-shift/--latent-scale).
        self.normalisation = normalisation or model.latent_normalisation

    def _chunks(self, batch: torch.Tensor, frames_per_clip: int) -> tuple[torch.Tensor, ...]:
        return batch.split(max(1, self.max_frames_per_call // frames_per_clip))

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, T, H, W, 3) → (latent, moments) in fp32 on the CPU: latent = scale * (mode - shift) by
        `normalisation`, moments unscaled."""
        moments = torch.cat([
            self.model.encode_moments(frames_to_model_input(chunk, self.device, self.dtype)).float().cpu()
            for chunk in self._chunks(frames, frames.shape[1])
        ])
        return self.normalisation.apply(DiagonalGaussianDistribution(moments).mode()), moments

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, t, h, w) normalised as `encode` stores them, any dtype → reconstructions
        (B, 3, T, H, W) in fp32 on the CPU."""
        own = self.model.latent_normalisation
        if self.normalisation != own:
            latent = own.apply(self.normalisation.undo(latent.float()))
        return torch.cat([
            self.model.decode(chunk.to(self.device, self.dtype)).float().cpu()
            for chunk in self._chunks(latent, (latent.shape[2] - 1) * self.model.temporal_factor + 1)
        ])
