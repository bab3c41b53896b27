"""Turn a trained VAE checkpoint and its discriminator into a shipped `weights/<preset>/` folder.

    .venv/bin/python scripts/ship_weights.py --vae-checkpoint RUN/vae/checkpoints/step-N \\
        --disc-checkpoint RUN/disc/checkpoints/step-M --train-data 'RUN/shards/train/*.tar' \\
        --held-out 'RUN/shards/val/*.tar' --out weights/small-f8

Writes the VAE in float16 (half the bytes; the model computes in float32 as it loads), the discriminator
as trained, and `card.json`: the latent scale that gives unit variance on the training clips, the training
runs' steps and wall time, the machine, and `jobs.evaluate_vae`'s figures on the held-out shards.
"""

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs import evaluate_vae  # noqa: E402
from pipeline.source.shard_urls import expand_input_spec  # noqa: E402
from pipeline.source.video_decode import ClipSampling  # noqa: E402
from pipeline.train.checkpoints import DISC_FILE, VAE_CONFIG_FILE, VAE_FILE  # noqa: E402
from pipeline.train.held_out_evaluation import load_held_out  # noqa: E402
from pipeline.train.training_log import read_metrics  # noqa: E402
from vae import load_model  # noqa: E402


def latent_scale(config: Path, weights: Path, train_data: str) -> float:
    """1 / std of the posterior means over training clips: the `scale_factor` that gives unit variance."""
    model = load_model(str(config), weights=weights)
    clips = load_held_out(expand_input_spec(train_data), "video", ClipSampling(8, 2, 8), 256, 16).clips
    with torch.no_grad():
        means = torch.cat([model.encode_moments(clips[i:i + 2]).chunk(2, dim=1)[0] for i in range(0, len(clips), 2)])
    return round(1.0 / float(means.std()), 4)


def run_facts(checkpoint: Path) -> dict:
    """The run's step count and its last validation line."""
    run = checkpoint.parents[1]
    val = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "val"]
    step = json.loads((checkpoint / "checkpoint.json").read_text())["step"]
    return {"steps": step, "last_validation": val[-1] if val else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae-checkpoint", type=Path, required=True)
    parser.add_argument("--disc-checkpoint", type=Path, required=True)
    parser.add_argument("--train-data", required=True)
    parser.add_argument("--held-out", required=True)
    parser.add_argument("--preset", default="small-f8")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--wall-seconds", type=json.loads, default={},
                        help='JSON of each phase\'s wall time, e.g. {"vae": 3600, "disc": 600}')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vae_state = load_file(args.vae_checkpoint / VAE_FILE)
    save_file({name: value.half() for name, value in vae_state.items()}, args.out / "vae.safetensors")
    shutil.copyfile(args.disc_checkpoint / DISC_FILE, args.out / "discriminator.safetensors")
    scale = latent_scale(args.vae_checkpoint / VAE_CONFIG_FILE, args.out / "vae.safetensors", args.train_data)
    evaluation = evaluate_vae.evaluate(evaluate_vae.build_parser().parse_args([
        "--data", args.held_out, "--vae", str(args.vae_checkpoint / VAE_CONFIG_FILE),
        "--weights", str(args.out / "vae.safetensors"), "--disc-weights", str(args.out / "discriminator.safetensors"),
        "--clips-per-video", "8", "--max-clips", "16"]))
    print(evaluate_vae.format_results(evaluation))
    card = {
        "preset": args.preset,
        "scale_factor": scale,
        "vae_parameters": sum(v.numel() for v in vae_state.values()),
        "vae_bytes": (args.out / "vae.safetensors").stat().st_size,
        "discriminator_bytes": (args.out / "discriminator.safetensors").stat().st_size,
        "vae_run": {"checkpoint": args.vae_checkpoint.name, **run_facts(args.vae_checkpoint)},
        "disc_run": {"checkpoint": args.disc_checkpoint.name, **run_facts(args.disc_checkpoint)},
        "wall_seconds": args.wall_seconds,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "held_out": {key: value for key, value in evaluation.items() if key in ("video", "image")},
    }
    (args.out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"scale_factor for the {args.preset} preset: {scale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
