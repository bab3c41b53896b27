"""python -m jobs.encode --input SPEC --output DIR --vae SPEC [--weights PATH] ...

Exit status: 0 all shards committed; 3 finished, some shards failed for good (see the manifest);
2 usage error; 1 unexpected fatal error.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.run.ray_session import configure_ray_environment

configure_ray_environment()

from jobs.arguments import JobArgumentParser  # noqa: E402
from jobs.exit_status import RERUN_RESUMES, run_job  # noqa: E402
from pipeline.cache.schema import LATENT_DTYPES  # noqa: E402
from pipeline.encode.model_loading import with_shipped_weights  # noqa: E402
from pipeline.encode.scoring import SCORE_NAMES, ScoreSettings  # noqa: E402
from pipeline.encode.settings import COMPUTE_DTYPES, EncodeSettings, RunSettings  # noqa: E402
from pipeline.errors import UsageError  # noqa: E402
from pipeline.run.job_summary import format_summary  # noqa: E402
from pipeline.run.runner import JobReport, run_encode_job  # noqa: E402
from pipeline.source.clip_plan import EXTRACTIONS  # noqa: E402
from pipeline.source.frame_readers import DECODERS  # noqa: E402
from pipeline.source.video_decode import RESIZERS  # noqa: E402
from vae.diffusers_vae import DIFFUSERS_CLASSES  # noqa: E402
from vae.presets import PRESETS, PRESETS_3D  # noqa: E402


def _pixels(text: str) -> int:
    height, _, width = text.lower().partition("x")
    try:
        return int(height) * int(width) if width else int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel count or HxW, got {text!r}") from None


def _factor(text: str) -> float | tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list of numbers, got {text!r}") from None
    return values[0] if len(values) == 1 and "," not in text else values


def build_parser() -> argparse.ArgumentParser:
    parser = JobArgumentParser(
        prog="python -m jobs.encode",
        description="Encode webdataset shards of video into a Parquet cache of VAE latents.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", required=True, help="shard spec: paths, globs, {00000..00127} ranges, comma lists, pipe:CMD")
    io.add_argument("--output", required=True, help="cache directory (one Parquet file per shard + _manifest.json)")
    io.add_argument("--overwrite", action="store_true", help="delete a cache made with another configuration first")
    io.add_argument("--trust-committed", action="store_true",
                    help="skip committed shards without checking whether their input changed (saves a request "
                         "per shard on object stores)")
    io.add_argument("--rethreshold", action="store_true",
                    help="the cache differs only in thresholds: recompute its `passed` column from the stored "
                         "scores (latents untouched), then go on with the job")

    model = parser.add_argument_group("model")
    model.add_argument("--vae", required=True,
                       help=f"a preset ({', '.join([*PRESETS, *PRESETS_3D])}), a JSON file of AutoEncoderConfig "
                            "fields, a diffusers config.json (AutoencoderKLHunyuanVideo natively; "
                            f"{', '.join(DIFFUSERS_CLASSES)} through the `diffusers` extra) or a diffusers VAE folder "
                            "(config.json + diffusion_pytorch_model.safetensors)")
    model.add_argument("--weights", help="checkpoint (.safetensors; .pt/.pth loaded with weights_only); default for "
                                         "small-f8: the weights in weights/small-f8/ (with its --disc-weights); "
                                         "for a diffusers VAE folder: its diffusion_pytorch_model.safetensors")
    model.add_argument("--allow-random-weights", action="store_true", help="encode with seeded random weights (tests, demos)")
    model.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    model.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="auto", help="auto: bf16 on GPU, fp32 on CPU")

    clips = parser.add_argument_group("clips")
    clips.add_argument("--num-frames", type=int, help="frames per clip (default 16 for 2D VAEs, 17 for 4x temporal VAEs)")
    clips.add_argument("--frame-stride", type=int, default=1, help="take every Nth source frame")
    clips.add_argument("--target-fps", type=float,
                       help="resample clips to this frame rate by timestamps (nearest source frames; variable "
                            "frame rate footage by time), instead of --frame-stride; each row records its real fps")
    clips.add_argument("--clips-per-video", type=int, default=1, help="at most this many non-overlapping clips, spread over the video")
    clips.add_argument("--max-pixels", type=_pixels, default=4096 * 4096,
                       help="refuse (as an error row, before decoding) videos whose declared frames are larger: "
                            "a pixel count or HxW (default: 4096x4096)")
    clips.add_argument("--max-frames", type=int, default=100_000, help="refuse videos with more frames")
    clips.add_argument("--resolution", help="N (short side to N, center crop NxN), HxW (cover, center crop) or "
                                             "native; default 256")
    clips.add_argument("--buckets", help="resolution, aspect-ratio and frame buckets instead of one --resolution: "
                                         "area=A[,A..];aspect=W:H,..|auto;frames=F[,F..];step=S (see README)")
    clips.add_argument("--clip-spans-from",
                       help="json:FIELD (seconds or HH:MM:SS.mmm) or json:FIELD:frames: one clip per [start, end] "
                            "span in each sample's JSON sidecar (scene cuts, video2dataset clips) instead of "
                            "--frame-extraction; the longest frame bucket that fits each span")
    clips.add_argument("--allow-upscale", action="store_true",
                       help="put a video smaller than every bucket into the smallest one, upscaled (default: an "
                            "error row)")
    clips.add_argument("--frame-extraction", choices=EXTRACTIONS, default="uniform",
                       help="clips per frame bucket: uniform (≤ --clips-per-video spread evenly, default), head, "
                            "chunk, slide (every --slide-step frames) or full (see README)")
    clips.add_argument("--slide-step", type=int, default=0,
                       help="source frames between slide clips (default: half a clip's span)")
    clips.add_argument("--resize-in", choices=RESIZERS, default="torch",
                       help="torch: antialiased bilinear on the decoded frames (the reference, default); decoder: "
                            "FFmpeg's swscale while decoding (see the README's sizing section for which is faster)")

    cache = parser.add_argument_group("cache")
    cache.add_argument("--latent-shift", type=_factor,
                       help="store scale * (latent - shift) with this shift: a number or one per latent channel "
                            "(comma list); default: the VAE's own (shift_factor, or latents_mean per channel)")
    cache.add_argument("--latent-scale", type=_factor,
                       help="the scale of that formula, likewise; default: the VAE's own (scaling_factor, or "
                            "scaling_factor / latents_std per channel)")
    cache.add_argument("--latent-dtype", choices=sorted(LATENT_DTYPES), default="float16", help="dtype of the stored latents")
    cache.add_argument("--store-moments", action="store_true", help="also store posterior mean and logvar (float32)")
    cache.add_argument("--keep-previews", action="store_true",
                       help="store a small JPEG of 4 source frames over their reconstruction per clip (for reports)")

    scores = parser.add_argument_group("scores and filtering")
    scores.add_argument("--scores", default=",".join(SCORE_NAMES),
                        help="comma list of psnr, ssim, lpips, disc, or none (the decoder runs only for "
                             "psnr/ssim/lpips); a score without its weights is null")
    scores.add_argument("--min-psnr", type=float, help="clips below this PSNR (dB) are not passed")
    scores.add_argument("--min-ssim", type=float, help="clips below this SSIM are not passed")
    scores.add_argument("--max-lpips", type=float, help="clips above this LPIPS are not passed")
    scores.add_argument("--min-disc", type=float, help="clips below this discriminator score are not passed")
    scores.add_argument("--lpips-backbone", help="torchvision VGG16 weights (vgg16-397923af.pth); default: "
                                                 "torchvision's cache directory if the file is there")
    scores.add_argument("--lpips-heads", help="LPIPS v0.1 linear heads (the lpips package's weights/v0.1/vgg.pth)")
    scores.add_argument("--disc-weights", help="NLayerDiscriminator3D checkpoint (Open-Sora 2.0 layout)")

    run = parser.add_argument_group("execution")
    run.add_argument("--address", help="join a Ray cluster (auto, HOST:PORT, ray://...); default: an embedded local Ray")
    run.add_argument("--num-actors", type=int, default=1, help="actors, each holding one model")
    run.add_argument("--cpus-per-actor", type=float, help="CPUs per actor; intra-op threads match (default: share all CPUs)")
    run.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (fractions share a GPU)")
    run.add_argument("--batch-size", type=int, default=4, help="clips of one shape encoded together")
    run.add_argument("--max-retries", type=int, default=2, help="retries of a failing shard before it is recorded as failed")
    run.add_argument("--shard-timeout", type=float, default=3600.0,
                     help="seconds one shard attempt may take before its actor is killed and the shard retried")
    run.add_argument("--max-shards-per-actor", type=int, default=50,
                     help="recycle an actor after this many shards, containing decoder leaks (0: never)")
    run.add_argument("--decoder", choices=DECODERS, default="auto",
                     help="decord, pyav, or auto: decord, then PyAV for a stream decord cannot decode (AV1 and others)")
    run.add_argument("--decode-workers", type=int, default=0,
                     help="threads decoding samples ahead of each actor's model (0: the actor's CPUs but one)")
    run.add_argument("--decode-buffer-mb", type=int, default=1024,
                     help="decoded frames those threads may hold per actor, in MiB")
    run.add_argument("--conv3d-chunk-elements", default="auto",
                     help="split a 3D convolution over channels when its input or output exceeds N elements: N, off, "
                          "or auto (an eighth of available memory, a quarter of free GPU memory, within 2**22..2**31; "
                          "2**31 for the native 3D VAE on CPU, where chunking saves no memory)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and the actors' output")
    return parser


def settings_from_args(args: argparse.Namespace) -> tuple[EncodeSettings, RunSettings]:
    if args.buckets is not None and args.resolution is not None:
        raise UsageError("--resolution and --buckets both set the frame size: give one (--resolution N is the "
                         "one-bucket case)")
    settings = EncodeSettings(
        vae=args.vae,
        weights=args.weights,
        allow_random_weights=args.allow_random_weights,
        num_frames=args.num_frames,
        frame_stride=args.frame_stride,
        clips_per_video=args.clips_per_video,
        resolution=args.resolution or "256",
        buckets=args.buckets,
        allow_upscale=args.allow_upscale,
        frame_extraction=args.frame_extraction,
        slide_step=args.slide_step,
        target_fps=args.target_fps,
        clip_spans_from=args.clip_spans_from,
        latent_dtype=args.latent_dtype,
        compute_dtype=args.compute_dtype,
        store_moments=args.store_moments,
        keep_previews=args.keep_previews,
        max_pixels=args.max_pixels,
        max_frames=args.max_frames,
        resize_in=args.resize_in,
        seed=args.seed,
        latent_shift=args.latent_shift,
        latent_scale=args.latent_scale,
        scoring=ScoreSettings(
            scores=() if args.scores.strip() == "none" else tuple(n.strip() for n in args.scores.split(",") if n.strip()),
            min_psnr=args.min_psnr,
            min_ssim=args.min_ssim,
            max_lpips=args.max_lpips,
            min_disc=args.min_disc,
            lpips_backbone=args.lpips_backbone,
            lpips_heads=args.lpips_heads,
            disc_weights=args.disc_weights,
        ),
    )
    run = RunSettings(
        num_actors=args.num_actors,
        cpus_per_actor=args.cpus_per_actor or 1.0,
        gpus_per_actor=args.gpus_per_actor,
        batch_size=args.batch_size,
        max_retries=args.max_retries,
        shard_timeout=args.shard_timeout,
        max_shards_per_actor=args.max_shards_per_actor,
        address=args.address,
        overwrite=args.overwrite,
        trust_committed=args.trust_committed,
        rethreshold=args.rethreshold,
        conv3d_chunk_elements=args.conv3d_chunk_elements,
        decoder=args.decoder,
        decode_workers=args.decode_workers,
        decode_buffer_mb=args.decode_buffer_mb,
        verbose=args.verbose,
        progress=not args.no_progress,
    )
    return settings, run


def run_from_args(args: argparse.Namespace) -> JobReport:
    weights = args.weights
    args.weights, args.disc_weights = with_shipped_weights(args.vae, args.weights, args.disc_weights,
                                                           args.allow_random_weights)
    if weights is None and args.weights is not None:
        also = f" (and {args.disc_weights})" if args.disc_weights else ""
        print(f"using the weights that ship for --vae {args.vae}: {args.weights}{also}", file=sys.stderr)
    try:
        settings, run = settings_from_args(args)
    except ValueError as exc:  # a bad --scores list
        raise UsageError(str(exc)) from exc
    if settings.weights is None:
        print("WARNING: encoding with RANDOM weights (--allow-random-weights): latents are meaningless; "
              "the cache metadata records this.", file=sys.stderr)
    return run_encode_job(args.input, args.output, settings, run, cpus_per_actor_explicit=args.cpus_per_actor is not None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        report = run_from_args(args)
        print(format_summary(report))
        return report.exit_status

    return run_job(work, "the encode job", resume_hint=RERUN_RESUMES)


if __name__ == "__main__":
    sys.exit(main())
