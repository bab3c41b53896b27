"""diffusers' VAEs behind `vae.load_model`, checked against the diffusers classes themselves at tiny configs."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")

import vae  # noqa: E402
from pipeline.cache.reader import LatentDataset  # noqa: E402
from pipeline.encode.clip_encoding import ClipEncoder  # noqa: E402
from pipeline.encode.model_loading import (  # noqa: E402
    build_model,
    check_num_frames,
    describe_vae,
    with_shipped_weights,
)
from pipeline.encode.scoring import ScoreSettings, psnr  # noqa: E402
from pipeline.encode.settings import EncodeSettings, RunSettings  # noqa: E402
from pipeline.encode.shard_encoder import ShardEncoder  # noqa: E402
from pipeline.errors import UsageError  # noqa: E402
from pipeline.run.job_plan import plan_job  # noqa: E402
from pipeline.run.runner import run_encode_job  # noqa: E402
from pipeline.source.video_decode import ClipSampling, decode_clips, parse_resolution  # noqa: E402
from tests.media import encode_mp4, moving_pattern, sample_video_path, write_tar  # noqa: E402
from vae import DIFFUSERS_CLASSES, DiffusersVAE, load_model  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"
# Small random-init configs of each class, each encoding and decoding a clip in well under a second on a CPU.
# Per-channel statistics are given as many values as latent channels (the published ones are for 16 or 12).
TINY = {
    "wan": dict(_class_name="AutoencoderKLWan", base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                latents_std=[1.5, 0.5, 2.0, 1.0]),
    # Wan 2.2 TI2V-5B's layout: residual blocks, 2x2 patchify in front (12 input channels), spatial factor 16.
    "wan2.2": dict(_class_name="AutoencoderKLWan", base_dim=8, decoder_base_dim=16, z_dim=4, dim_mult=[1, 1, 1, 1],
                   num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
                   in_channels=12, out_channels=12, scale_factor_spatial=16, latents_mean=[0.0] * 4,
                   latents_std=[1.0] * 4),
    "hunyuanvideo15": dict(_class_name="AutoencoderKLHunyuanVideo15", latent_channels=4,
                           block_out_channels=[8, 8, 16, 16, 16], layers_per_block=1),
    "ltx": dict(_class_name="AutoencoderKLLTXVideo", latent_channels=8, block_out_channels=[8, 8, 8, 8],
                decoder_block_out_channels=[8, 8, 8, 8], layers_per_block=[1] * 5, decoder_layers_per_block=[1] * 5),
    # LTX-Video 0.9.5's layout: separate spatial/temporal downsamplers and a timestep-conditioned decoder.
    "ltx0.9.5": dict(_class_name="AutoencoderKLLTXVideo", latent_channels=8, block_out_channels=[8] * 5,
                     down_block_types=["LTXVideo095DownBlock3D"] * 4, decoder_block_out_channels=[8, 16, 32],
                     layers_per_block=[1] * 5, decoder_layers_per_block=[1] * 4,
                     spatio_temporal_scaling=[True] * 4, decoder_spatio_temporal_scaling=[True] * 3,
                     decoder_inject_noise=[False] * 4,
                     downsample_type=["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
                     upsample_residual=[True] * 3, upsample_factor=[2] * 3, timestep_conditioning=True),
    "ltx2": dict(_class_name="AutoencoderKLLTX2Video", latent_channels=8, block_out_channels=[8, 16, 32, 64],
                 decoder_block_out_channels=[8, 16, 32], layers_per_block=[1] * 5, decoder_layers_per_block=[1] * 4),
    "cogvideox": dict(_class_name="AutoencoderKLCogVideoX", block_out_channels=[8, 8, 8],
                      down_block_types=["CogVideoXDownBlock3D"] * 3, up_block_types=["CogVideoXUpBlock3D"] * 3,
                      layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_height=64, sample_width=64,
                      scaling_factor=0.7, shift_factor=0.1),
    # Mochi's norms have 32 groups, so its channels are multiples of 32.
    "mochi": dict(_class_name="AutoencoderKLMochi", encoder_block_out_channels=[32] * 4,
                  decoder_block_out_channels=[32] * 4, latent_channels=4, layers_per_block=[1] * 5,
                  latents_mean=[0.0, 0.1, 0.2, 0.3], latents_std=[1.0, 0.9, 0.8, 0.7]),
    "kl": dict(_class_name="AutoencoderKL", block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
               up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
               sample_size=32, scaling_factor=0.3611, shift_factor=0.1159),
}
# (spatial factor, temporal factor, frame step, latent channels) of each, and the clip (T, H=W) it is tested on.
EXPECTED = {
    "wan": ((8, 4, 4, 4), (5, 16)),
    "wan2.2": ((16, 4, 4, 4), (5, 32)),
    "hunyuanvideo15": ((16, 4, 4, 4), (5, 32)),
    "ltx": ((32, 8, 8, 8), (9, 64)),
    "ltx0.9.5": ((32, 8, 8, 8), (9, 64)),
    "ltx2": ((32, 8, 8, 8), (9, 64)),
    "cogvideox": ((4, 4, 8, 4), (9, 16)),
    "mochi": ((8, 6, 6, 4), (7, 16)),
    "kl": ((2, 1, 1, 4), (2, 16)),
}


def reference(name: str, seed: int = 0) -> torch.nn.Module:
    """The diffusers model itself, with every weight randomised (some layers start at zero)."""
    config = TINY[name]
    torch.manual_seed(seed)
    model = getattr(diffusers, config["_class_name"]).from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        buffers = dict(model.named_buffers(recurse=False))
        if "latents_mean" in buffers:
            # LTX's statistics start as zeros and ones: give them values, so their use shows.
            buffers["latents_mean"].copy_(0.2 * torch.randn_like(buffers["latents_mean"]))
            buffers["latents_std"].copy_(0.5 + torch.rand_like(buffers["latents_std"]))
    return model


def write_folder(folder: Path, name: str, seed: int = 0) -> torch.nn.Module:
    """A diffusers VAE folder as save_pretrained leaves it; returns the model whose weights it holds."""
    model = reference(name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY[name]))
    save_file(model.state_dict(), folder / "diffusion_pytorch_model.safetensors")
    return model


def clip(name: str, batch: int = 1) -> torch.Tensor:
    frames, size = EXPECTED[name][1]
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, frames, size, size, generator=generator) * 2 - 1


def diffusers_encode_decode(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(posterior parameters, decoded mode) as diffusers computes them, (B*T, C, h, w) and (B*T, 3, H, W) for
    the 2D AutoencoderKL, which sees the frames as a batch."""
    if isinstance(model, diffusers.AutoencoderKL):
        x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)
    posterior = model.encode(x).latent_dist
    mode = posterior.mode()
    # A timestep-conditioned LTX decoder at timestep 0, the LTX pipelines' default.
    extra = (torch.zeros(mode.shape[0]),) if model.config.get("timestep_conditioning") else ()
    return posterior.parameters, model.decode(mode, *extra).sample


def frames_as_batch(video: torch.Tensor) -> torch.Tensor:
    return video.permute(0, 2, 1, 3, 4).flatten(0, 1)


@pytest.mark.parametrize("name", list(TINY))
def test_folder_and_config_with_weights_match_diffusers(tmp_path, name):
    expected = write_folder(tmp_path / "vae", name)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(TINY[name]))
    from_folder = load_model(tmp_path / "vae")
    from_config = load_model(str(config_path), weights=tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    (spatial, temporal, step, channels), _ = EXPECTED[name]
    x = clip(name)
    with torch.inference_mode():
        moments, decoded = diffusers_encode_decode(expected, x)
        for model in (from_folder, from_config):
            assert isinstance(model, DiffusersVAE) and model.kind == f"diffusers:{TINY[name]['_class_name']}"
            assert (model.spatial_factor, model.temporal_factor, model.frame_step, model.latent_channels) == (
                spatial, temporal, step, channels)
            ours = model.encode_moments(x)
            b, _, t, h, w = x.shape
            assert ours.shape == (b, 2 * channels, 1 + (t - 1) // temporal, h // spatial, w // spatial)
            if temporal == 1:  # the 2D model
                ours = frames_as_batch(ours)
            mean = ours[:, :channels]
            assert mean.std() > 0
            torch.testing.assert_close(mean, moments[:, :channels], atol=1e-5, rtol=0)
            torch.testing.assert_close(ours, moments, atol=1e-5, rtol=0)
            z, _ = model.encode(x)
            reconstruction = model.decode(z)
            assert reconstruction.shape == x.shape
            if temporal == 1:
                reconstruction = frames_as_batch(reconstruction)
            torch.testing.assert_close(reconstruction, decoded, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:.*non-meta parameter")
def test_normalisation_and_config_are_the_classes(tmp_path):
    kl, wan, mochi = load_model(TINY["kl"]), load_model(TINY["wan"]), load_model(TINY["mochi"])
    assert (kl.config.scale_factor, kl.config.shift_factor, kl.config.latents_mean) == (0.3611, 0.1159, None)
    assert (wan.config.scale_factor, wan.config.shift_factor) == (1.0, 0.0)
    assert (wan.config.latents_mean, wan.config.latents_std) == ([0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0])
    assert mochi.config.latents_std == [1.0, 0.9, 0.8, 0.7]
    assert load_model(TINY["cogvideox"]).config.scale_factor == 0.7
    assert load_model(TINY["hunyuanvideo15"]).config.scale_factor == 1.03682
    # LTX keeps its statistics as buffers in the weights file, which is where they are read from (also on meta).
    ltx = reference("ltx")
    state_dict = ltx.state_dict()
    state_dict["latents_mean"], state_dict["latents_std"] = torch.arange(8.0), torch.full((8,), 2.0)
    save_file(state_dict, tmp_path / "ltx.safetensors")
    for device in ("cpu", "meta"):
        with torch.device(device):
            model = load_model(TINY["ltx"], weights=tmp_path / "ltx.safetensors")
        assert model.config.latents_mean == [float(i) for i in range(8)] and model.config.latents_std == [2.0] * 8
    assert load_model(TINY["ltx"]).config.latents_mean == [0.0] * 8
    config = dataclasses.asdict(wan.config)
    assert json.loads(json.dumps(config)) == config
    assert config["class_name"] == "AutoencoderKLWan" and config["diffusers_config"]["dim_mult"] == [1, 1, 1, 1]
    assert not any(key.startswith("_") for key in config["diffusers_config"])


def test_fields_the_class_does_not_take_are_named():
    with pytest.raises(ValueError, match=r"unsupported AutoencoderKLWan fields in config dict \(diffusers .*\): "
                                         r"latent_channels, z_dims"):
        load_model({**TINY["wan"], "z_dims": 4, "latent_channels": 4})


def test_per_channel_statistics_must_fit_the_channels():
    with pytest.raises(ValueError, match="latents_mean has 16 values for 4 latent channels"):
        load_model({**TINY["wan"], "latents_mean": [0.0] * 16})


def test_weights_of_another_class_are_refused_by_key(tmp_path):
    write_folder(tmp_path / "ltx", "ltx")
    weights = tmp_path / "ltx" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ValueError) as error:
        load_model(TINY["wan"], weights=weights)
    message = str(error.value)
    assert str(weights) in message and "AutoencoderKLWan" in message
    assert "missing keys: decoder." in message and "unexpected keys: decoder." in message


def test_weights_of_another_config_are_refused_by_shape(tmp_path):
    torch.manual_seed(0)
    other = diffusers.AutoencoderKLWan.from_config({**TINY["wan"], "z_dim": 8, "latents_mean": None,
                                                    "latents_std": None})
    save_file(other.state_dict(), tmp_path / "z8.safetensors")
    expected = r"shape mismatches \(file vs model\): decoder\.conv_in\.weight \(8, 8, 3, 3, 3\) vs \(8, 4, 3, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        load_model(TINY["wan"], weights=tmp_path / "z8.safetensors")


def test_unsupported_class_lists_the_supported_ones(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "AutoencoderKLTemporalDecoder"}))
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert "AutoencoderKLTemporalDecoder" in str(error.value) and str(path) in str(error.value)
    assert all(name in str(error.value) for name in (*DIFFUSERS_CLASSES, "AutoencoderKLHunyuanVideo"))


def test_folder_without_config_says_so(tmp_path):
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(tmp_path)


def test_hunyuan_video_keeps_its_native_path():
    model = load_model({"_class_name": "AutoencoderKLHunyuanVideo", **vars(vae.PRESETS_3D["tiny-3d"])})
    assert isinstance(model, vae.AutoEncoder3D)


def test_without_diffusers_the_error_names_the_extra(monkeypatch, tmp_path):
    write_folder(tmp_path / "vae", "wan")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[diffusers\]"):
        load_model(tmp_path / "vae")
    with pytest.raises(UsageError, match=r"pip install -e \.\[diffusers\]"):
        describe_vae(EncodeSettings(vae=str(tmp_path / "vae"), allow_random_weights=True))


def test_the_package_imports_without_diffusers():
    code = ("import sys; sys.modules['diffusers'] = None; import vae, pipeline.encode.model_loading; "
            "print(vae.load_model('tiny').kind)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "autoencoder_2d"


def test_dropping_the_decoder_frees_it_and_encoding_goes_on():
    model = load_model(TINY["wan"])
    x = clip("wan")
    with torch.inference_mode():
        before = model.encode_moments(x)
    count = sum(p.numel() for p in model.parameters())
    del model.decoder
    assert model.decoder is None and sum(p.numel() for p in model.parameters()) < count
    assert not any(name.startswith("wrapped.decoder.") for name, _ in model.named_parameters())
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_moments(x), before, atol=0, rtol=0)
        with pytest.raises(RuntimeError, match="no decoder"):
            model.decode(torch.zeros(1, 4, 2, 2, 2))


def test_clips_that_do_not_fit_are_refused():
    model = load_model(TINY["ltx"])
    with pytest.raises(ValueError, match="it takes 1 \\+ 8k frames \\(nearest: 9 or 17\\)"):
        model.encode_moments(torch.zeros(1, 3, 13, 64, 64))
    with pytest.raises(ValueError, match="multiples of the spatial factor 32"):
        model.encode_moments(torch.zeros(1, 3, 9, 48, 64))


def test_tiling_is_on_for_clips_larger_than_a_tile():
    ours = load_model(TINY["kl"])
    assert ours.wrapped.use_tiling
    tiled = diffusers.AutoencoderKL.from_config(TINY["kl"]).eval()
    tiled.load_state_dict(ours.wrapped.state_dict())
    tiled.enable_tiling()
    x = torch.rand(1, 3, 1, 64, 64) * 2 - 1  # twice the config's 32-pixel sample_size
    with torch.inference_mode():
        moments = ours.encode_moments(x)[:, :, 0]
        torch.testing.assert_close(moments, tiled.encode(x[:, :, 0]).latent_dist.parameters)
        tiled.disable_tiling()
        assert not torch.allclose(moments, tiled.encode(x[:, :, 0]).latent_dist.parameters, atol=1e-4)


@pytest.mark.parametrize("name, wrong, nearest", [("wan", 14, "13 or 17"), ("ltx", 12, "9 or 17"),
                                                  ("cogvideox", 13, "9 or 17"), ("mochi", 9, "7 or 13")])
def test_describe_vae_and_frame_counts(tmp_path, name, wrong, nearest):
    write_folder(tmp_path / "vae", name)
    weights, disc_weights = with_shipped_weights(str(tmp_path / "vae"), None, None)
    assert (weights, disc_weights) == (str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"), None)
    settings = EncodeSettings(vae=str(tmp_path / "vae"), weights=weights)
    description = describe_vae(settings)
    assert json.loads(json.dumps(description)) == description
    (spatial, temporal, step, channels), _ = EXPECTED[name]
    assert description["kind"] == f"diffusers:{TINY[name]['_class_name']}"
    assert (description["spatial_factor"], description["temporal_factor"], description["latent_channels"]) == (
        spatial, temporal, channels)
    assert description["weights"] == weights and description["random_init_seed"] is None
    assert description["config"]["class_name"] == TINY[name]["_class_name"]
    assert description.get("frame_step", temporal) == step
    check_num_frames(1 + 2 * step, temporal, description.get("frame_step"))
    with pytest.raises(UsageError, match=f"--num-frames {wrong} .*use {nearest}"):
        check_num_frames(wrong, temporal, description.get("frame_step"))
    model = build_model(settings)
    assert isinstance(model, DiffusersVAE) and not model.training


def test_describe_vae_names_bad_weights(tmp_path):
    write_folder(tmp_path / "ltx", "ltx")
    write_folder(tmp_path / "wan", "wan")
    weights = str(tmp_path / "ltx" / "diffusion_pytorch_model.safetensors")
    settings = EncodeSettings(vae=str(tmp_path / "wan"), weights=weights)
    with pytest.raises(UsageError, match="do not fit AutoencoderKLWan.*missing keys"):
        describe_vae(settings)


def class_normalisation(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) as each class's diffusers pipeline normalises latents, read from the diffusers model:
    per channel `(latent - latents_mean) * scaling_factor / latents_std` (Wan and Mochi configs, LTX buffers),
    else `(latent - shift_factor) * scaling_factor`."""
    config = model.config
    buffers = dict(model.named_buffers(recurse=False))
    scaling = config.get("scaling_factor") or 1.0
    if "latents_mean" in buffers:
        mean, std = buffers["latents_mean"], buffers["latents_std"]
    elif config.get("latents_mean") is not None:
        mean, std = torch.tensor(config.latents_mean), torch.tensor(config.latents_std)
    else:
        return torch.tensor(float(config.get("shift_factor") or 0.0)), torch.tensor(float(scaling))
    return mean.view(-1, 1, 1, 1), scaling / std.view(-1, 1, 1, 1)


@pytest.mark.parametrize("name", list(TINY))
def test_clip_encoder_stores_each_class_latents_normalised_as_its_pipeline_does(tmp_path, name):
    expected = write_folder(tmp_path / "vae", name)
    encoder = ClipEncoder(load_model(tmp_path / "vae"), torch.device("cpu"), torch.float32, max_frames_per_call=9)
    frames = ((clip(name) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)  # (B, T, H, W, 3)
    latent, moments = encoder.encode(frames)
    x = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    with torch.inference_mode():
        parameters, decoded = diffusers_encode_decode(expected, x)
    channels = EXPECTED[name][0][3]
    mode = parameters[:, :channels]
    if mode.ndim == 4:  # the 2D model saw frames as a batch
        mode = mode.unflatten(0, (1, -1)).transpose(1, 2)
        decoded = decoded.unflatten(0, (1, -1)).transpose(1, 2)
    shift, scale = class_normalisation(expected)
    assert latent.shape == mode.shape and moments.shape[1] == 2 * channels
    torch.testing.assert_close(latent, (mode - shift) * scale, atol=1e-5, rtol=0)
    # Undoing the stored normalisation and decoding with diffusers is what the pipeline's scores decoded.
    torch.testing.assert_close(encoder.decode(latent), decoded, atol=1e-4, rtol=0)


def test_plan_job_refuses_a_frame_count_cogvideox_cannot_decode(tmp_path):
    write_folder(tmp_path / "vae", "cogvideox")
    settings = EncodeSettings(vae=str(tmp_path / "vae"), weights=str(tmp_path / "vae" / WEIGHTS), num_frames=13)
    with pytest.raises(UsageError, match="--num-frames 13 .*compresses time by 4 .*1 \\+ 8k frames.*use 9 or 17"):
        plan_job(str(tmp_path / "nothing-*.tar"), str(tmp_path / "cache"), settings)


@pytest.mark.parametrize("name", list(TINY))
def test_a_shard_caches_each_class_latents_of_the_decoded_frames(tmp_path, name):
    expected = write_folder(tmp_path / "vae", name)
    frames_count, size = EXPECTED[name][1]
    videos = {f"v{i}": encode_mp4(moving_pattern(frames_count + 2, 64, 80, seed=i)) for i in range(2)}
    write_tar(tmp_path / "shard-00000.tar", [(key, {"mp4": data}) for key, data in videos.items()])
    settings = EncodeSettings(vae=str(tmp_path / "vae"), weights=str(tmp_path / "vae" / WEIGHTS),
                              num_frames=frames_count, resolution=str(size), latent_dtype="float32",
                              scoring=ScoreSettings(scores=("psnr", "ssim")))
    plan = plan_job(str(tmp_path / "shard-00000.tar"), str(tmp_path / "cache"), settings)
    outcome = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1).process(plan.tasks[0])
    assert (outcome.clips, outcome.error_rows) == (2, 0)
    rows = list(LatentDataset(str(tmp_path / "cache"), columns=["sample_key", "psnr", "ssim"]))
    assert len(rows) == 2 and all(row["psnr"] is not None and row["ssim"] is not None for row in rows)
    shift, scale = class_normalisation(expected)
    spatial_factor = EXPECTED[name][0][0]
    for row in rows:
        (clip,) = decode_clips(videos[row["sample_key"]], ClipSampling(frames_count, 1, 1), parse_resolution(str(size)),
                               spatial_factor)
        x = clip.frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # the decoded frames, (1, 3, T, H, W)
        with torch.inference_mode():
            parameters, _ = diffusers_encode_decode(expected, x)
        mode = parameters[:, : EXPECTED[name][0][3]]
        if mode.ndim == 4:  # the 2D model saw frames as a batch
            mode = mode.unflatten(0, (1, -1)).transpose(1, 2)
        torch.testing.assert_close(row["latent"], ((mode - shift) * scale)[0], atol=1e-5, rtol=0)


def test_a_job_on_real_footage_with_a_wan_vae_reads_back_normalised_per_channel(tmp_path, local_ray):
    expected = write_folder(tmp_path / "vae", "wan")
    videos = {name: sample_video_path(f"{name}.mp4").read_bytes() for name in ("bikes", "carphone_pristine")}
    write_tar(tmp_path / "shard-00000.tar", [(name, {"mp4": data}) for name, data in videos.items()])
    settings = EncodeSettings(vae=str(tmp_path / "vae"), num_frames=5, frame_stride=2, clips_per_video=2,
                              resolution="32", latent_dtype="float32", store_moments=True,
                              weights=str(tmp_path / "vae" / WEIGHTS), scoring=ScoreSettings(scores=("psnr",)))
    report = run_encode_job(str(tmp_path / "shard-00000.tar"), str(tmp_path / "cache"), settings,
                            RunSettings(num_actors=1, cpus_per_actor=1, progress=False))
    assert report.exit_status == 0
    dataset = LatentDataset(str(tmp_path / "cache"), columns=["sample_key", "clip_index", "psnr"])
    shift, scale = class_normalisation(expected)
    assert dataset.normalisation.shift == tuple(TINY["wan"]["latents_mean"])
    torch.testing.assert_close(torch.tensor(dataset.normalisation.scale), scale.flatten(), rtol=1e-6, atol=0)
    rows = list(dataset)
    assert len(rows) == 4
    for row in rows:
        # The clip as the job decoded it, independently of the job: frames, then diffusers' own encode.
        clips = decode_clips(videos[row["sample_key"]], ClipSampling(5, 2, 2), parse_resolution("32"), 8)
        frames = clips[row["clip_index"]].frames.permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W) uint8
        with torch.inference_mode():
            mode = expected.encode(frames.float() / 127.5 - 1).latent_dist.mode()[0]
            torch.testing.assert_close(row["latent"], (mode - shift) * scale, atol=1e-5, rtol=0)
            decoded = expected.decode(dataset.normalisation.undo(row["latent"])[None]).sample
        reconstruction = decoded.clamp(-1, 1).add(1).div(2)
        assert psnr(frames.float() / 255, reconstruction).item() == pytest.approx(row["psnr"], abs=0.01)


@pytest.mark.parametrize("name", [name for name, ((_, temporal, _, _), _) in EXPECTED.items() if temporal > 1])
def test_chunked_conv3d_keeps_every_3d_class_outputs(tmp_path, name):
    write_folder(tmp_path / "vae", name)
    model = load_model(tmp_path / "vae")
    keys = list(model.state_dict())
    x = clip(name)
    with torch.inference_mode():
        moments = model.encode_moments(x)
        z = model.latent_normalisation.apply(moments[:, : model.latent_channels])
        decoded = model.decode(z)
        # Small enough that every conv of these tiny models splits its channels.
        assert vae.chunk_conv3d_layers(model, numel_limit=64) > 0
        torch.testing.assert_close(model.encode_moments(x), moments, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.decode(z), decoded, atol=1e-5, rtol=0)
    assert list(model.state_dict()) == keys


def test_the_job_chunks_conv3d_as_asked_with_the_same_latents(tmp_path):
    write_folder(tmp_path / "vae", "wan")
    write_tar(tmp_path / "shard-00000.tar", [("v", {"mp4": encode_mp4(moving_pattern(8, 32, 32, seed=3))})])
    settings = EncodeSettings(vae=str(tmp_path / "vae"), weights=str(tmp_path / "vae" / WEIGHTS), num_frames=5,
                              resolution="32", latent_dtype="float32", scoring=ScoreSettings(scores=("psnr",)))
    latents = {}
    for chunking in ("off", "64"):
        plan = plan_job(str(tmp_path / "shard-00000.tar"), str(tmp_path / chunking), settings)
        encoder = ShardEncoder(plan.settings, plan.cache_fields, plan.scoring, num_threads=1,
                               conv3d_chunk_elements=chunking)
        chunked = [m for m in encoder.encoder.model.modules() if isinstance(m, vae.ChannelChunkConv3D)]
        assert bool(chunked) == (chunking == "64") and all(m.numel_limit == 64 for m in chunked)
        encoder.process(plan.tasks[0])
        latents[chunking] = [row["latent"] for row in LatentDataset(str(tmp_path / chunking))]
    assert len(latents["off"]) == 1
    torch.testing.assert_close(latents["64"], latents["off"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(TINY))
def test_a_batch_of_clips_encodes_and_decodes_as_each_clip_alone(name):
    # diffusers' HunyuanVideo 1.5 cannot take more than one clip per call; the adapter must hide that.
    torch.manual_seed(0)
    model = load_model(TINY[name])
    x = clip(name, batch=2)
    with torch.inference_mode():
        moments = model.encode_moments(x)
        alone = torch.cat([model.encode_moments(one) for one in x.split(1)])
        torch.testing.assert_close(moments, alone, atol=1e-5, rtol=0)
        z = model.latent_normalisation.apply(moments[:, : model.latent_channels])
        decoded = model.decode(z)
        torch.testing.assert_close(decoded, torch.cat([model.decode(one) for one in z.split(1)]), atol=1e-5, rtol=0)
