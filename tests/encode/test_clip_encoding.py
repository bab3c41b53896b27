"""How the encoder places a model: the Conv3d chunk limit it picks from the setting and the memory there is."""

import pytest
import torch

from pipeline.encode import clip_encoding
from pipeline.encode.clip_encoding import ClipEncoder, conv3d_chunk_limit
from vae import ChannelChunkConv3D, load_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("available, channels_last, expected", [
    (2**40, False, 2**31),  # plenty of memory: only the 32-bit indexing limit
    (2**34, False, 2**34 // 32),  # an eighth of 16 GiB in fp32 elements
    (2**20, False, 2**22),  # tight: never below 2**22 elements
    (2**20, True, 2**31),  # channels-last on CPU: chunking would cost memory, not save it
])
def test_auto_sizes_the_limit_from_available_memory(monkeypatch, available, channels_last, expected):
    monkeypatch.setattr(clip_encoding, "available_host_memory", lambda: available)
    assert conv3d_chunk_limit("auto", CPU, torch.float32, channels_last) == expected


def test_a_number_is_taken_and_off_leaves_the_model_alone():
    assert conv3d_chunk_limit("1000", CPU, torch.float32, False) == 1000
    assert conv3d_chunk_limit("off", CPU, torch.float32, False) is None
    assert clip_encoding.available_host_memory() > 0


def test_the_encoder_chunks_the_native_3d_vae_as_asked():
    torch.manual_seed(0)
    model = load_model("tiny-3d")
    frames = torch.randint(0, 256, (1, 5, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = ClipEncoder(model, CPU, torch.float32, conv3d_chunk_elements="off")
    expected, _ = plain.encode(frames)
    chunked = ClipEncoder(model, CPU, torch.float32, conv3d_chunk_elements="64")
    convs = [m for m in chunked.model.modules() if isinstance(m, ChannelChunkConv3D)]
    assert convs and all(m.numel_limit == 64 for m in convs)
    latent, _ = chunked.encode(frames)
    torch.testing.assert_close(latent, expected, atol=1e-5, rtol=0)
