"""The production 2D encode path against diffusers' AutoencoderKL on the same weights, and against this
machine's own 3×3 convolution throughput.

    python -m benchmarks.encode_2d_vs_diffusers [--presets flux-ae,sd-ae] [--sizes 256,512] [--frames 4]

Same seeded random weights (converted by diffusers' own LDM converter), same uint8 frames, same threads, fp32
on CPU. Each variant starts from uint8 frames and ends with float16 latents, as a cache stores them:

- production: `ClipEncoder.encode` (channels-last model, inference_mode), then the cast;
- diffusers default: AutoencoderKL as it ships (contiguous, no_grad), frames converted to [-1, 1] NCHW;
- diffusers channels-last: the same model and input moved to channels-last, the best a user can do by hand.

`--dtype bfloat16` runs all three in bf16: on CPUs with AMX (Sapphire Rapids and later) oneDNN's bf16
convolutions are several times its fp32 ones. `--compile` also times the production model under
`torch.compile` against itself eager.

Variants take turns for `--repeats` rounds after a warm-up; the best time of each is kept, so a slow spell
of a shared machine does not fall on one of them only. The convolution ceiling: every convolution call of
one encode is recorded with hooks, and each distinct (layer, input shape) is then timed alone on a random
input of that shape, channels-last as the encoder runs it; their sum is how long the encode would take if it
did nothing but convolve at this machine's measured rate for those shapes. The encoder's share is that time
over its real time (1.0: nothing but convolutions), and the FLOP rate is the convolutions' FLOPs over it.
"""

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._common import best_times, table_row, uint8_clip


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


def _models(preset: str, dtype: torch.dtype):
    """The production ClipEncoder and diffusers' AutoencoderKL as shipped and moved to channels-last, encoders
    only, on the same seeded weights in `dtype`."""
    from pipeline.encode.clip_encoding import ClipEncoder
    from vae.autoencoder_2d import AutoEncoder2D
    from vae.diffusers_vae import autoencoder_kl_like
    from vae.presets import PRESETS

    config = PRESETS[preset]
    torch.manual_seed(0)
    ours = AutoEncoder2D(config).eval()
    reference = autoencoder_kl_like(config, ours.state_dict()).to(dtype)
    reference_cl = autoencoder_kl_like(config, ours.state_dict()).to(dtype, memory_format=torch.channels_last)
    del ours.decoder, reference.decoder, reference_cl.decoder
    return ClipEncoder(ours, torch.device("cpu"), dtype), reference, reference_cl


def measure(preset: str, size: int, frames: int, repeats: int, dtype: torch.dtype = torch.float32,
            ceiling: bool = True) -> dict[str, float]:
    """frames/s of the three variants, all computing in `dtype`, and, with `ceiling`, the production path's share
    of the convolution ceiling (fp32 only: the ceiling is timed in fp32)."""
    from vae.presets import PRESETS

    encoder, reference, reference_cl = _models(preset, dtype)
    scale, shift = PRESETS[preset].scale_factor, PRESETS[preset].shift_factor
    clip = uint8_clip(frames, size)

    def production() -> torch.Tensor:
        return encoder.encode(clip)[0].to(torch.float16)

    def diffusers_run(model: nn.Module, layout: torch.memory_format) -> torch.Tensor:
        with torch.no_grad():
            x = clip[0].permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1).contiguous(memory_format=layout)
            return ((model.encode(x).latent_dist.mode() - shift) * scale).to(torch.float16)

    variants = {
        "production": production,
        "diffusers": lambda: diffusers_run(reference, torch.contiguous_format),
        "diffusers_channels_last": lambda: diffusers_run(reference_cl, torch.channels_last),
    }
    seconds = best_times(variants, repeats)
    result = {f"{name}_fps": frames / value for name, value in seconds.items()}
    if ceiling and dtype == torch.float32:
        conv_seconds, flops = conv_ceiling(encoder.model, production, repeats)
        result.update(conv_share=conv_seconds / seconds["production"], conv_ceiling_gflops=flops / conv_seconds / 1e9,
                      encoder_gflop_per_frame=flops / frames / 1e9)
    return result


def measure_compile(preset: str, size: int, frames: int, repeats: int) -> dict[str, float]:
    """The production encoder's model under `torch.compile` (inductor, weights frozen and prepacked for oneDNN)
    against the same model eager, fp32: the speed ratio, the compile time and the largest difference."""
    import torch._inductor.config as inductor

    from pipeline.encode.clip_encoding import frames_to_model_input

    encoder, _, _ = _models(preset, torch.float32)
    x = frames_to_model_input(uint8_clip(frames, size), torch.device("cpu"), torch.float32)
    eager = encoder.model.encode_moments
    with inductor.patch(freezing=True), torch.inference_mode():
        compiled = torch.compile(eager, dynamic=False)
        began = time.perf_counter()
        out = compiled(x)
        compile_seconds = time.perf_counter() - began
        seconds = best_times({"eager": lambda: eager(x), "compiled": lambda: compiled(x)}, repeats)
        max_diff = (out - eager(x)).abs().max().item()
    return {"speedup": seconds["eager"] / seconds["compiled"], "compile_seconds": compile_seconds, "max_diff": max_diff}


def table_rows(quick: bool) -> list[dict[str, object]]:
    """fp32 against diffusers as shipped (goal 1.5 at 256²) and channels-last, with the convolution share, for
    flux-ae and sd-ae (256², and 512² without the share unless quick); flux-ae 256² in bf16 against diffusers in
    bf16 and against our own fp32. torch.compile is left to `--compile`: it compiles for over a minute per shape here and gained
    1.03x (measured once), so it is not a path the job takes."""
    rows: list[dict[str, object]] = []
    fp32_fps = {}
    for preset in ("flux-ae", "sd-ae"):
        for size in (256,) if quick else (256, 512):
            # One frame at 512² (a call costs twice a 256² one, not four times) and its convolution share left to
            # 256², where it is the same bound: a full run under 20 minutes.
            result = measure(preset, size, frames=2 if size == 256 else 1, repeats=2, ceiling=size == 256)
            ours = fp32_fps[preset, size] = result["production_fps"]
            figure = f"2D encode {preset} {size}², fp32, frames/s"
            rows.append(table_row(figure, ours, f"diffusers AutoencoderKL as shipped {result['diffusers_fps']:.3g}",
                                  ours / result["diffusers_fps"], "≥ 1.5" if size == 256 else "-"))
            rows.append(table_row(figure, ours, "diffusers AutoencoderKL moved to channels-last "
                                  f"{result['diffusers_channels_last_fps']:.3g}",
                                  ours / result["diffusers_channels_last_fps"], "> 1.0"))
            if "conv_share" in result:
                rows.append(table_row(f"2D encode {preset} {size}², share of its time its convolutions take alone",
                                      result["conv_share"], f"its convolutions alone, "
                                      f"{result['conv_ceiling_gflops']:.0f} GFLOP/s", result["conv_share"], "≥ 0.6"))
    result = measure("flux-ae", 256, frames=2, repeats=2, dtype=torch.bfloat16)
    bf16, figure = result["production_fps"], "2D encode flux-ae 256², bf16, frames/s"
    rows.append(table_row(figure, bf16, f"diffusers AutoencoderKL as shipped, in bf16 {result['diffusers_fps']:.3g}",
                          bf16 / result["diffusers_fps"], "-"))
    rows.append(table_row(figure, bf16, f"our fp32 {fp32_fps['flux-ae', 256]:.3g}", bf16 / fp32_fps["flux-ae", 256], "-"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="flux-ae,sd-ae")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile against eager")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"{torch.get_num_threads()} threads, {args.frames} frames, {args.dtype}, best of {args.repeats}; frames/s")
    for preset in args.presets.split(","):
        for size in map(int, args.sizes.split(",")):
            result = measure(preset, size, args.frames, args.repeats, dtype)
            line = (f"{preset} {size}²: production {result['production_fps']:.2f}, diffusers "
                    f"{result['diffusers_fps']:.2f} ({result['production_fps'] / result['diffusers_fps']:.2f}x), "
                    f"diffusers channels-last {result['diffusers_channels_last_fps']:.2f} "
                    f"({result['production_fps'] / result['diffusers_channels_last_fps']:.2f}x)")
            if "conv_share" in result:
                line += (f"; its convolutions timed alone ({result['conv_ceiling_gflops']:.0f} GFLOP/s) are "
                         f"{result['conv_share']:.0%} of its time")
            print(line)
            if args.compile:
                compiled = measure_compile(preset, size, args.frames, args.repeats)
                print(f"  torch.compile: {compiled['speedup']:.2f}x eager after {compiled['compile_seconds']:.0f} s "
                      f"of compiling, max diff {compiled['max_diff']:.1e}")


if __name__ == "__main__":
    main()
