"""python -m jobs.train_vae --data SPEC --vae SPEC [--weights PATH] --out DIR ...

Trains or fine-tunes a VAE (and its 3D PatchGAN discriminator) on webdataset shards, data-parallel on Ray
Train. Checkpoints land in OUT/checkpoints/step-N/ and load as they are into `jobs.encode --weights` and
`--disc-weights`. Exit status: 0 done; 2 usage error (also a checkpoint that does not fit); 1 otherwise,
e.g. more than --max-bad-steps steps with a non-finite loss (OUT/bad_steps.jsonl names their clips).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import uuid
from pathlib import Path

from pipeline.run.ray_session import configure_ray_environment

configure_ray_environment()

from jobs.arguments import JobArgumentParser  # noqa: E402
from jobs.exit_status import run_job  # noqa: E402
from pipeline.cache.output_lock import OutputLock  # noqa: E402
from pipeline.errors import UsageError  # noqa: E402
from pipeline.source.shard_urls import InputSpecError, expand_input_spec  # noqa: E402
from pipeline.train.checkpoints import list_checkpoints  # noqa: E402
from pipeline.train.ray_training import TrainScaling, run_train_job  # noqa: E402
from pipeline.train.settings import TrainJob, TrainSettings  # noqa: E402
from pipeline.train.training_run import check_before_start, read_bad_steps  # noqa: E402
from vae.discriminator import DEFAULT_N_LAYERS, DEFAULT_NDF  # noqa: E402
from vae.losses import DISC_LOSS_TYPES  # noqa: E402
from vae.lpips import find_torchvision_vgg16  # noqa: E402
from vae.presets import PRESETS, PRESETS_3D  # noqa: E402

_DEFAULTS = TrainSettings()
# What a run writes into OUT, removed by --overwrite (nothing else there is touched).
_RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "metrics.html", "bad_steps.jsonl", "skipped.jsonl",
                "reconstructions", "ray")


def build_parser() -> argparse.ArgumentParser:
    parser = JobArgumentParser(prog="python -m jobs.train_vae",
                               description="Train or fine-tune a VAE and its 3D discriminator on webdataset shards.")
    io = parser.add_argument_group("data and output")
    io.add_argument("--data", required=True, help="training shards (spec as jobs.encode --input); split between workers")
    io.add_argument("--val-data", help="held-out shards for validation (whole videos never trained on)")
    io.add_argument("--out", required=True, help="output folder: checkpoints/, metrics.jsonl, metrics.html, reconstructions/")
    io.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    io.add_argument("--overwrite", action="store_true", help="delete a previous run's checkpoints and logs in --out first")

    model = parser.add_argument_group("models")
    model.add_argument("--vae", required=True, help=f"a preset ({', '.join([*PRESETS, *PRESETS_3D])}) or a config JSON")
    model.add_argument("--weights", help="start from these VAE weights (fine-tuning); default: random init")
    model.add_argument("--disc-weights", help="start the discriminator from these weights (size read from the file)")
    model.add_argument("--disc-ndf", type=int, default=DEFAULT_NDF, help="discriminator width (channels of its first conv)")
    model.add_argument("--disc-layers", type=int, default=DEFAULT_N_LAYERS, help="discriminator depth (n_layers)")
    model.add_argument("--lpips-backbone", help="VGG16 weights for the perceptual loss (default: torchvision's cache)")
    model.add_argument("--lpips-heads", help="LPIPS v0.1 linear heads; without them the perceptual loss is off")
    model.add_argument("--freeze-vae", action="store_true",
                       help="train only the discriminator against the reconstructions of the VAE's --weights")

    clips = parser.add_argument_group("clips")
    clips.add_argument("--num-frames", type=int, default=16, help="frames per clip (1 + 4k for a 4x temporal VAE)")
    clips.add_argument("--frame-stride", type=int, default=1, help="take every Nth source frame")
    clips.add_argument("--clips-per-video", type=int, default=4, help="clips taken from each video per epoch")
    clips.add_argument("--resolution", type=int, default=256, help="frames resized so their short side is this")
    clips.add_argument("--crop", type=int, help="random crop size (square) with random flips (default: --resolution)")
    clips.add_argument("--image-ratio", type=float, default=0.0,
                       help="fraction of steps that train on still images (.jpg/.png/.webp members) instead of clips")

    loss = parser.add_argument_group("losses (defaults: Open-Sora's)")
    loss.add_argument("--perceptual-weight", type=float, default=_DEFAULTS.perceptual_loss_weight,
                      help="LPIPS weight in the reconstruction loss (0 when no LPIPS weights are found)")
    loss.add_argument("--kl-weight", type=float, default=_DEFAULTS.kl_loss_weight, help="KL weight")
    loss.add_argument("--disc-start", type=int, default=_DEFAULTS.disc_start,
                      help="step from which the discriminator trains and the adversarial loss applies")
    loss.add_argument("--disc-factor", type=float, default=_DEFAULTS.disc_factor, help="factor on both adversarial losses")
    loss.add_argument("--disc-weight", type=float, default=_DEFAULTS.disc_weight, help="generator adversarial weight (times the adaptive weight)")
    loss.add_argument("--disc-loss", choices=DISC_LOSS_TYPES, default=_DEFAULTS.disc_loss_type, help="discriminator loss")
    loss.add_argument("--gradient-penalty-weight", type=float, default=_DEFAULTS.gradient_penalty_weight,
                      help="WGAN-GP penalty weight (with --disc-loss wgan-gp)")
    loss.add_argument("--degrade-fakes", type=float, default=0.0,
                      help="probability that a fake shown to the discriminator is a degraded real clip (blur, "
                           "re-compression, noise, frame drops, down/up-scaling) instead of a reconstruction")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--lr", type=float, default=_DEFAULTS.vae_lr, help="VAE learning rate (AdamW)")
    optim.add_argument("--disc-lr", type=float, default=_DEFAULTS.disc_lr, help="discriminator learning rate (AdamW)")
    optim.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay, help="AdamW weight decay")
    optim.add_argument("--warmup-steps", type=int, default=_DEFAULTS.warmup_steps, help="linear LR warm-up steps")
    optim.add_argument("--grad-clip", type=float, default=_DEFAULTS.grad_clip_norm, help="max gradient norm (inf: no clipping)")
    optim.add_argument("--ema-decay", type=float, default=_DEFAULTS.ema_decay, help="EMA decay of the VAE weights")
    optim.add_argument("--batch-size", type=int, default=1, help="clips per worker per step")
    optim.add_argument("--max-steps", type=int, default=1000, help="train up to this step")
    optim.add_argument("--max-bad-steps", type=int, default=10,
                       help="steps with a non-finite loss that are skipped before the job stops with exit status 1")
    optim.add_argument("--seed", type=int, default=0, help="seeds initialisation, crops, shard order and sampling")

    schedule = parser.add_argument_group("checkpoints, validation, logs")
    schedule.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (and one at the end)")
    schedule.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept")
    schedule.add_argument("--val-every", type=int, default=500, help="steps between validations (and at start and end)")
    schedule.add_argument("--val-clips", type=int, default=8, help="held-out clips per validation")
    schedule.add_argument("--log-every", type=int, default=10, help="steps between lines of metrics.jsonl")

    run = parser.add_argument_group("execution")
    run.add_argument("--address", help="join a Ray cluster (auto, HOST:PORT, ray://...); default: an embedded local Ray")
    run.add_argument("--num-workers", type=int, default=1, help="data-parallel training workers (each reads its own shards)")
    run.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    run.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs per worker; its torch threads match")
    run.add_argument("--max-failures", type=int, default=0,
                     help="worker-group restarts after a worker dies, each resuming from the newest checkpoint")
    run.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and the workers' output")
    return parser


def _shards(spec: str | None, flag: str) -> tuple[str, ...]:
    if spec is None:
        return ()
    try:
        return tuple(expand_input_spec(spec))
    except InputSpecError as error:
        raise UsageError(f"{flag}: {error}") from error


def _perceptual_weight(args: argparse.Namespace) -> tuple[float, str | None]:
    backbone = args.lpips_backbone or find_torchvision_vgg16()
    if backbone is not None and args.lpips_heads:
        return args.perceptual_weight, str(backbone)
    if args.perceptual_weight > 0:
        print("note: no LPIPS weights (--lpips-backbone and --lpips-heads): training without the perceptual loss",
              file=sys.stderr)
    return 0.0, None


def job_from_args(args: argparse.Namespace) -> tuple[TrainJob, TrainScaling]:
    data, val_data = _shards(args.data, "--data"), _shards(args.val_data, "--val-data")
    overlap = sorted(set(data) & set(val_data))
    if overlap:
        raise UsageError(f"--val-data must be held out, but these shards are also in --data: {', '.join(overlap)}")
    perceptual_weight, backbone = _perceptual_weight(args)
    settings = TrainSettings(
        perceptual_loss_weight=perceptual_weight, kl_loss_weight=args.kl_weight, disc_start=args.disc_start,
        disc_factor=args.disc_factor, disc_weight=args.disc_weight, disc_loss_type=args.disc_loss,
        gradient_penalty_weight=args.gradient_penalty_weight, vae_lr=args.lr, disc_lr=args.disc_lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip_norm=args.grad_clip,
        ema_decay=args.ema_decay, freeze_vae=args.freeze_vae,
    )
    job = TrainJob(
        data=data, val_data=val_data, out=str(Path(args.out).absolute()), vae=args.vae, weights=args.weights,
        disc_weights=args.disc_weights, disc_ndf=args.disc_ndf, disc_layers=args.disc_layers,
        lpips_backbone=backbone, lpips_heads=args.lpips_heads if backbone else None,
        num_frames=args.num_frames, frame_stride=args.frame_stride, clips_per_video=args.clips_per_video,
        resolution=args.resolution, crop=args.crop or args.resolution, image_ratio=args.image_ratio,
        batch_size=args.batch_size, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, val_every=args.val_every, val_clips=args.val_clips,
        log_every=args.log_every, degrade_fakes=args.degrade_fakes, max_bad_steps=args.max_bad_steps,
        seed=args.seed, resume=args.resume, run_id=uuid.uuid4().hex[:12], threads_per_worker=args.cpus_per_worker,
        use_gpu=args.use_gpu, settings=settings,
    )
    if args.num_workers < 1 or args.num_workers > len(data):
        raise UsageError(f"--num-workers must be between 1 and the number of --data shards ({len(data)}), "
                         f"got {args.num_workers}: each worker reads its own shards")
    scaling = TrainScaling(num_workers=args.num_workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                           address=args.address, max_failures=args.max_failures)
    return job, scaling


def prepare_out(args: argparse.Namespace) -> None:
    """A previous run's checkpoints are resumed (--resume) or deleted (--overwrite), never trained over."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    checkpoints = list_checkpoints(out)
    if args.resume and not checkpoints:
        raise UsageError(f"--resume: {out} holds no checkpoint")
    if checkpoints and not (args.resume or args.overwrite):
        raise UsageError(f"{out} holds checkpoints of an earlier run (newest: {checkpoints[-1].name}); "
                         "pass --resume to continue it or --overwrite to start again")
    if args.overwrite:
        for name in _RUN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _train(job: TrainJob, scaling: TrainScaling, verbose: bool) -> int:
    try:
        run_train_job(job, scaling, verbose=verbose)
    except Exception:
        bad = read_bad_steps(Path(job.out))
        if len(bad) > job.max_bad_steps:
            named = "; ".join(f"step {b['step']}: {', '.join(b['keys'])}" for b in bad)
            print(f"error: {len(bad)} steps had a non-finite loss (over --max-bad-steps {job.max_bad_steps}): "
                  f"{named}", file=sys.stderr)
            return 1
        raise
    newest = list_checkpoints(Path(job.out))[-1]
    print(f"checkpoint: {newest}\nencode with it: python -m jobs.encode --vae {newest / 'vae_config.json'} "
          f"--weights {newest / 'vae.safetensors'} --disc-weights {newest / 'discriminator.safetensors'} ...")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        job, scaling = job_from_args(args)
        check_before_start(job, scaling.num_workers)
        Path(job.out).mkdir(parents=True, exist_ok=True)
        with OutputLock(job.out, "jobs.train_vae"):
            prepare_out(args)
            return _train(job, scaling, args.verbose)

    return run_job(work, "the training job", resume_hint="rerun with --resume to continue from the newest checkpoint")


if __name__ == "__main__":
    sys.exit(main())
