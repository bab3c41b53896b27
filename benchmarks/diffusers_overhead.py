"""What the job's encode path adds on top of diffusers, for each diffusers VAE class, in one run.

    python -m benchmarks.diffusers_overhead [--repeats 5]

For each class at a small random-init config, the same uint8 clip goes through
  - the job's path: `ClipEncoder.encode` (uint8 → [-1, 1], `DiffusersVAE.encode_moments`, posterior mode,
    the class's latent normalisation, fp32 on the CPU), with the model as `jobs.encode` loads it; and
  - diffusers directly: the same uint8 → [-1, 1] conversion (contiguous, as the job passes it),
    `vae.encode(x).latent_dist.mode()` and the normalisation its pipeline applies, under
    `torch.inference_mode`, on a copy of the same model as diffusers ships it (the job's may have chunked convs).
Both run interleaved in one process, `--repeats` rounds after a warm-up; the median of each is compared.
Overhead goal: at most 5%. diffusers is needed (`pip install -e .[diffusers]`).
"""

import argparse
import copy
import statistics
import time

import torch

# Small, but large enough that one encode takes tens of milliseconds: timer noise stays well under 5%.
CONFIGS = {
    "AutoencoderKLWan": ({"base_dim": 32, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                          "temperal_downsample": [False, True, True]}, (17, 128)),
    "AutoencoderKLHunyuanVideo15": ({"latent_channels": 16, "block_out_channels": [32, 32, 64, 64, 64],
                                     "layers_per_block": 1}, (17, 128)),
    "AutoencoderKLLTXVideo": ({"latent_channels": 32, "block_out_channels": [32, 32, 64, 64],
                               "decoder_block_out_channels": [32, 32, 64, 64], "layers_per_block": [1] * 5,
                               "decoder_layers_per_block": [1] * 5}, (17, 128)),
    "AutoencoderKLLTX2Video": ({"latent_channels": 32, "block_out_channels": [32, 32, 64, 64],
                                "decoder_block_out_channels": [32, 32, 64], "layers_per_block": [1] * 5,
                                "decoder_layers_per_block": [1] * 4}, (17, 128)),
    "AutoencoderKLCogVideoX": ({"block_out_channels": [32, 32, 64], "layers_per_block": 1, "latent_channels": 16,
                                "norm_num_groups": 8,
                                "down_block_types": ["CogVideoXDownBlock3D"] * 3,
                                "up_block_types": ["CogVideoXUpBlock3D"] * 3}, (17, 128)),
    "AutoencoderKLMochi": ({"encoder_block_out_channels": [32, 32, 64, 64], "decoder_block_out_channels": [32] * 4,
                            "latent_channels": 12, "layers_per_block": [1] * 5}, (13, 96)),
    "AutoencoderKL": ({"block_out_channels": [32, 64, 64, 64], "latent_channels": 16, "norm_num_groups": 32,
                       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                       "layers_per_block": 1, "scaling_factor": 0.3611, "shift_factor": 0.1159}, (8, 128)),
}


def _clip(frames: int, size: int) -> torch.Tensor:
    """uint8 (1, T, H, W, 3) frames, as the decoder hands them to the encoder."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, frames, size, size, 3), dtype=torch.uint8, generator=generator)


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


def _time_into(fn, rounds: list[float]) -> None:
    start = time.perf_counter()
    fn()
    rounds.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import diffusers

    import vae
    from pipeline.encode.clip_encoding import ClipEncoder

    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, fp32 CPU, {torch.get_num_threads()} "
          f"threads, random weights; median of {args.repeats} interleaved rounds after a warm-up")
    print(f"{'class':30s} {'clip':>12s} {'job (s)':>9s} {'direct (s)':>10s} {'overhead':>9s}  max |diff|")
    for class_name, (config, (frames_count, size)) in CONFIGS.items():
        torch.manual_seed(0)
        model = vae.load_model({"_class_name": class_name, **config})
        # The job's copy may have its convolutions chunked (--conv3d-chunk-elements auto); diffusers' stays as shipped.
        shipped = copy.deepcopy(model)
        encoder = ClipEncoder(model, torch.device("cpu"), torch.float32, max_frames_per_call=frames_count)
        frames = _clip(frames_count, size)
        ours, direct = encoder.encode(frames)[0], _direct(shipped, frames)  # warm-up, and the results compared
        job_rounds: list[float] = []
        direct_rounds: list[float] = []
        for _ in range(args.repeats):
            _time_into(lambda: encoder.encode(frames), job_rounds)
            _time_into(lambda: _direct(shipped, frames), direct_rounds)
        job, plain = statistics.median(job_rounds), statistics.median(direct_rounds)
        print(f"{class_name:30s} {f'{frames_count}x{size}²':>12s} {job:9.3f} {plain:10.3f} "
              f"{(job / plain - 1) * 100:+8.1f}%  {(ours - direct).abs().max().item():.1e}")
    print("overhead goal: <= +5%")


if __name__ == "__main__":
    main()
