"""The VAEs this project does not implement itself, run through diffusers behind the native models' interface.

`DiffusersVAE` wraps an instance of one of `DIFFUSERS_CLASSES` (Wan 2.1/2.2, HunyuanVideo 1.5, LTX-Video, LTX-2,
CogVideoX, Mochi and the 2D AutoencoderKL of SD/SDXL/Flux) and gives the pipeline what `AutoEncoder2D` and
`AutoEncoder3D` give: `encode_moments`, `decode` of scaled latents, the spatial and temporal factors and the
latent normalisation. diffusers is optional and imported only when such a model is built.
"""

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from vae.checkpoint import load_weights_strictly
from vae.distributions import DiagonalGaussianDistribution
from vae.latent_normalisation import LatentNormalisation

DIFFUSERS_CLASSES = (
    "AutoencoderKLWan",
    "AutoencoderKLHunyuanVideo15",
    "AutoencoderKLLTXVideo",
    "AutoencoderKLLTX2Video",
    "AutoencoderKLCogVideoX",
    "AutoencoderKLMochi",
    "AutoencoderKL",
)
# diffusers' HunyuanVideo 1.5 attention builds a (B, S, S) causal mask that broadcasts against the head axis,
# not the batch (diffusers 0.42): a batch of more than one clip fails there, so these classes get one per call.
_ONE_CLIP_PER_CALL = frozenset({"AutoencoderKLHunyuanVideo15"})
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INSTALL_HINT = "pip install -e .[diffusers]"


@dataclass
class DiffusersVAEConfig:
    class_name: str
    # The diffusers config with every default filled in (what `from_config` built), without its `_` keys.
    diffusers_config: dict[str, Any]
    # diffusers' scaling_factor and shift_factor where the class has them, and per-channel statistics (Wan,
    # Mochi configs; LTX buffers): together they make `DiffusersVAE.latent_normalisation`.
    scale_factor: float = 1.0
    shift_factor: float = 0.0
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None
    sample: bool = False
    # diffusers' own tiling (switched on when the model is built), which it uses only for clips larger than
    # one of its tiles.
    use_tiling: bool = True


def import_diffusers() -> Any:
    try:
        return importlib.import_module("diffusers")
    except ImportError as error:
        raise ImportError(f"diffusers VAEs need the optional dependency diffusers: {INSTALL_HINT}") from error


def diffusers_folder_weights(spec: object) -> Path | None:
    """The weights file of a diffusers VAE folder `spec`; None for any other spec or a folder without one."""
    if not isinstance(spec, (str, Path)) or not Path(spec).is_dir():
        return None
    path = Path(spec) / WEIGHTS_NAME
    return path if path.is_file() else None


def _prod(values: Any) -> int:
    return math.prod(int(v) for v in values)


def _ltx_factors(config: dict[str, Any]) -> tuple[int, int]:
    """LTX-Video and LTX-2 halve H/W and/or T in the down blocks whose `spatio_temporal_scaling` is set:
    the first LTX-Video blocks in all three, later ones (and LTX-2) as their `downsample_type` says.
    diffusers' own `*_compression_ratio` assume every scaling block halves all three, which the blocks of
    LTX-Video 0.9.5+ and LTX-2 do not (unless their config sets the ratios)."""
    blocks = config["down_block_types"]
    scaling = config["spatio_temporal_scaling"]
    if isinstance(scaling, bool):
        scaling = [scaling] * len(blocks)
    kinds = config.get("downsample_type") or ["conv"] * len(blocks)
    spatial = temporal = 1
    for block, scales, kind in zip(blocks, scaling, kinds):
        if not scales:
            continue
        if block == "LTXVideoDownBlock3D":
            kind = "conv"
        spatial *= 2 if kind in ("conv", "spatial", "spatiotemporal") else 1
        temporal *= 2 if kind in ("conv", "temporal", "spatiotemporal") else 1
    return config["patch_size"] * spatial, config["patch_size_t"] * temporal


# (spatial factor, temporal factor) from each class's config, as its architecture compresses (not as
# fields like Wan's `scale_factor_spatial` claim).
_FACTORS: dict[str, Callable[[dict[str, Any]], tuple[int, int]]] = {
    "AutoencoderKL": lambda c: (2 ** (len(c["block_out_channels"]) - 1), 1),
    "AutoencoderKLCogVideoX": lambda c: (2 ** (len(c["block_out_channels"]) - 1), int(c["temporal_compression_ratio"])),
    "AutoencoderKLWan": lambda c: (
        (c["patch_size"] or 1) * 2 ** (len(c["dim_mult"]) - 1), 2 ** sum(c["temperal_downsample"])
    ),
    "AutoencoderKLHunyuanVideo15": lambda c: (c["spatial_compression_ratio"], c["temporal_compression_ratio"]),
    "AutoencoderKLMochi": lambda c: (_prod(c["spatial_expansions"]), _prod(c["temporal_expansions"])),
    "AutoencoderKLLTXVideo": _ltx_factors,
    "AutoencoderKLLTX2Video": _ltx_factors,
}


def _latent_channels(class_name: str, config: dict[str, Any]) -> int:
    return config["z_dim"] if class_name == "AutoencoderKLWan" else config["latent_channels"]


class DiffusersVAE(nn.Module):
    """A diffusers VAE as this project's models are: video (B,3,T,H,W) in [-1,1] with T = 1 + frame_step*k,
    latents (B, latent_channels, 1 + (T-1)/temporal_factor, H/spatial_factor, W/spatial_factor).

    `decode` takes normalised latents (`latent_normalisation`, per channel for Wan, LTX and Mochi), like the
    native models.
    `del model.decoder` drops the wrapped model's decoder (an encode-only job), freeing its weights.
    """

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        class_name = type(wrapped).__name__
        if class_name not in DIFFUSERS_CLASSES:
            raise ValueError(f"{class_name} is not one of the supported diffusers VAEs: {', '.join(DIFFUSERS_CLASSES)}")
        self.wrapped = wrapped
        self.kind = f"diffusers:{class_name}"
        values = {k: v for k, v in dict(wrapped.config).items() if not k.startswith("_")}
        # Tuples become lists, so the config compares equal to its JSON round trip in the cache metadata.
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        self._spatial_factor, self._temporal_factor = _FACTORS[class_name](values)
        self._latent_channels = int(_latent_channels(class_name, values))
        self.config = DiffusersVAEConfig(
            class_name=class_name,
            diffusers_config=values,
            scale_factor=float(values.get("scaling_factor") or 1.0),
            shift_factor=float(values.get("shift_factor") or 0.0),
        )
        self._set_channel_stats(values.get("latents_mean"), values.get("latents_std"))
        if self.config.use_tiling and hasattr(wrapped, "enable_tiling"):
            wrapped.enable_tiling()

    @property
    def spatial_factor(self) -> int:
        return self._spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self._temporal_factor

    @property
    def frame_step(self) -> int:
        """Valid clips have 1 + frame_step*k frames. CogVideoX's decoder restores 1 + 4(t-1) frames only from
        an odd number t of latent frames (an even t decodes to 4t), so it takes 1 + 8k frames."""
        if self.config.class_name == "AutoencoderKLCogVideoX":
            return 2 * self._temporal_factor
        return self._temporal_factor

    @property
    def latent_channels(self) -> int:
        return self._latent_channels

    @property
    def latent_normalisation(self) -> LatentNormalisation:
        """Per channel `(latent - latents_mean) * scaling_factor / latents_std` where the class has statistics
        (as the Wan, LTX and Mochi pipelines normalise), else `scaling_factor * (latent - shift_factor)`."""
        config = self.config
        if config.latents_mean is not None and config.latents_std is not None:
            return LatentNormalisation.from_channel_stats(config.latents_mean, config.latents_std, config.scale_factor)
        return LatentNormalisation(config.shift_factor, config.scale_factor)

    @property
    def decoder(self) -> nn.Module | None:
        return self.wrapped.decoder

    @decoder.deleter
    def decoder(self) -> None:
        # None rather than a missing attribute: `model.decoder` stays readable, as diffusers' own code reads it
        # (`if self.decoder is not None`), and `decode` can say why it cannot run.
        self.wrapped.decoder = None

    def load_weights(self, state_dict: dict[str, Tensor], source: str) -> None:
        """Every key of diffusers' layout (`diffusion_pytorch_model.safetensors`) must fit, by name and shape."""
        load_weights_strictly(self.wrapped, state_dict, source)
        if "latents_mean" in state_dict and "latents_std" in state_dict:
            # LTX keeps its statistics as buffers; the file's copy is real even when the model is on meta.
            self._set_channel_stats(state_dict["latents_mean"].tolist(), state_dict["latents_std"].tolist())

    def _set_channel_stats(self, mean: list[float] | None, std: list[float] | None) -> None:
        # Not getattr: for a class with these in its config, diffusers answers that with a deprecation warning.
        buffers = dict(self.wrapped.named_buffers(recurse=False))
        if mean is None and "latents_mean" in buffers:
            if buffers["latents_mean"].is_meta:
                # A model built on the meta device holds no values; diffusers initialises these to zeros and ones.
                mean, std = [0.0] * self._latent_channels, [1.0] * self._latent_channels
            else:
                mean, std = buffers["latents_mean"].tolist(), buffers["latents_std"].tolist()
        for name, values in (("latents_mean", mean), ("latents_std", std)):
            if values is not None and len(values) != self._latent_channels:
                raise ValueError(f"{self.config.class_name} {name} has {len(values)} values for "
                                 f"{self._latent_channels} latent channels")
        self.config.latents_mean = None if mean is None else [float(v) for v in mean]
        self.config.latents_std = None if std is None else [float(v) for v in std]

    def _check_video(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected video (B,3,T,H,W), got shape {tuple(x.shape)}")
        frames, height, width = x.shape[2:]
        step, s = self.frame_step, self.spatial_factor
        if (frames - 1) % step:
            below = 1 + (frames - 1) // step * step
            raise ValueError(f"a clip of {frames} frames does not fit {self.config.class_name}: it takes 1 + {step}k "
                             f"frames (nearest: {below} or {below + step})")
        if height % s or width % s:
            raise ValueError(f"height and width ({height}x{width}) must be multiples of the spatial factor {s}")

    def encode_moments(self, x: Tensor) -> Tensor:
        """Posterior moments `cat([mean, logvar], dim=1)` (diffusers' `latent_dist.parameters`), unscaled,
        (B, 2*latent_channels, t, h, w)."""
        self._check_video(x)
        # diffusers reshapes activations with `.view`, which needs the contiguous layout.
        x = x.contiguous()
        if self.temporal_factor == 1:
            frames = rearrange(x, "b c t h w -> (b t) c h w")
            moments = self.wrapped.encode(frames).latent_dist.parameters
            return rearrange(moments, "(b t) c h w -> b c t h w", b=x.shape[0])
        return self._calls(lambda clips: self.wrapped.encode(clips).latent_dist.parameters, x)

    def _calls(self, run: Callable[[Tensor], Tensor], batch: Tensor) -> Tensor:
        if self.config.class_name in _ONE_CLIP_PER_CALL and batch.shape[0] > 1:
            return torch.cat([run(clip) for clip in batch.split(1)])
        return run(batch)

    def encode(self, x: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution]:
        """Returns `(z, posterior)` with `z` the latent normalised by `latent_normalisation`."""
        posterior = DiagonalGaussianDistribution(self.encode_moments(x))
        latent = posterior.sample() if self.config.sample else posterior.mode()
        return self.latent_normalisation.apply(latent), posterior

    def decode(self, z: Tensor) -> Tensor:
        """Video (B, 3, 1 + temporal_factor*(t-1), h*spatial_factor, w*spatial_factor) from scaled latents `z`
        (B, latent_channels, t, h, w)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B,{self.latent_channels},t,h,w), got shape {tuple(z.shape)}")
        if self.wrapped.decoder is None:
            raise RuntimeError(f"{self.kind} has no decoder: it was dropped (del model.decoder)")
        latent = self.latent_normalisation.undo(z).contiguous()
        if self.temporal_factor == 1:
            frames = self.wrapped.decode(rearrange(latent, "b c t h w -> (b t) c h w")).sample
            return rearrange(frames, "(b t) c h w -> b c t h w", b=z.shape[0])
        if self.config.diffusers_config.get("timestep_conditioning"):
            # LTX decoders conditioned on a denoising timestep: 0, the LTX pipelines' default decode_timestep.
            return self.wrapped.decode(latent, z.new_zeros(z.shape[0])).sample
        return self._calls(lambda clips: self.wrapped.decode(clips).sample, latent)

    def forward(self, x: Tensor) -> tuple[Tensor, DiagonalGaussianDistribution, Tensor]:
        z, posterior = self.encode(x)
        return self.decode(z), posterior, z


def diffusers_vae_from_config(values: dict[str, Any], source: str) -> DiffusersVAE:
    """A randomly initialised `DiffusersVAE` from a diffusers config (its `_class_name` names the class); a field
    the class does not take is refused. `from_config` builds from local values only: nothing is downloaded."""
    class_name = values.get("_class_name")
    if class_name not in DIFFUSERS_CLASSES:
        raise ValueError(f"{source}: {class_name!r} is not a supported diffusers VAE; supported: "
                         f"{', '.join(DIFFUSERS_CLASSES)}")
    diffusers = import_diffusers()
    cls = getattr(diffusers, class_name)
    # diffusers would ignore (and log) a field its class does not take, building something else than the file says.
    accepted = set(inspect.signature(cls.__init__).parameters)
    unknown = sorted(k for k in values if not k.startswith("_") and k not in accepted)
    if unknown:
        raise ValueError(f"unsupported {class_name} fields in {source} (diffusers {diffusers.__version__}): "
                         f"{', '.join(unknown)}")
    return DiffusersVAE(cls.from_config(values))


def autoencoder_kl_like(config: Any, state_dict: dict[str, Tensor]) -> nn.Module:
    """diffusers' `AutoencoderKL` with the architecture of an `AutoEncoderConfig` (Flux or SD layout) and its
    weights, converted by diffusers' own LDM converter: the model a diffusers user would run in its place."""
    diffusers = import_diffusers()
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    levels = len(config.ch_mult)
    diffusers_config = dict(
        in_channels=config.in_channels, out_channels=config.out_ch,
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=[config.ch * m for m in config.ch_mult], layers_per_block=config.num_res_blocks,
        latent_channels=config.z_channels, norm_num_groups=32, use_quant_conv=config.use_quant_conv,
        use_post_quant_conv=config.use_quant_conv,
    )
    model = diffusers.AutoencoderKL(**diffusers_config).eval()
    model.load_state_dict(convert_ldm_vae_checkpoint(state_dict, diffusers_config), strict=True)
    return model
