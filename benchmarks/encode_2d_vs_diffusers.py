"""The production 2D encode path against diffusers' AutoencoderKL on the same weights, and against this
machine's own 3×3 convolution throughput.

    python -m benchmarks.encode_2d_vs_diffusers [--presets flux-ae,sd-ae] [--sizes 256,512] [--frames 4]

Same seeded random weights (converted by diffusers' own LDM converter), same uint8 frames, same threads, fp32
on CPU. Each variant starts from uint8 frames and ends with float16 latents, as a cache stores them:

- production: `ClipEncoder.encode` (channels-last model, inference_mode), then the cast;
- diffusers default: AutoencoderKL as it ships (contiguous, no_grad), frames converted to [-1, 1] NCHW;
- diffusers channels-last: the same model and input moved to channels-last, the best a user can do by hand.

Variants take turns for `--repeats` rounds after a warm-up; the best time of each is kept, so a slow spell
of a shared machine does not fall on one of them only. The convolution ceiling: a 3×3 convolution at the
encoder's widest full-resolution layer, channels-last fp32, timed the same way; the encoder's share of it is
(FLOPs of every convolution in one encode, counted with hooks) / encode time / that convolution's FLOP rate.
"""

import argparse
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._common import best_times


def conv_flops(model: nn.Module, run: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of every Conv2d call during `run()`."""
    total = 0

    def count(module: nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2 * output.numel() * kernel

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def conv_ceiling(channels: int, size: int, repeats: int) -> float:
    """FLOP/s of one channels-last fp32 3×3 convolution, channels → channels at size², batch 1."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, channels, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = best_times({"conv": lambda: conv(x)}, repeats)["conv"]
    return 2 * size * size * channels * channels * 9 / seconds


def measure(preset: str, size: int, frames: int, repeats: int) -> dict[str, float]:
    """frames/s of the three variants, and the production path's share of the convolution ceiling."""
    from pipeline.encode.clip_encoding import ClipEncoder
    from vae.autoencoder_2d import AutoEncoder2D
    from vae.diffusers_vae import autoencoder_kl_like
    from vae.presets import PRESETS

    config = PRESETS[preset]
    torch.manual_seed(0)
    ours = AutoEncoder2D(config).eval()
    reference = autoencoder_kl_like(config, ours.state_dict())
    reference_cl = autoencoder_kl_like(config, ours.state_dict()).to(memory_format=torch.channels_last)
    del ours.decoder, reference.decoder, reference_cl.decoder
    encoder = ClipEncoder(ours, torch.device("cpu"), torch.float32)
    scale, shift = config.scale_factor, config.shift_factor
    clip = torch.randint(0, 256, (1, frames, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def production() -> torch.Tensor:
        return encoder.encode(clip)[0].to(torch.float16)

    def diffusers_run(model: nn.Module, layout: torch.memory_format) -> torch.Tensor:
        with torch.no_grad():
            x = clip[0].permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous(memory_format=layout)
            return ((model.encode(x).latent_dist.mode() - shift) * scale).to(torch.float16)

    variants = {
        "production": production,
        "diffusers": lambda: diffusers_run(reference, torch.contiguous_format),
        "diffusers_channels_last": lambda: diffusers_run(reference_cl, torch.channels_last),
    }
    seconds = best_times(variants, repeats)
    flops = conv_flops(encoder.model, production)
    ceiling = conv_ceiling(config.ch * config.ch_mult[0], size, repeats)
    return {
        **{f"{name}_fps": frames / value for name, value in seconds.items()},
        "conv_share": flops / seconds["production"] / ceiling,
        "conv_ceiling_gflops": ceiling / 1e9,
        "encoder_gflop_per_frame": flops / frames / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="flux-ae,sd-ae")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, {args.frames} frames, best of {args.repeats}; frames/s")
    for preset in args.presets.split(","):
        for size in map(int, args.sizes.split(",")):
            result = measure(preset, size, args.frames, args.repeats)
            print(f"{preset} {size}²: production {result['production_fps']:.2f}, diffusers "
                  f"{result['diffusers_fps']:.2f} ({result['production_fps'] / result['diffusers_fps']:.2f}x), "
                  f"diffusers channels-last {result['diffusers_channels_last_fps']:.2f} "
                  f"({result['production_fps'] / result['diffusers_channels_last_fps']:.2f}x); "
                  f"{result['conv_share']:.0%} of a 3x3 conv's {result['conv_ceiling_gflops']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
