"""python -m jobs.evaluate_vae --data SPEC --vae SPEC --weights PATH [--disc-weights PATH] [--json PATH]

Measures a VAE (and its discriminator) on held-out shards: PSNR/SSIM of the reconstructions next to bicubic
down/up-sampling at the same number of values per frame, and the discriminator's pairwise ranking accuracy
of originals over degraded copies. Runs in this process (no Ray); prints a table, optionally writes JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from jobs.arguments import JobArgumentParser
from jobs.exit_status import run_job
from pipeline.encode.model_loading import with_shipped_weights
from pipeline.errors import UsageError
from pipeline.source.shard_urls import InputSpecError, expand_input_spec
from pipeline.source.video_decode import ClipSampling
from pipeline.train.held_out_evaluation import (
    evaluate_ranking,
    evaluate_reconstruction,
    load_held_out,
)
from vae import load_model
from vae.discriminator import load_discriminator


def build_parser() -> JobArgumentParser:
    parser = JobArgumentParser(prog="python -m jobs.evaluate_vae",
                               description="Measure a VAE and its discriminator on held-out shards.")
    parser.add_argument("--data", required=True, help="held-out shards (videos, and images if any)")
    parser.add_argument("--vae", required=True, help="a preset or a config JSON")
    parser.add_argument("--weights", help="VAE weights (default: the preset's shipped weights, if it has them)")
    parser.add_argument("--disc-weights", help="discriminator weights to rank originals over degraded copies "
                                               "(default: the preset's shipped one, with its shipped VAE)")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--frame-stride", type=int, default=2, help="take every Nth source frame")
    parser.add_argument("--clips-per-video", type=int, default=4, help="clips spread over each video")
    parser.add_argument("--resolution", type=int, default=256, help="short side to N, center N×N crop")
    parser.add_argument("--max-clips", type=int, default=16, help="video clips evaluated")
    parser.add_argument("--max-images", type=int, default=8, help="still images evaluated (0: none)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--json", help="also write the results here")
    return parser


def evaluate(args: Any) -> dict[str, Any]:
    try:
        urls = expand_input_spec(args.data)
    except InputSpecError as error:
        raise UsageError(f"--data: {error}") from error
    args.weights, args.disc_weights = with_shipped_weights(args.vae, args.weights, args.disc_weights)
    try:
        vae = load_model(args.vae, weights=args.weights)
        discriminator = load_discriminator(args.disc_weights) if args.disc_weights else None
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from error
    sampling = ClipSampling(args.num_frames, args.frame_stride, args.clips_per_video)
    sets = {"video": load_held_out(urls, "video", sampling, args.resolution, args.max_clips)}
    if args.max_images > 0:
        try:
            sets["image"] = load_held_out(urls, "image", ClipSampling(1), args.resolution, args.max_images)
        except ValueError:
            pass  # shards of videos only
    results: dict[str, Any] = {"vae": args.vae, "weights": args.weights, "disc_weights": args.disc_weights}
    for kind, held_out in sets.items():
        entry: dict[str, Any] = {"count": len(held_out.keys), "shape": list(held_out.clips.shape[1:])}
        entry.update(evaluate_reconstruction(vae, held_out))
        if discriminator is not None:
            entry["disc_ranking_accuracy"] = evaluate_ranking(discriminator, held_out, vae)
        results[kind] = entry
    return results


def format_results(results: dict[str, Any]) -> str:
    lines = []
    for kind in ("video", "image"):
        if kind not in results:
            continue
        entry = results[kind]
        vae, bicubic = entry["vae"], entry["bicubic_same_values"]
        lines.append(f"{kind}: {entry['count']} held-out clips of {'x'.join(map(str, entry['shape']))}")
        lines.append(f"  VAE reconstruction      PSNR {vae['psnr']:6.2f} dB  SSIM {vae['ssim']:.4f}")
        lines.append(f"  bicubic, same #values   PSNR {bicubic['psnr']:6.2f} dB  SSIM {bicubic['ssim']:.4f}"
                     f"  ({entry['values_per_frame']['latent']} of {entry['values_per_frame']['pixels']} values)")
        if "disc_ranking_accuracy" in entry:
            ranking = ", ".join(f"{name} {value:.2f}" for name, value in entry["disc_ranking_accuracy"].items())
            lines.append(f"  discriminator ranks the original higher: {ranking}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        torch.set_num_threads(args.threads)
        results = evaluate(args)
        print(format_results(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        return 0

    return run_job(work, "the evaluation")


if __name__ == "__main__":
    sys.exit(main())
