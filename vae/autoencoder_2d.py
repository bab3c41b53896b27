"""The 2D KL autoencoder of Flux and Stable Diffusion, applied per frame to video.

The module tree follows black-forest-labs/flux `src/flux/modules/autoencoder.py`, so the state_dict
keys are the published ones (`encoder.down.0.block.1.conv2.weight`) and FLUX.1's `ae.safetensors`
loads as is; `use_quant_conv=True` adds the 1x1 `quant_conv`/`post_quant_conv` of the ldm VAE.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from vae.activations import inplace_silu
from vae.distributions import DiagonalGaussianDistribution
from vae.latent_normalisation import LatentNormalisation


@dataclass
class AutoEncoderConfig:
    from_pretrained: str | None = None
    cache_dir: str | None = None
    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 1.0
    shift_factor: float = 0.0
    sample: bool = False
    use_quant_conv: bool = False


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        height = h.shape[2]
        # Contiguous so SDPA can use its fused kernels; free for channels_last.
        q, k, v = (rearrange(t, "b c h w -> b 1 (h w) c").contiguous() for t in (self.q(h), self.k(h), self.v(h)))
        h = F.scaled_dot_product_attention(q, k, v)
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height)
        # The view above is channels_last whatever x was; keep x's layout so convs don't flip formats.
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        h = h.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return x + self.proj_out(h)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(inplace_silu(self.norm1(x)))
        h = self.conv2(inplace_silu(self.norm2(h)))
        # h is conv2's fresh output, so the residual goes into it.
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # Asymmetric padding (right and bottom only), which Conv2d's `padding` cannot express.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _res_blocks(in_channels: int, out_channels: int, num_blocks: int) -> nn.ModuleList:
    channels = [in_channels] + [out_channels] * num_blocks
    return nn.ModuleList(ResnetBlock(i, o) for i, o in zip(channels, channels[1:]))


class DownLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, downsample: bool):
        super().__init__()
        self.block = _res_blocks(in_channels, out_channels, num_blocks)
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, upsample: bool):
        super().__init__()
        self.block = _res_blocks(in_channels, out_channels, num_blocks)
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    def __init__(self, config: AutoEncoderConfig):
        super().__init__()
        ch, ch_mult = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.in_channels, ch, kernel_size=3, padding=1)
        in_mult = [1] + list(ch_mult)
        last = len(ch_mult) - 1
        self.down = nn.ModuleList(
            DownLevel(ch * in_mult[i], ch * ch_mult[i], config.num_res_blocks, downsample=i != last)
            for i in range(len(ch_mult))
        )
        self.mid = MidBlock(ch * ch_mult[-1])
        self.norm_out = _norm(ch * ch_mult[-1])
        self.conv_out = nn.Conv2d(ch * ch_mult[-1], 2 * config.z_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(inplace_silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: AutoEncoderConfig):
        super().__init__()
        ch, ch_mult = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.z_channels, ch * ch_mult[-1], kernel_size=3, padding=1)
        self.mid = MidBlock(ch * ch_mult[-1])
        # `up.i` works at the resolution of `down.i`, so it takes its input from `up.(i+1)`.
        out_mult = list(ch_mult) + [ch_mult[-1]]
        self.up = nn.ModuleList(
            UpLevel(ch * out_mult[i + 1], ch * ch_mult[i], config.num_res_blocks + 1, upsample=i != 0)
            for i in range(len(ch_mult))
        )
        self.norm_out = _norm(ch * ch_mult[0])
        self.conv_out = nn.Conv2d(ch * ch_mult[0], config.out_ch, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(inplace_silu(self.norm_out(h)))


class AutoEncoder2D(nn.Module):
    """Per-frame KL autoencoder. Images are (B,C,H,W); video is (B,C,T,H,W), encoded frame by frame."""

    kind = "autoencoder_2d"

    def __init__(self, config: AutoEncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, kernel_size=1)
            self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, kernel_size=1)
        else:
            self.quant_conv = None
            self.post_quant_conv = None

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 1

    @property
    def latent_channels(self) -> int:
        return self.config.z_channels

    @property
    def latent_normalisation(self) -> LatentNormalisation:
        return LatentNormalisation(self.config.shift_factor, self.config.scale_factor)

    def encode_moments(self, x: Tensor) -> Tensor:
        """Posterior moments `cat([mean, logvar], dim=1)`, unscaled, in the layout of `x`."""
        frames, unfold = _fold_time(x)
        moments = self.encoder(frames)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return unfold(moments)

    def encode(self, x: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution]:
        """Returns `(z, posterior)` with `z = scale_factor * (latent - shift_factor)`."""
        posterior = DiagonalGaussianDistribution(self.encode_moments(x))
        latent = posterior.sample() if self.config.sample else posterior.mode()
        return self.latent_normalisation.apply(latent), posterior

    def decode(self, z: Tensor) -> Tensor:
        """Images or video from scaled latents `z`, (B,C,h,w) or (B,C,T,h,w)."""
        latent, unfold = _fold_time(self.latent_normalisation.undo(z))
        if self.post_quant_conv is not None:
            latent = self.post_quant_conv(latent)
        return unfold(self.decoder(latent))

    def forward(self, x: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution, Tensor]:
        z, posterior = self.encode(x)
        return self.decode(z), posterior, z


def _fold_time(x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(B,C,T,H,W) -> (B*T,C,H,W) and the inverse for the result; identity for 4-D input.

    The rearrange is a view for channels_last_3d video, which folds into channels_last frames.
    """
    if x.ndim == 4:
        return x, lambda y: y
    if x.ndim != 5:
        raise ValueError(f"expected (B,C,H,W) or (B,C,T,H,W), got shape {tuple(x.shape)}")
    b = x.shape[0]
    return rearrange(x, "b c t h w -> (b t) c h w"), lambda y: rearrange(y, "(b t) c h w -> b c t h w", b=b)
