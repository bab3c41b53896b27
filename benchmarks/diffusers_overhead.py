"""What the job's encode path adds on top of diffusers, for each diffusers VAE class, in one run.

    python -m benchmarks.diffusers_overhead [--repeats 5] [--small-clips]

For each class at a small random-init config, the same uint8 clip goes through
  - the job's path: `ClipEncoder.encode` (uint8 → [-1, 1], `DiffusersVAE.encode_moments`, posterior mode,
    the class's latent normalisation, fp32 on the CPU), with the model as `jobs.encode` loads it; and
  - diffusers directly: the same uint8 → [-1, 1] conversion (contiguous, as the job passes it),
    `vae.encode(x).latent_dist.mode()` and the normalisation its pipeline applies, under
    `torch.inference_mode`, on a copy of the same model as diffusers ships it (the job's may have chunked convs).
Both run interleaved in one process, `--repeats` rounds after a warm-up; the median of each is compared.
Overhead goal: at most 5%. diffusers is needed (`pip install -e .[diffusers]`).

`table_rows(quick)` gives one row per class for `python -m benchmarks` (ratio diffusers-direct time / job time,
goal ≥ 0.95); `quick` uses `--small-clips` (about half a minute here).
"""

import argparse
import copy
import statistics

import torch

from benchmarks._common import interleaved_times, table_row, uint8_clip

# Per class: its config, the clip (frames, size) and the `--small-clips` one (about half the frames, a valid count,
# at 64²). The clips are small, but large enough that one encode takes tens of milliseconds: timer noise stays
# well under 5%.
CONFIGS = {
    "AutoencoderKLWan": ({"base_dim": 32, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                          "temperal_downsample": [False, True, True]}, (17, 128), (9, 64)),
    "AutoencoderKLHunyuanVideo15": ({"latent_channels": 16, "block_out_channels": [32, 32, 64, 64, 64],
                                     "layers_per_block": 1}, (17, 128), (9, 64)),
    "AutoencoderKLLTXVideo": ({"latent_channels": 32, "block_out_channels": [32, 32, 64, 64],
                               "decoder_block_out_channels": [32, 32, 64, 64], "layers_per_block": [1] * 5,
                               "decoder_layers_per_block": [1] * 5}, (17, 128), (9, 64)),
    "AutoencoderKLLTX2Video": ({"latent_channels": 32, "block_out_channels": [32, 32, 64, 64],
                                "decoder_block_out_channels": [32, 32, 64], "layers_per_block": [1] * 5,
                                "decoder_layers_per_block": [1] * 4}, (17, 128), (9, 64)),
    "AutoencoderKLCogVideoX": ({"block_out_channels": [32, 32, 64], "layers_per_block": 1, "latent_channels": 16,
                                "norm_num_groups": 8,
                                "down_block_types": ["CogVideoXDownBlock3D"] * 3,
                                "up_block_types": ["CogVideoXUpBlock3D"] * 3}, (17, 128), (9, 64)),
    "AutoencoderKLMochi": ({"encoder_block_out_channels": [32, 32, 64, 64], "decoder_block_out_channels": [32] * 4,
                            "latent_channels": 12, "layers_per_block": [1] * 5}, (13, 96), (7, 64)),
    "AutoencoderKL": ({"block_out_channels": [32, 64, 64, 64], "latent_channels": 16, "norm_num_groups": 32,
                       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                       "layers_per_block": 1, "scaling_factor": 0.3611, "shift_factor": 0.1159}, (8, 128), (4, 64)),
}


def _direct(model, frames: torch.Tensor) -> torch.Tensor:
    """The job's result computed with diffusers' own calls, as a user of the class would write it."""
    wrapped, normalisation = model.wrapped, model.latent_normalisation
    # Contiguous, as the job hands clips to diffusers (whose reshapes need it); the permuted view would reach
    # the convolutions channels-last, a different (on CPU, sometimes faster) kernel, not the job's overhead.
    x = frames.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0).contiguous()
    with torch.inference_mode():
        if model.temporal_factor == 1:
            images = x.transpose(1, 2).flatten(0, 1)
            mode = wrapped.encode(images).latent_dist.mode().unflatten(0, (1, -1)).transpose(1, 2)
        else:
            mode = wrapped.encode(x).latent_dist.mode()
        return normalisation.apply(mode)


def _measure_class(class_name: str, config: dict, frames_count: int, size: int, repeats: int) -> dict[str, float]:
    import vae
    from pipeline.encode.clip_encoding import ClipEncoder

    torch.manual_seed(0)
    model = vae.load_model({"_class_name": class_name, **config})
    # The job's copy may have its convolutions chunked (--conv3d-chunk-elements auto); diffusers' stays as shipped.
    shipped = copy.deepcopy(model)
    encoder = ClipEncoder(model, torch.device("cpu"), torch.float32, max_frames_per_call=frames_count)
    frames = uint8_clip(frames_count, size)
    ours, direct = encoder.encode(frames)[0], _direct(shipped, frames)  # warm-up, and the results compared
    times = interleaved_times({"job": lambda: encoder.encode(frames), "direct": lambda: _direct(shipped, frames)},
                              repeats)
    job_s, direct_s = statistics.median(times["job"]), statistics.median(times["direct"])
    return {"frames": frames_count, "size": size, "job_s": job_s, "direct_s": direct_s,
            "max_abs_diff": (ours - direct).abs().max().item()}


def measure(repeats: int = 5, small_clips: bool = False) -> dict[str, dict[str, float]]:
    """Per class: the clip's frames and size, the median job and direct seconds, the max |diff| of the latents."""
    return {class_name: _measure_class(class_name, config, *(small if small_clips else clip), repeats)
            for class_name, (config, clip, small) in CONFIGS.items()}


def table_rows(quick: bool) -> list[dict[str, object]]:
    """One row per class: the job's seconds per clip against diffusers called directly (≥ 0.95: ≤ 5% overhead)."""
    rows = []
    for class_name, r in measure(small_clips=quick).items():
        rows.append(table_row(f"job encode path (ClipEncoder) {class_name} {r['frames']}×{r['size']}², s per clip",
                              r["job_s"], f"diffusers called directly {r['direct_s']:.3g} s",
                              r["direct_s"] / r["job_s"], "≥ 0.95"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small-clips", action="store_true",
                        help="about half the frames at 64², as table_rows(quick=True)")
    args = parser.parse_args()
    import diffusers

    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, fp32 CPU, {torch.get_num_threads()} "
          f"threads, random weights; median of {args.repeats} interleaved rounds after a warm-up")
    print(f"{'class':30s} {'clip':>12s} {'job (s)':>9s} {'direct (s)':>10s} {'overhead':>9s}  max |diff|")
    for class_name, r in measure(args.repeats, args.small_clips).items():
        clip = f"{r['frames']}x{r['size']}²"
        print(f"{class_name:30s} {clip:>12s} {r['job_s']:9.3f} {r['direct_s']:10.3f} "
              f"{(r['job_s'] / r['direct_s'] - 1) * 100:+8.1f}%  {r['max_abs_diff']:.1e}")
    print("overhead goal: <= +5%")


if __name__ == "__main__":
    main()
