import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vae import ChannelChunkConv3D, chunk_conv3d_layers
from vae.conv3d import causal_pad, causal_padding, pad_for_conv3d_kernel_3x3x3

CASES = [
    # in, out, kernel, stride, padding, bias, input (T, H, W)
    (8, 8, 3, 1, 0, True, (5, 6, 7)),
    (8, 8, 3, 1, 0, False, (5, 6, 7)),
    (7, 5, 3, 1, 1, True, (4, 5, 6)),  # counts no chunk count divides
    (6, 9, 3, (1, 2, 2), 0, False, (5, 9, 8)),
    (5, 7, 3, 2, 1, True, (7, 7, 7)),
    (4, 6, (1, 3, 3), 1, (0, 1, 1), True, (3, 6, 6)),
    (9, 3, 1, 1, 0, True, (3, 4, 4)),
    (3, 11, 3, 1, "same", False, (4, 5, 5)),
]


def reference_and_chunked(cin, cout, kernel, stride, padding, bias, seed=0):
    torch.manual_seed(seed)
    reference = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    chunked = ChannelChunkConv3D(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
    chunked.load_state_dict(reference.state_dict())
    return reference, chunked


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("limit", [2**31, 1000, 200, 1])
def test_chunked_conv_equals_conv3d(monkeypatch, case, limit):
    cin, cout, kernel, stride, padding, bias, size = case
    reference, chunked = reference_and_chunked(cin, cout, kernel, stride, padding, bias)
    x = torch.randn(2, cin, *size)
    expected = reference(x)
    calls = []
    conv3d = F.conv3d
    monkeypatch.setattr(F, "conv3d", lambda *args: calls.append(args[0].shape[1]) or conv3d(*args))
    monkeypatch.setattr(ChannelChunkConv3D, "CONV3D_NUMEL_LIMIT", limit)
    with torch.no_grad():
        out = chunked(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    per_sample = max(cin * size[0] * size[1] * size[2], cout * expected[0, 0].numel())
    assert (len(calls) > 1) == (per_sample > limit)
    assert sum(calls) % cin == 0  # every input channel is used by every output chunk


def test_gradients_flow_through_chunks(monkeypatch):
    reference, chunked = reference_and_chunked(5, 7, 3, 1, 1, True)
    monkeypatch.setattr(ChannelChunkConv3D, "CONV3D_NUMEL_LIMIT", 300)
    x = torch.randn(1, 5, 4, 5, 5, requires_grad=True)
    chunked(x).square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    reference(x).square().sum().backward()
    torch.testing.assert_close(grad, x.grad, atol=1e-4, rtol=1e-4)
    assert chunked.weight.grad is not None and chunked.bias.grad is not None


def test_limit_is_read_at_call_time(monkeypatch):
    _, chunked = reference_and_chunked(4, 4, 3, 1, 1, False)
    x = torch.randn(1, 4, 3, 4, 4)
    with torch.no_grad():
        before = chunked(x)
        monkeypatch.setattr(ChannelChunkConv3D, "CONV3D_NUMEL_LIMIT", 50)
        torch.testing.assert_close(chunked(x), before, atol=1e-5, rtol=1e-5)


def test_channels_last_input(monkeypatch):
    reference, chunked = reference_and_chunked(6, 10, 3, 1, 1, True)
    x = torch.randn(1, 6, 4, 6, 6).to(memory_format=torch.channels_last_3d)
    monkeypatch.setattr(ChannelChunkConv3D, "CONV3D_NUMEL_LIMIT", 500)
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), reference(x), atol=1e-5, rtol=1e-5)


def test_refuses_groups_and_keeps_padding_modes(monkeypatch):
    with pytest.raises(ValueError, match="groups=1 only, got groups=2"):
        ChannelChunkConv3D(4, 4, 3, groups=2)
    monkeypatch.setattr(ChannelChunkConv3D, "CONV3D_NUMEL_LIMIT", 300)
    x = torch.randn(1, 6, 4, 6, 6)
    for mode in ("replicate", "reflect", "circular"):
        torch.manual_seed(0)
        reference = nn.Conv3d(6, 8, 3, padding=1, padding_mode=mode)
        torch.manual_seed(0)
        chunked = ChannelChunkConv3D(6, 8, 3, padding=1, padding_mode=mode)
        with torch.no_grad():
            torch.testing.assert_close(chunked(x), reference(x), atol=1e-5, rtol=1e-5)


class FrontPaddedConv3d(nn.Conv3d):
    """A causal conv in diffusers' style: a Conv3d subclass that pads time in its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1, 2, 0)))


def test_chunk_conv3d_layers_converts_in_place_and_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(6, 12, 3, padding=1), nn.SiLU(), FrontPaddedConv3d(12, 8, 3),
                          nn.Conv3d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 8, 1))
    x = torch.randn(2, 6, 5, 8, 8)
    keys = list(model.state_dict())
    weight = model[2].weight
    with torch.no_grad():
        expected = model[:4](x)
        assert chunk_conv3d_layers(model, numel_limit=200) == 2  # the grouped conv and the Conv2d stay
        chunked = model[:4](x)
    assert isinstance(model[0], ChannelChunkConv3D) and type(model[0]) is ChannelChunkConv3D
    assert isinstance(model[2], ChannelChunkConv3D) and isinstance(model[2], FrontPaddedConv3d)
    assert type(model[3]) is nn.Conv3d and type(model[4]) is nn.Conv2d
    assert model[2].weight is weight and list(model.state_dict()) == keys
    assert model[0].numel_limit == model[2].numel_limit == 200
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="positive"):
        chunk_conv3d_layers(model, 0)


def test_state_dict_is_that_of_conv3d():
    assert ChannelChunkConv3D(3, 4, 3).state_dict().keys() == {"weight", "bias"}
    assert ChannelChunkConv3D(3, 4, 3, bias=False).state_dict().keys() == {"weight"}


def test_causal_padding():
    assert causal_padding(3) == (1, 1, 1, 1, 2, 0)
    assert causal_padding(1) == (0, 0, 0, 0, 0, 0)
    assert causal_padding((3, 1, 1)) == (0, 0, 0, 0, 2, 0)
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(causal_pad(x, 3), F.pad(x, (1, 1, 1, 1, 2, 0), mode="replicate"), atol=0, rtol=0)
    assert causal_pad(x, 1) is x
    padded = causal_pad(x, 3)
    assert torch.equal(padded[:, :, 0], padded[:, :, 2]) and torch.equal(padded[:, :, 1], padded[:, :, 2])
    assert torch.equal(padded[:, :, -1, 1:-1, 1:-1], x[:, :, -1])  # nothing behind the last frame


@pytest.mark.parametrize("limit", [None, 100, 1])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_pad_for_conv3d_kernel_3x3x3(limit, channels_last):
    x = torch.randn(2, 5, 3, 4, 6)
    if channels_last:
        x = x.to(memory_format=torch.channels_last_3d)
    expected = F.pad(F.pad(x, (1, 1, 1, 1)), (0, 0, 0, 0, 1, 1), mode="replicate")
    out = pad_for_conv3d_kernel_3x3x3(x, numel_limit=limit)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    assert torch.equal(out[:, :, :, 0], torch.zeros_like(out[:, :, :, 0]))
