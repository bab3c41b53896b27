"""3D convolution and padding that stay under a per-call element limit, for long, large clips.

Some conv and pad kernels index with 32-bit integers and fail (or silently misbehave) on inputs of
2**31 elements or more; splitting over channels keeps every call under the limit with the same result.
On GPUs a lower limit also bounds cuDNN's workspace. On CPUs (oneDNN) it does not save memory: oneDNN's
3D convolution needs little beyond its output, while each chunk is reordered on its own
(`python -m benchmarks.conv3d_chunking` measures both).
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


def _output_size(size: tuple[int, ...], padding: str | tuple[int, ...], kernel: _Triple, stride: _Triple,
                 dilation: _Triple) -> list[int]:
    if padding == "same":
        return list(size)
    padding = (0, 0, 0) if padding == "valid" else padding
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(size, padding, dilation, kernel, stride)]


class ChannelChunkConv3D(nn.Conv3d):
    """`nn.Conv3d` that splits input and output channels into chunks and sums the partial convolutions
    when one sample of its input or output would exceed `numel_limit` elements.

    `numel_limit` is per instance (`chunk_conv3d_layers` sets it); an instance without one uses the class
    attribute `CONV3D_NUMEL_LIMIT`, so that can be lowered at run time (or in tests) for every instance.
    """

    CONV3D_NUMEL_LIMIT = 2**31
    numel_limit: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The chunked path splits the weight over input channels, which groups > 1 would mix up.
        if self.groups != 1:
            raise ValueError(f"ChannelChunkConv3D supports groups=1 only, got groups={self.groups}")

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # nn.Conv3d.forward (and the forward of any subclass that calls it) ends here.
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0, 0)
        limit = self.numel_limit or self.CONV3D_NUMEL_LIMIT
        in_spatial = math.prod(x.shape[-3:])
        out_spatial = math.prod(_output_size(tuple(x.shape[-3:]), padding, self.kernel_size, self.stride,
                                             self.dilation))
        if in_spatial * self.in_channels <= limit and out_spatial * self.out_channels <= limit:
            return F.conv3d(x, weight, bias, self.stride, padding, self.dilation)
        n_in = _channel_chunks(self.in_channels, in_spatial, limit)
        n_out = _channel_chunks(self.out_channels, out_spatial, limit)
        inputs = x.tensor_split(n_in, dim=1)
        outputs = []
        # tensor_split, unlike chunk, gives exactly n pieces for any channel count, the same for x and weight.
        for index, out_weight in enumerate(weight.tensor_split(n_out, dim=0)):
            out_bias = None if bias is None else bias.tensor_split(n_out)[index]
            out = None
            for part, w in zip(inputs, out_weight.tensor_split(n_in, dim=1)):
                partial = F.conv3d(part, w, out_bias if out is None else None, self.stride, padding, self.dilation)
                out = partial if out is None else out.add_(partial)
            outputs.append(out)
        return outputs[0] if n_out == 1 else torch.cat(outputs, dim=1)


_CHUNKED_CLASSES: dict[type, type] = {nn.Conv3d: ChannelChunkConv3D, ChannelChunkConv3D: ChannelChunkConv3D}


def _chunked_class(cls: type) -> type:
    """`cls` with ChannelChunkConv3D's convolution: a subclass (diffusers' causal convs pad or split time in
    their own `forward`, then call nn.Conv3d's) keeps its `forward` and gains the chunked `_conv_forward`."""
    if cls not in _CHUNKED_CLASSES:
        _CHUNKED_CLASSES[cls] = type(f"ChannelChunk{cls.__name__}", (ChannelChunkConv3D, cls), {})
    return _CHUNKED_CLASSES[cls]


def chunk_conv3d_layers(model: nn.Module, numel_limit: int) -> int:
    """Makes every `nn.Conv3d` of `model` (groups=1) a ChannelChunkConv3D with `numel_limit`, in place: the same
    parameters, buffers, hooks and state_dict keys, the same outputs up to float summation order. Returns how
    many convolutions it changed."""
    if numel_limit < 1:
        raise ValueError(f"numel_limit must be positive, got {numel_limit}")
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Conv3d) and module.groups == 1:
            module.__class__ = _chunked_class(type(module))
            module.numel_limit = numel_limit
            changed += 1
    return changed


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
