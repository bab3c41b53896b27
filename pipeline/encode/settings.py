"""What an encode job produces (hashed, so a resume can refuse a changed job) and how it runs."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.cache.schema import LATENT_DTYPES
from pipeline.encode.scoring import ScoreSettings
from pipeline.errors import UsageError
from pipeline.source.clip_plan import EXTRACTIONS
from pipeline.source.clip_spans import parse_span_source
from pipeline.source.frame_readers import DECODERS
from pipeline.source.video_decode import RESIZERS

COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EncodeSettings:
    """Everything that changes the bytes of the cache. `num_frames=None` means the VAE's default."""

    vae: str
    weights: str | None = None
    allow_random_weights: bool = False
    num_frames: int | None = None
    frame_stride: int = 1
    clips_per_video: int = 1
    resolution: str = "256"
    # `--buckets`: areas, aspect ratios and frame counts instead of one resolution (pipeline.source.buckets).
    buckets: str | None = None
    allow_upscale: bool = False
    frame_extraction: str = "uniform"
    slide_step: int = 0
    # Resample clips to this many frames per second by timestamps (instead of an integer frame_stride).
    target_fps: float | None = None
    # `json:FIELD[:frames]`: one clip per [start, end] span listed in the sample's JSON sidecar.
    clip_spans_from: str | None = None
    # Where frames are resized: "torch" (antialiased bilinear, the reference) or "decoder" (FFmpeg's swscale).
    resize_in: str = "torch"
    latent_dtype: str = "float16"
    compute_dtype: str = "auto"
    store_moments: bool = False
    keep_previews: bool = False
    max_pixels: int = 4096 * 4096
    max_frames: int = 100_000
    # Seeds the random initialisation, so every actor of a random-weights job holds the same model.
    seed: int = 0
    scoring: ScoreSettings = ScoreSettings()
    # Replace the VAE's own latent normalisation (z = scale * (latent - shift)): a number, or one per channel.
    latent_shift: float | tuple[float, ...] | None = None
    latent_scale: float | tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.latent_dtype not in LATENT_DTYPES:
            raise UsageError(f"--latent-dtype must be one of {sorted(LATENT_DTYPES)}, not {self.latent_dtype!r}")
        if self.frame_extraction not in EXTRACTIONS:
            raise UsageError(f"--frame-extraction must be one of {', '.join(EXTRACTIONS)}, not "
                             f"{self.frame_extraction!r}")
        if self.slide_step < 0:
            raise UsageError("--slide-step cannot be negative")
        if self.target_fps is not None and not 0 < self.target_fps < float("inf"):
            raise UsageError("--target-fps must be a positive number")
        if self.target_fps is not None and self.frame_stride != 1:
            raise UsageError("--target-fps picks frames by time; it replaces --frame-stride: give one")
        if self.clip_spans_from is not None:
            try:
                parse_span_source(self.clip_spans_from)
            except ValueError as error:
                raise UsageError(f"--clip-spans-from: {error}") from None
        if self.resize_in not in RESIZERS:
            raise UsageError(f"--resize-in must be one of {', '.join(RESIZERS)}, not {self.resize_in!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise UsageError(f"--compute-dtype must be one of {list(COMPUTE_DTYPES)}, not {self.compute_dtype!r}")
        for name in ("frame_stride", "clips_per_video"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_pixels < 1 or self.max_frames < 1:
            raise UsageError("--max-pixels and --max-frames must be positive")
        if self.num_frames is not None and self.num_frames < 1:
            raise UsageError("--num-frames must be at least 1")
        if self.weights is None and not self.allow_random_weights:
            raise UsageError(
                "no --weights given: encoding with a randomly initialised VAE produces meaningless latents. "
                "Pass --weights PATH (safetensors), or --allow-random-weights for tests and demos."
            )


@dataclass(frozen=True)
class RunSettings:
    """How the job runs; changing these never changes the cache."""

    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 4
    max_retries: int = 2
    # A stuck decoder never returns; killing its actor after this long is the only way out.
    shard_timeout: float | None = 3600.0
    # Recycling actors contains slow leaks in native decoders (0: never).
    max_shards_per_actor: int = 50
    address: str | None = None
    overwrite: bool = False
    # Skip checking committed shards' inputs for changes (a request per shard on an object store).
    trust_committed: bool = False
    # Recompute `passed` of a cache whose job differs only in thresholds, instead of refusing it.
    rethreshold: bool = False
    prefetch_samples: int = 4
    # Elements per Conv3d call before ChannelChunkConv3D splits it: "auto" (see conv3d_chunk_limit), "off", or N.
    conv3d_chunk_elements: str = "auto"
    # decord, pyav, or auto: decord, then PyAV for a stream decord cannot decode (AV1, some containers).
    decoder: str = "auto"
    # Threads decoding ahead of each actor's model (0: all of its CPUs but one), and the bytes of decoded
    # frames they may hold.
    decode_workers: int = 0
    decode_buffer_mb: int = 1024
    verbose: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.num_actors < 1:
            raise UsageError("--num-actors must be at least 1")
        if self.cpus_per_actor <= 0:
            raise UsageError("--cpus-per-actor must be positive")
        if self.gpus_per_actor < 0:
            raise UsageError("--gpus-per-actor cannot be negative")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.max_retries < 0:
            raise UsageError("--max-retries cannot be negative")
        if self.shard_timeout is not None and self.shard_timeout <= 0:
            raise UsageError("--shard-timeout must be positive")
        if self.max_shards_per_actor < 0:
            raise UsageError("--max-shards-per-actor cannot be negative")
        if self.decoder not in DECODERS:
            raise UsageError(f"--decoder must be one of {', '.join(DECODERS)}, not {self.decoder!r}")
        if self.decode_workers < 0 or self.decode_buffer_mb < 1:
            raise UsageError("--decode-workers cannot be negative and --decode-buffer-mb must be positive")
        chunking = self.conv3d_chunk_elements
        if chunking not in ("auto", "off") and not (chunking.isdigit() and int(chunking) > 0):
            raise UsageError(f"--conv3d-chunk-elements takes auto, off or a positive number of elements, not {chunking!r}")
        if self.rethreshold and self.overwrite:
            raise UsageError("--rethreshold keeps the cache and --overwrite deletes it: choose one")
