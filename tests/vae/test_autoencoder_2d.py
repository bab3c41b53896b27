import dataclasses

import pytest
import torch

from vae import PRESETS, AutoEncoder2D, AutoEncoderConfig, DiagonalGaussianDistribution

FLUX_LIKE = AutoEncoderConfig(
    ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=4, scale_factor=0.5, shift_factor=0.1
)
SD_LIKE = dataclasses.replace(FLUX_LIKE, ch_mult=[1, 2], num_res_blocks=2, z_channels=4, use_quant_conv=True)


def flux_layout(ch, ch_mult, num_res_blocks, z_channels, in_channels=3, out_ch=3, quant_conv=False):
    """Key names and shapes of the Flux / ldm autoencoder, written out from its published layout."""
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def mid(name, c):
        resnet(f"{name}.block_1", c, c)
        norm(f"{name}.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{name}.attn_1.{proj}", c, c, 1)
        resnet(f"{name}.block_2", c, c)

    levels = len(ch_mult)
    conv("encoder.conv_in", in_channels, ch, 3)
    c = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", c, ch * m)
            c = ch * m
        if i < levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder.mid", c)
    norm("encoder.norm_out", c)
    conv("encoder.conv_out", c, 2 * z_channels, 3)

    conv("decoder.conv_in", z_channels, c, 3)
    mid("decoder.mid", c)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", c, ch * ch_mult[i])
            c = ch * ch_mult[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", c, out_ch, 3)
    if quant_conv:
        conv("quant_conv", 2 * z_channels, 2 * z_channels, 1)
        conv("post_quant_conv", z_channels, z_channels, 1)
    return shapes


def random_state_dict(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(s, generator=gen) for k, s in shapes.items()}


def tiny_model(config=FLUX_LIKE, seed=0):
    torch.manual_seed(seed)
    return AutoEncoder2D(config).eval()


@pytest.mark.parametrize("config", [FLUX_LIKE, SD_LIKE], ids=["flux", "sd"])
def test_published_layout_loads_strictly(config):
    shapes = flux_layout(
        config.ch, config.ch_mult, config.num_res_blocks, config.z_channels, quant_conv=config.use_quant_conv
    )
    model = AutoEncoder2D(config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    state_dict = random_state_dict(shapes)
    model.load_state_dict(state_dict, strict=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state_dict[k]) for k in shapes)


def test_flux_ae_preset_has_the_flux1_key_set():
    with torch.device("meta"):
        model = AutoEncoder2D(PRESETS["flux-ae"])
    shapes = flux_layout(128, [1, 2, 4, 4], 2, 16)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert len(shapes) == 244  # as many tensors as FLUX.1's ae.safetensors holds


@pytest.mark.parametrize("name", ["flux-ae", "sd-ae", "lightweight", "high-res"])
def test_preset_shapes_on_meta(name):
    config = PRESETS[name]
    with torch.device("meta"):
        model = AutoEncoder2D(config)
        for x in (torch.empty(2, 3, 64, 48), torch.empty(2, 3, 3, 64, 48)):
            z, posterior = model.encode(x)
            f = model.spatial_factor
            assert z.shape == (2, config.z_channels, *x.shape[2:-2], 64 // f, 48 // f)
            assert posterior.parameters.shape == (2, 2 * config.z_channels, *z.shape[2:])
            assert model.decode(z).shape == x.shape
    assert model.spatial_factor == 2 ** (len(config.ch_mult) - 1) == 8
    assert (model.temporal_factor, model.latent_channels, model.kind) == (1, config.z_channels, "autoencoder_2d")


@pytest.mark.parametrize("shape", [(2, 3, 16, 12), (2, 3, 3, 16, 12)], ids=["image", "video"])
def test_tiny_preset_encode_decode(shape):
    model = tiny_model(PRESETS["tiny"])
    assert model.spatial_factor == 2
    x = torch.randn(shape)
    recon, posterior, z = model(x)
    assert z.shape == (2, 4, *shape[2:-2], 8, 6)
    assert isinstance(posterior, DiagonalGaussianDistribution) and posterior.mean.shape == z.shape
    assert recon.shape == x.shape
    assert torch.equal(model.encode_moments(x), posterior.parameters)


def test_mode_latents_are_deterministic_and_scaled():
    model = tiny_model()
    x = torch.randn(1, 3, 16, 16)
    z1, posterior = model.encode(x)
    z2, _ = model.encode(x)
    assert torch.equal(z1, z2)
    torch.testing.assert_close(z1, 0.5 * (posterior.mode() - 0.1))
    torch.testing.assert_close(model.decode(z1), model.decoder(posterior.mode()))


def test_sampling_follows_the_global_seed():
    model = tiny_model(dataclasses.replace(FLUX_LIKE, sample=True))
    x = torch.randn(1, 3, 16, 16)
    torch.manual_seed(3)
    a, posterior = model.encode(x)
    torch.manual_seed(3)
    b, _ = model.encode(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, 0.5 * (posterior.mode() - 0.1))


def test_video_is_encoded_frame_by_frame():
    model = tiny_model(SD_LIKE)
    video = torch.randn(2, 3, 3, 16, 16)
    z, posterior = model.encode(video)
    frames = [model.encode(video[:, :, t])[0] for t in range(3)]
    torch.testing.assert_close(z, torch.stack(frames, dim=2))
    assert posterior.logvar.shape == z.shape
    recon = model.decode(z)
    torch.testing.assert_close(recon[:, :, 1], model.decode(z[:, :, 1]))


def test_channels_last():
    model = tiny_model()
    image, video = torch.randn(2, 3, 16, 16), torch.randn(1, 3, 2, 16, 16)
    expected_image, expected_video = model(image), model(video)
    model = model.to(memory_format=torch.channels_last)
    recon, posterior, z = model(image.to(memory_format=torch.channels_last))
    assert z.is_contiguous(memory_format=torch.channels_last)
    recon_v, posterior_v, z_v = model(video.to(memory_format=torch.channels_last_3d))
    assert z_v.is_contiguous(memory_format=torch.channels_last_3d)
    pairs = [
        (recon, expected_image[0]),
        (posterior.parameters, expected_image[1].parameters),
        (z, expected_image[2]),
        (recon_v, expected_video[0]),
        (posterior_v.parameters, expected_video[1].parameters),
        (z_v, expected_video[2]),
    ]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bfloat16():
    model = tiny_model(SD_LIKE)
    x = torch.randn(1, 3, 2, 16, 16)
    expected, _, expected_z = model(x)
    recon, posterior, z = model.to(torch.bfloat16)(x.bfloat16())
    assert recon.dtype == z.dtype == posterior.mean.dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), expected_z, rtol=0.05, atol=0.05)
    torch.testing.assert_close(recon.float(), expected, rtol=0.05, atol=0.05)


def test_rejects_other_ranks():
    with pytest.raises(ValueError, match="B,C,H,W"):
        tiny_model().encode(torch.randn(3, 16, 16))


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("config", [FLUX_LIKE, SD_LIKE], ids=["flux", "sd"])
def test_parity_with_diffusers(config, channels_last):
    # The plain path, diffusers' own, guards the optimised one: in-place SiLU and residual adds, and
    # channels_last under inference_mode as ClipEncoder runs it.
    model = tiny_model(config, seed=1)
    # Non-trivial norms and biases, so that a swapped or skipped parameter shows.
    state_dict = {k: v + 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(state_dict)
    pytest.importorskip("diffusers")
    from vae.diffusers_vae import autoencoder_kl_like

    reference = autoencoder_kl_like(config, state_dict)
    x = torch.randn(2, 3, 24, 16)
    with torch.no_grad():
        expected = reference.encode(x).latent_dist
        expected_video = reference.decode(expected.mode()).sample
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    with torch.inference_mode():
        z, posterior = model.encode(x.contiguous(memory_format=layout))
        video = model.decode(z)
    # channels_last convolutions sum in another order: within 1e-4, the bound every optimised path is held to.
    torch.testing.assert_close(posterior.mean, expected.mean, rtol=0, atol=1e-4)
    torch.testing.assert_close(posterior.logvar, expected.logvar, rtol=0, atol=1e-4)
    torch.testing.assert_close(video, expected_video, rtol=0, atol=1e-4)



def test_gradients_match_diffusers():
    # The in-place SiLU and residual adds must leave what autograd saved intact when the VAE is trained: a
    # corrupted saved tensor shows in the gradient that flows back through every layer to the input.
    pytest.importorskip("diffusers")
    from vae.diffusers_vae import autoencoder_kl_like

    model = tiny_model(FLUX_LIKE, seed=2).train()
    reference = autoencoder_kl_like(FLUX_LIKE, model.state_dict()).train()
    x = torch.randn(2, 3, 16, 16)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    model.decode(model.encode(ours)[0]).square().mean().backward()
    reference.decode(reference.encode(theirs).latent_dist.mode()).sample.square().mean().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6)
