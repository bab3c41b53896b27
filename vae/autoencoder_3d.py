"""The causal 3D KL autoencoder of HunyuanVideo (also Open-Sora 2.0's `hunyuan_vae`), with tiled encode/decode.

The module tree follows diffusers' `AutoencoderKLHunyuanVideo`, so the state_dict keys are the published
ones (`encoder.down_blocks.1.resnets.0.conv1.conv.weight`, `encoder.mid_block.attentions.0.to_q.weight`)
and the HunyuanVideo VAE loads as is. Video is (B,C,T,H,W) with T = 1 + temporal_factor*k: the first
frame is coded on its own, every later latent frame codes `temporal_factor` frames.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from vae.activations import inplace_silu
from vae.conv3d import ChannelChunkConv3D, causal_pad
from vae.distributions import DiagonalGaussianDistribution
from vae.latent_normalisation import LatentNormalisation

DOWN_BLOCK = "HunyuanVideoDownBlock3D"
UP_BLOCK = "HunyuanVideoUpBlock3D"
_ACTIVATIONS = ("silu", "swish")


@dataclass
class AutoEncoder3DConfig:
    # The fields of diffusers' AutoencoderKLHunyuanVideo config.json, with its defaults (the published VAE).
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    down_block_types: list[str] = field(default_factory=lambda: [DOWN_BLOCK] * 4)
    up_block_types: list[str] = field(default_factory=lambda: [UP_BLOCK] * 4)
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.476986
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True
    # Ours: the latent is z = scaling_factor * (latent - shift_factor); `sample` draws from the posterior.
    shift_factor: float = 0.0
    sample: bool = False
    # Tiling, in input pixels and frames. Clips larger than a tile are encoded tile by tile with this overlap,
    # the posterior moments (and decoded frames) blended linearly across it. A temporal tile holds one
    # leading frame plus `tile_sample_num_frames` frames.
    use_tiling: bool = True
    tile_sample_size: int = 256
    tile_sample_overlap: int = 64
    tile_sample_num_frames: int = 16
    tile_sample_overlap_frames: int = 4

    @property
    def scale_factor(self) -> float:
        """The name every VAE of this project uses for diffusers' `scaling_factor`."""
        return self.scaling_factor


def _log2(value: int, name: str) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of 2, got {value}")
    return value.bit_length() - 1


def _check_config(config: AutoEncoder3DConfig) -> None:
    levels = len(config.block_out_channels)
    if levels == 0:
        raise ValueError("block_out_channels is empty")
    for name, types, expected in (
        ("down_block_types", config.down_block_types, DOWN_BLOCK),
        ("up_block_types", config.up_block_types, UP_BLOCK),
    ):
        if len(types) != levels:
            raise ValueError(f"{name} has {len(types)} blocks but block_out_channels has {levels}")
        other = sorted(set(types) - {expected})
        if other:
            raise ValueError(f"unsupported {name}: {', '.join(other)} (only {expected})")
    if config.act_fn not in _ACTIVATIONS:
        raise ValueError(f"unsupported act_fn {config.act_fn!r} (only {' or '.join(_ACTIVATIONS)})")
    if config.layers_per_block < 1:
        raise ValueError(f"layers_per_block must be at least 1, got {config.layers_per_block}")
    bad = [c for c in config.block_out_channels if c < 1 or c % config.norm_num_groups]
    if bad:
        raise ValueError(f"block_out_channels {bad} are not multiples of norm_num_groups {config.norm_num_groups}")
    spatial = _log2(config.spatial_compression_ratio, "spatial_compression_ratio")
    temporal = _log2(config.temporal_compression_ratio, "temporal_compression_ratio")
    if spatial > levels:
        raise ValueError(
            f"spatial_compression_ratio {config.spatial_compression_ratio} needs {spatial} blocks that halve H and W, "
            f"but block_out_channels has {levels} blocks"
        )
    # The last block never compresses time (HunyuanVideo's rule), so time can be halved levels-1 times at most.
    if temporal > levels - 1:
        raise ValueError(
            f"temporal_compression_ratio {config.temporal_compression_ratio} needs {temporal} blocks that halve time "
            f"before the last, but block_out_channels has {levels} blocks"
        )
    s, t = config.spatial_compression_ratio, config.temporal_compression_ratio
    tiles = {
        "tile_sample_size": (config.tile_sample_size, s, 1),
        "tile_sample_overlap": (config.tile_sample_overlap, s, 0),
        "tile_sample_num_frames": (config.tile_sample_num_frames, t, 1),
        "tile_sample_overlap_frames": (config.tile_sample_overlap_frames, t, 0),
    }
    for name, (value, factor, minimum) in tiles.items():
        if value < minimum * factor or value % factor:
            raise ValueError(f"{name} must be a {'non-negative' if minimum == 0 else 'positive'} multiple of {factor}, "
                             f"got {value}")
    if config.tile_sample_overlap >= config.tile_sample_size:
        raise ValueError(f"tile_sample_overlap {config.tile_sample_overlap} must be below tile_sample_size "
                         f"{config.tile_sample_size}")
    if config.tile_sample_overlap_frames >= config.tile_sample_num_frames:
        raise ValueError(f"tile_sample_overlap_frames {config.tile_sample_overlap_frames} must be below "
                         f"tile_sample_num_frames {config.tile_sample_num_frames}")


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class CausalConv3d(nn.Module):
    """Replicate padding (k-1 frames in front, none behind) then a convolution; frame t sees frames <= t."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: tuple[int, ...] | int = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = ChannelChunkConv3D(in_channels, out_channels, kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(causal_pad(x, self.kernel_size))


class FrameCausalAttention(nn.Module):
    """Single-head self-attention over all T*H*W positions; a position sees its own and earlier frames."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        t, h, w = x.shape[2:]
        # A view for channels_last_3d, one copy otherwise.
        tokens = rearrange(self.group_norm(x), "b c t h w -> b 1 (t h w) c")
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        # One query frame at a time against the frames up to it: no T*H*W square mask, half the products.
        out = torch.empty_like(q)
        n = h * w
        for frame in range(t):
            end = (frame + 1) * n
            out[:, :, frame * n : end] = F.scaled_dot_product_attention(q[:, :, frame * n : end], k[:, :, :end], v[:, :, :end])
        out = rearrange(self.to_out[0](out), "b 1 (t h w) c -> b c t h w", t=t, h=h)
        if not x.is_contiguous(memory_format=torch.channels_last_3d):
            out = out.contiguous()
        return out.add_(x)


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(inplace_silu(self.norm1(x)))
        h = self.conv2(inplace_silu(self.norm2(h)))
        return h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))


class Downsample3D(nn.Module):
    def __init__(self, channels: int, stride: tuple[int, int, int]):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, kernel_size=3, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Nearest upsampling then a causal conv; the first frame is upsampled in space only."""

    def __init__(self, channels: int, factor: tuple[int, int, int]):
        super().__init__()
        self.factor = factor
        self.conv = CausalConv3d(channels, channels, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        ft, fh, fw = self.factor
        if ft > 1:
            # Frames 0, 1,1, 2,2, ...: the first frame once, every later one ft times.
            index = torch.arange(x.shape[2], device=x.device).repeat_interleave(ft)[ft - 1 :]
            x = x.index_select(2, index)
        if fh > 1 or fw > 1:
            x = F.interpolate(x, scale_factor=(1.0, float(fh), float(fw)), mode="nearest")
        return self.conv(x)


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, groups), ResnetBlock3D(channels, channels, groups)])
        self.attentions = nn.ModuleList([FrameCausalAttention(channels, groups)] if add_attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class DownBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, stride: tuple[int, int, int]):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList(ResnetBlock3D(i, o, groups) for i, o in zip(channels, channels[1:]))
        self.downsamplers = nn.ModuleList([Downsample3D(out_channels, stride)]) if max(stride) > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, factor: tuple[int, int, int]):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList(ResnetBlock3D(i, o, groups) for i, o in zip(channels, channels[1:]))
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels, factor)]) if max(factor) > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


def _level_factors(config: AutoEncoder3DConfig) -> list[tuple[int, int, int]]:
    """(T, H, W) factor of each level, encoder order: H and W halve in the first log2(spatial) levels,
    T in the log2(temporal) levels just before the last. The decoder mirrors this in its own order."""
    levels = len(config.block_out_channels)
    spatial = _log2(config.spatial_compression_ratio, "spatial_compression_ratio")
    temporal = _log2(config.temporal_compression_ratio, "temporal_compression_ratio")
    factors = []
    for i in range(levels):
        s = 2 if i < spatial else 1
        t = 2 if levels - 1 - temporal <= i < levels - 1 else 1
        factors.append((t, s, s))
    return factors


class Encoder3D(nn.Module):
    def __init__(self, config: AutoEncoder3DConfig):
        super().__init__()
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = CausalConv3d(config.in_channels, channels[0], kernel_size=3)
        self.down_blocks = nn.ModuleList(
            DownBlock3D(channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups, stride)
            for i, stride in enumerate(_level_factors(config))
        )
        self.mid_block = MidBlock3D(channels[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = _norm(channels[-1], groups)
        self.conv_out = CausalConv3d(channels[-1], 2 * config.latent_channels, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(inplace_silu(self.conv_norm_out(h)))


class Decoder3D(nn.Module):
    def __init__(self, config: AutoEncoder3DConfig):
        super().__init__()
        channels, groups = list(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = CausalConv3d(config.latent_channels, channels[0], kernel_size=3)
        self.mid_block = MidBlock3D(channels[0], groups, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            UpBlock3D(channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups, factor)
            for i, factor in enumerate(_level_factors(config))
        )
        self.conv_norm_out = _norm(channels[-1], groups)
        self.conv_out = CausalConv3d(channels[-1], config.out_channels, kernel_size=3)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(inplace_silu(self.conv_norm_out(h)))


class AutoEncoder3D(nn.Module):
    """Causal 3D KL autoencoder. Video is (B,C,T,H,W) with T = 1 + temporal_factor*k and H, W multiples of
    spatial_factor; latents are (B,latent_channels, 1+k, H/spatial_factor, W/spatial_factor)."""

    kind = "autoencoder_3d"

    def __init__(self, config: AutoEncoder3DConfig):
        super().__init__()
        _check_config(config)
        self.config = config
        self.encoder = Encoder3D(config)
        self.decoder = Decoder3D(config)
        self.quant_conv = ChannelChunkConv3D(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        self.post_quant_conv = ChannelChunkConv3D(config.latent_channels, config.latent_channels, kernel_size=1)

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_compression_ratio

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_compression_ratio

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def latent_normalisation(self) -> LatentNormalisation:
        return LatentNormalisation(self.config.shift_factor, self.config.scale_factor)

    def _check_video(self, x: Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(f"expected video (B,C,T,H,W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} channels, got shape {tuple(x.shape)}")
        frames, height, width = x.shape[2:]
        t, s = self.temporal_factor, self.spatial_factor
        if frames < 1:
            raise ValueError(f"a clip of {frames} frames is too short for one latent frame (needs 1 + {t}k frames)")
        if (frames - 1) % t:
            below = 1 + (frames - 1) // t * t
            raise ValueError(
                f"a clip of {frames} frames does not fit temporal factor {t}: it takes 1 + {t}k frames "
                f"(nearest: {below} or {below + t})"
            )
        if height % s or width % s:
            raise ValueError(f"height and width ({height}x{width}) must be multiples of the spatial factor {s}")

    def encode_moments(self, x: Tensor) -> Tensor:
        """Posterior moments `cat([mean, logvar], dim=1)`, unscaled, (B, 2*latent_channels, t, h, w).

        Tiled when the clip is longer or larger than a tile and `config.use_tiling` is on.
        """
        self._check_video(x)
        t, s = self.temporal_factor, self.spatial_factor
        moments = self._tiled(self.encoder, x, in_scale=(t, s), out_scale=(1, 1))
        return self.quant_conv(moments)

    def encode(self, x: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution]:
        """Returns `(z, posterior)` with `z = scale_factor * (latent - shift_factor)`."""
        posterior = DiagonalGaussianDistribution(self.encode_moments(x))
        latent = posterior.sample() if self.config.sample else posterior.mode()
        return self.latent_normalisation.apply(latent), posterior

    def decode(self, z: Tensor) -> Tensor:
        """Video (B, out_channels, 1 + temporal_factor*(t-1), h*spatial_factor, w*spatial_factor) from scaled
        latents `z` (B, latent_channels, t, h, w); tiled like `encode_moments`."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels or z.shape[2] < 1:
            raise ValueError(f"expected latents (B,{self.latent_channels},t,h,w), got shape {tuple(z.shape)}")
        latent = self.post_quant_conv(self.latent_normalisation.undo(z))
        t, s = self.temporal_factor, self.spatial_factor
        return self._tiled(self.decoder, latent, in_scale=(1, 1), out_scale=(t, s))

    def forward(self, x: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution, Tensor]:
        z, posterior = self.encode(x)
        return self.decode(z), posterior, z

    def _tiled(self, fn: Callable[[Tensor], Tensor], x: Tensor, in_scale: tuple[int, int], out_scale: tuple[int, int]) -> Tensor:
        """`fn(x)` computed over overlapping tiles, blended linearly, when x is larger than a tile.

        Tiles are laid out in latent units: one latent frame (`temporal_factor` frames after the first)
        and one latent pixel. A tile that starts at latent frame u > 0 also takes the frame before
        (causal context), whose output it drops: frame-wise, it then codes exactly latent frames u+1...
        """
        config = self.config
        t_in, s_in = in_scale
        t_out, s_out = out_scale
        units = (x.shape[2] - 1) // t_in
        tile = config.tile_sample_num_frames // self.temporal_factor
        overlap = config.tile_sample_overlap_frames // self.temporal_factor
        if not config.use_tiling or units <= tile:
            return self._tiled_spatial(fn, x, s_in, s_out)
        out = None
        previous_end = 0
        for start in _tile_starts(units, tile, overlap):
            end = min(start + tile, units)
            y = self._tiled_spatial(fn, x[:, :, t_in * start : t_in * end + 1], s_in, s_out)
            first = 0
            if start > 0:
                y, first = y[:, :, 1:], t_out * start + 1
            if out is None:
                out = _zeros_like_layout(y, (y.shape[0], y.shape[1], t_out * units + 1, y.shape[3], y.shape[4]))
            _blend_into(out[:, :, first : first + y.shape[2]], y, (max(previous_end - first, 0), 0, 0))
            previous_end = first + y.shape[2]
        return out

    def _tiled_spatial(self, fn: Callable[[Tensor], Tensor], x: Tensor, s_in: int, s_out: int) -> Tensor:
        config = self.config
        height, width = x.shape[3] // s_in, x.shape[4] // s_in
        tile = config.tile_sample_size // self.spatial_factor
        overlap = config.tile_sample_overlap // self.spatial_factor
        if not config.use_tiling or (height <= tile and width <= tile):
            return fn(x)
        out = None
        rows, columns = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
        previous_bottom = 0
        for top in rows:
            previous_right = 0
            for left in columns:
                y = fn(x[:, :, :, top * s_in : (top + tile) * s_in, left * s_in : (left + tile) * s_in])
                if out is None:
                    out = _zeros_like_layout(y, (*y.shape[:3], height * s_out, width * s_out))
                y_top, y_left = top * s_out, left * s_out
                region = out[:, :, :, y_top : y_top + y.shape[3], y_left : y_left + y.shape[4]]
                _blend_into(region, y, (0, max(previous_bottom - y_top, 0), max(previous_right - y_left, 0)))
                previous_right = y_left + y.shape[4]
            previous_bottom = top * s_out + y.shape[3]
        return out


def _tile_starts(units: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` units, `tile - overlap` apart, covering `units`; the last one ends at the end."""
    if units <= tile:
        return [0]
    return list(range(0, units - tile, tile - overlap)) + [units - tile]


def _zeros_like_layout(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    channels_last = not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last_3d)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout).zero_()


def _ramp(length: int, overlap: int, dim: int, like: Tensor) -> Tensor:
    """Weights of the new tile along `dim`: k/overlap over the first `overlap` positions, then 1."""
    weight = torch.ones(length, dtype=like.dtype, device=like.device)
    weight[:overlap] = torch.arange(overlap, dtype=like.dtype, device=like.device) / overlap
    shape = [1] * 5
    shape[dim] = length
    return weight.view(shape)


def _blend_into(region: Tensor, tile: Tensor, overlaps: tuple[int, int, int]) -> None:
    """Write `tile` into `region` (a view of the output), blending linearly with what is there over the
    leading `overlaps` positions in T, H and W."""
    if not any(overlaps):
        region.copy_(tile)
        return
    weight = math.prod(_ramp(tile.shape[2 + i], n, 2 + i, tile) for i, n in enumerate(overlaps) if n > 0)
    region.lerp_(tile, weight)
