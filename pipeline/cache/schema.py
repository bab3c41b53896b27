"""Cache contract v1.2: the Parquet schema, row construction and the file-level metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

# "major.minor". A minor version only adds, so a reader of 1.x reads 1.0 to 1.x: 1.1 allows per-channel lists
# in the vae entry's shift_factor/scale_factor and adds `decoder`; 1.2 adds `bucket`. Caches written before
# minor versions existed say 1 (a number).
CONTRACT_VERSION = "1.2"
METADATA_KEY = b"video_latent_cache"
SHARD_METADATA_KEY = b"video_latent_cache.shard"

LATENT_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sample_key", pa.string()),
        ("source_shard", pa.string()),
        ("clip_index", pa.int32()),
        ("frame_start", pa.int32()),
        ("num_frames", pa.int32()),
        ("frame_stride", pa.int32()),
        ("fps", pa.float32()),
        ("src_height", pa.int32()),
        ("src_width", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("caption", pa.string()),
        ("meta", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("latent", pa.large_binary()),
        ("latent_shape", pa.list_(pa.int32())),
        ("latent_dtype", pa.string()),
        ("moments", pa.large_binary()),
        ("latent_mean", pa.float32()),
        ("latent_std", pa.float32()),
        ("psnr", pa.float32()),
        ("ssim", pa.float32()),
        ("lpips", pa.float32()),
        ("disc_score", pa.float32()),
        ("passed", pa.bool_()),
        ("preview", pa.large_binary()),
        # Contract 1.1: which decoder produced the frames (decord, or pyav for what decord cannot decode).
        ("decoder", pa.string()),
        # Contract 1.2: "HxWxF", the clip's size and frame count, for GROUP BY and bucketed batches.
        ("bucket", pa.string()),
    ]
)

# Latent bytes are near-incompressible; compressing them costs CPU on write and read for nothing.
BINARY_COLUMNS = ("latent", "moments", "preview")
COLUMN_COMPRESSION = {name: ("none" if name in BINARY_COLUMNS else "zstd") for name in SCHEMA.names}
DICTIONARY_COLUMNS = ["source_shard", "status", "latent_dtype", "error", "decoder", "bucket"]

SCORE_DEFINITIONS = {
    "psnr": "dB on [0,1] RGB from the clip's mean squared error, capped at 100 dB",
    "ssim": (
        "11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1, over the window's valid "
        "positions, per channel and frame, averaged"
    ),
    "lpips": "LPIPS VGG v0.1 per frame, averaged",
    "disc_score": "mean patch logit of NLayerDiscriminator3D on the source clip in [-1, 1]",
}


def tensor_to_bytes(tensor: torch.Tensor, dtype: str) -> bytes:
    """Raw little-endian, row-major bytes of `tensor` cast to `dtype` (a LATENT_DTYPES name)."""
    cast = tensor.detach().to("cpu", LATENT_DTYPES[dtype]).contiguous()
    if dtype == "bfloat16":
        # numpy has no bfloat16: the bit pattern travels as int16.
        cast = cast.view(torch.int16)
    array = cast.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def tensor_from_bytes(data: bytes, shape: list[int] | tuple[int, ...], dtype: str) -> torch.Tensor:
    """Inverse of `tensor_to_bytes`; copies, so the tensor is writable and owns its memory."""
    if dtype not in LATENT_DTYPES:
        raise ValueError(f"unknown latent dtype {dtype!r}; expected one of {sorted(LATENT_DTYPES)}")
    np_dtype = np.dtype("<i2") if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")
    array = np.frombuffer(data, dtype=np_dtype).reshape(tuple(shape)).astype(np_dtype.newbyteorder("="))
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


@dataclass(frozen=True)
class SampleIdentity:
    """What every row of one input sample shares."""

    file_name: str
    sample_key: str
    source_shard: str
    caption: str | None
    meta: str | None

    def row_key(self, clip_index: int) -> str:
        return f"{self.file_name}/{self.sample_key}/{clip_index}"


def _empty_row(sample: SampleIdentity) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(SCHEMA.names)
    row.update(
        sample_key=sample.sample_key,
        source_shard=sample.source_shard,
        caption=sample.caption,
        meta=sample.meta,
    )
    return row


def error_row(sample: SampleIdentity, reason: str) -> dict[str, Any]:
    """The single row that stands for a sample none of whose clips could be encoded."""
    row = _empty_row(sample)
    row.update(key=sample.row_key(-1), clip_index=-1, status="error", error=reason)
    return row


# Score name (as `pipeline.encode.scoring` computes them) → column.
SCORE_COLUMNS = {"psnr": "psnr", "ssim": "ssim", "lpips": "lpips", "disc": "disc_score"}


# What a bucket's name is made of, in every contract version (the `bucket` column came with 1.2).
BUCKET_COLUMNS = ("height", "width", "num_frames")


def bucket_name(height: int, width: int, num_frames: int) -> str:
    return f"{height}x{width}x{num_frames}"


def clip_row(
    sample: SampleIdentity,
    clip: Any,
    latent: torch.Tensor,
    latent_dtype: str,
    moments: torch.Tensor | None,
    scores: dict[str, float],
    passed: bool,
    preview: bytes | None = None,
) -> dict[str, Any]:
    """An `ok` row for one encoded clip; `clip` is a `pipeline.source.video_decode.DecodedClip`, `scores` holds the
    computed scores by name (the others stay null)."""
    stored = latent.to(LATENT_DTYPES[latent_dtype]).float()
    row = _empty_row(sample)
    row.update(
        key=sample.row_key(clip.clip_index),
        clip_index=clip.clip_index,
        frame_start=clip.frame_start,
        num_frames=clip.num_frames,
        frame_stride=clip.frame_stride,
        fps=clip.fps,
        src_height=clip.src_height,
        src_width=clip.src_width,
        height=clip.height,
        width=clip.width,
        status="ok",
        latent=tensor_to_bytes(latent, latent_dtype),
        latent_shape=list(latent.shape),
        latent_dtype=latent_dtype,
        moments=None if moments is None else tensor_to_bytes(moments, "float32"),
        latent_mean=float(stored.mean()),
        latent_std=float(stored.std()) if stored.numel() > 1 else 0.0,
        passed=passed,
        preview=preview,
        decoder=clip.decoder,
        bucket=bucket_name(clip.height, clip.width, clip.num_frames),
    )
    row.update({SCORE_COLUMNS[name]: value for name, value in scores.items()})
    return row


def contract_version_parts(version: object) -> tuple[int, int] | None:
    """(major, minor) of a cache's `contract_version`; None when it is not one."""
    if isinstance(version, int) and not isinstance(version, bool):
        return version, 0
    if isinstance(version, str):
        major, _, minor = version.partition(".")
        if major.isdigit() and minor.isdigit():
            return int(major), int(minor)
    return None


def readable_contract_version(version: object) -> bool:
    """Whether this code reads caches written under `version`: the same major version, this minor or older."""
    parts, ours = contract_version_parts(version), contract_version_parts(CONTRACT_VERSION)
    return parts is not None and ours is not None and parts[0] == ours[0] and parts[1] <= ours[1]


def cache_metadata(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """File-level key-value metadata; `fields` is the job's self-description (see runner)."""
    return {METADATA_KEY: json.dumps({"contract_version": CONTRACT_VERSION, **fields}, sort_keys=True).encode()}


def read_cache_metadata(schema_metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    if not schema_metadata or METADATA_KEY not in schema_metadata:
        raise ValueError("not a latent cache file: its Parquet metadata has no video_latent_cache entry")
    return json.loads(schema_metadata[METADATA_KEY])
