"""3D convolution and padding that stay under a per-call element limit, for long, large clips.

Some conv and pad kernels index with 32-bit integers and fail (or silently misbehave) on inputs of
2**31 elements or more; splitting over channels keeps every call under the limit with the same result.
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_Triple = tuple[int, int, int]


def _triple(value: int | tuple[int, ...]) -> _Triple:
    return (value,) * 3 if isinstance(value, int) else tuple(value)


def _channel_chunks(channels: int, numel_per_channel: int, limit: int) -> int:
    """How many near-equal channel chunks keep each chunk at or under `limit` elements (one channel at least)."""
    per_chunk = max(1, limit // max(1, numel_per_channel))
    return math.ceil(channels / per_chunk)


class ChannelChunkConv3D(nn.Conv3d):
    """`nn.Conv3d` that splits input and output channels into chunks and sums the partial convolutions
    when one sample of its input or output would exceed `CONV3D_NUMEL_LIMIT` elements.

    The limit is a class attribute, so it can be lowered at run time (or in tests) for every instance.
    """

    CONV3D_NUMEL_LIMIT = 2**31

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The chunked path calls F.conv3d, which knows neither groups nor padding modes.
        if self.groups != 1:
            raise ValueError(f"ChannelChunkConv3D supports groups=1 only, got groups={self.groups}")
        if self.padding_mode != "zeros":
            raise ValueError(f"ChannelChunkConv3D supports padding_mode='zeros' only, got {self.padding_mode!r}")

    def _output_size(self, size: tuple[int, ...]) -> list[int]:
        if self.padding == "same":
            return list(size)
        padding = (0, 0, 0) if self.padding == "valid" else self.padding
        return [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, d, k, s in zip(size, padding, self.dilation, self.kernel_size, self.stride)
        ]

    def forward(self, x: Tensor) -> Tensor:
        limit = self.CONV3D_NUMEL_LIMIT
        in_spatial = math.prod(x.shape[-3:])
        out_spatial = math.prod(self._output_size(tuple(x.shape[-3:])))
        if in_spatial * self.in_channels <= limit and out_spatial * self.out_channels <= limit:
            return F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        n_in = _channel_chunks(self.in_channels, in_spatial, limit)
        n_out = _channel_chunks(self.out_channels, out_spatial, limit)
        inputs = x.tensor_split(n_in, dim=1)
        outputs = []
        # tensor_split, unlike chunk, gives exactly n pieces for any channel count, the same for x and weight.
        for index, weight in enumerate(self.weight.tensor_split(n_out, dim=0)):
            bias = None if self.bias is None else self.bias.tensor_split(n_out)[index]
            out = None
            for part, w in zip(inputs, weight.tensor_split(n_in, dim=1)):
                partial = F.conv3d(part, w, bias if out is None else None, self.stride, self.padding, self.dilation)
                out = partial if out is None else out.add_(partial)
            outputs.append(out)
        return outputs[0] if n_out == 1 else torch.cat(outputs, dim=1)


def causal_padding(kernel_size: int | tuple[int, int, int]) -> tuple[int, int, int, int, int, int]:
    """F.pad order (W, W, H, H, T front, T back) of HunyuanVideo's causal conv: k-1 frames in front, none behind."""
    kt, kh, kw = _triple(kernel_size)
    return (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)


def _empty_like_layout(x: Tensor, shape: list[int]) -> Tensor:
    channels_last = x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)


def pad_for_conv3d_kernel_3x3x3(x: Tensor, numel_limit: int | None = None) -> Tensor:
    """Pad (B,C,T,H,W) by one on every side for a 3x3x3 kernel: zeros in H and W, replicated frames in T.

    Above `numel_limit` elements (default `ChannelChunkConv3D.CONV3D_NUMEL_LIMIT`) the copies are made one
    channel chunk at a time into the one output tensor.
    """
    limit = ChannelChunkConv3D.CONV3D_NUMEL_LIMIT if numel_limit is None else numel_limit
    b, c, t, h, w = x.shape
    out = _empty_like_layout(x, [b, c, t + 2, h + 2, w + 2])
    n_chunks = _channel_chunks(c, b * t * h * w, limit)
    for source, target in zip(x.tensor_split(n_chunks, dim=1), out.tensor_split(n_chunks, dim=1)):
        target[:, :, :, 0].zero_()
        target[:, :, :, -1].zero_()
        target[:, :, :, 1:-1, 0].zero_()
        target[:, :, :, 1:-1, -1].zero_()
        target[:, :, 1:-1, 1:-1, 1:-1] = source
        target[:, :, 0, 1:-1, 1:-1] = source[:, :, 0]
        target[:, :, -1, 1:-1, 1:-1] = source[:, :, -1]
    return out


def causal_pad(x: Tensor, kernel_size: int | tuple[int, int, int]) -> Tensor:
    """Replicate padding in all three dims for a causal conv: k-1 frames in front, (k-1)/2 around H and W."""
    padding = causal_padding(kernel_size)
    return F.pad(x, padding, mode="replicate") if any(padding) else x
