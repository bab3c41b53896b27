"""The production 2D encode path against diffusers' AutoencoderKL on the same weights, and against this
machine's own 3×3 convolution throughput.

    python -m benchmarks.encode_2d_vs_diffusers [--presets flux-ae,sd-ae] [--sizes 256,512] [--frames 4]

Same seeded random weights (converted by diffusers' own LDM converter), same uint8 frames, same threads, fp32
on CPU. Each variant starts from uint8 frames and ends with float16 latents, as a cache stores them:

- production: `ClipEncoder.encode` (channels-last model, inference_mode), then the cast;
- diffusers default: AutoencoderKL as it ships (contiguous, no_grad), frames converted to [-1, 1] NCHW;
- diffusers channels-last: the same model and input moved to channels-last, the best a user can do by hand.

Variants take turns for `--repeats` rounds after a warm-up; the best time of each is kept, so a slow spell
of a shared machine does not fall on one of them only. The convolution ceiling: every convolution call of
one encode is recorded with hooks, and each distinct (layer, input shape) is then timed alone on a random
input of that shape, channels-last as the encoder runs it; their sum is how long the encode would take if it
did nothing but convolve at this machine's measured rate for those shapes. The encoder's share is that time
over its real time (1.0: nothing but convolutions), and the FLOP rate is the convolutions' FLOPs over it.
"""

import argparse
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._common import best_times


def conv_ceiling(model: nn.Module, run: Callable[[], object], repeats: int) -> tuple[float, int]:
    """(seconds the convolutions of one `run()` take timed alone, their FLOPs; 2 per multiply-add)."""
    calls: dict[tuple[int, tuple[int, ...]], list] = {}

    def record(module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        key = (id(module), tuple(inputs[0].shape))
        if key not in calls:
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            calls[key] = [module, inputs[0].shape, 0, 2 * output.numel() * kernel]
        calls[key][2] += 1

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    inputs = {key: torch.randn(shape).contiguous(memory_format=torch.channels_last)
              for key, (_, shape, _, _) in calls.items()}
    with torch.inference_mode():
        alone = best_times({str(key): (lambda key=key: calls[key][0](inputs[key])) for key in calls}, repeats)
    seconds = sum(alone[str(key)] * count for key, (_, _, count, _) in calls.items())
    return seconds, sum(flops * count for _, _, count, flops in calls.values())


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
    conv_seconds, flops = conv_ceiling(encoder.model, production, repeats)
    return {
        **{f"{name}_fps": frames / value for name, value in seconds.items()},
        "conv_share": conv_seconds / seconds["production"],
        "conv_ceiling_gflops": flops / conv_seconds / 1e9,
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
                  f"its convolutions timed alone ({result['conv_ceiling_gflops']:.0f} GFLOP/s) are "
                  f"{result['conv_share']:.0%} of its time")


if __name__ == "__main__":
    main()
