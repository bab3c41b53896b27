"""Planning an encode job: the cache's identity, the shards still to do, the metadata every file carries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from pipeline.cache_schema import SCORE_COLUMNS, SCORE_DEFINITIONS, cache_metadata
from pipeline.decode import parse_resolution
from pipeline.encode_settings import EncodeSettings, identity_hash
from pipeline.errors import UsageError
from pipeline.manifest import (
    MANIFEST_NAME,
    committed_files,
    load_manifest,
    read_committed_shard,
    shard_name,
    summarize,
)
from pipeline.model_loading import check_num_frames, default_num_frames, describe_vae
from pipeline.scoring import ScoringPlan, plan_scoring, weights_checksums
from pipeline.shard_processing import ShardTask
from pipeline.shard_urls import InputSpecError, check_unique_names, expand_input_spec
from pipeline.shard_writer import open_output_dir, sha256_of_file
from pipeline.storage import Location, locate
from pipeline.version import code_version


@dataclass(frozen=True)
class EncodePlan:
    settings: EncodeSettings
    vae: dict[str, Any]
    identity: dict[str, Any]
    job_hash: str
    tasks: list[ShardTask]
    skipped: list[str]
    committed: dict[str, dict[str, Any]]
    cache_fields: dict[bytes, bytes]
    scoring: ScoringPlan


def cache_identity(
    settings: EncodeSettings, vae_description: dict[str, Any], scoring: ScoringPlan, score_weights: dict[str, str | None]
) -> dict[str, Any]:
    """What a rerun must match to add to an existing cache: file paths stand in by their checksums."""
    produced = dataclasses.asdict(settings)
    del produced["vae"], produced["weights"]
    for path_field in ("lpips_backbone", "lpips_heads", "disc_weights"):
        del produced["scoring"][path_field]
    return {
        "vae": {k: v for k, v in vae_description.items() if k not in ("spec", "weights")},
        **produced,
        "scores_computed": list(scoring.computed),
        "score_weights_sha256": score_weights,
    }


def _committed_entry(location: Location, shard: dict[str, Any], manifest: dict[str, Any] | None) -> dict[str, Any]:
    """A committed file's manifest entry. Its footer cannot hold the file's own checksum: the previous
    manifest's is kept while the size still matches, else the file is hashed again."""
    size = location.fs.size(location.path)
    previous = (manifest or {}).get("shards", {}).get(shard_name(location), {})
    known = previous.get("sha256") if previous.get("size_bytes") == size else None
    return {**shard, "status": shard.get("status", "committed"), "path": location.url, "size_bytes": size,
            "sha256": known or sha256_of_file(location.url)}


def prepare_output(output: Location, job_hash: str, overwrite: bool) -> dict[str, dict[str, Any]]:
    """Create OUTPUT, clear `_tmp/`, and return the shards already committed by the same job."""
    open_output_dir(output)
    manifest = load_manifest(output.url)
    committed: dict[str, dict[str, Any]] = {}
    foreign = []
    for location in committed_files(output.url):
        metadata, shard = read_committed_shard(location)
        if metadata.get("job_hash") != job_hash:
            foreign.append(shard_name(location))
        committed[shard_name(location)] = _committed_entry(location, shard, manifest)
    if manifest is not None and manifest.get("job", {}).get("hash") != job_hash:
        foreign.append(MANIFEST_NAME)
    if foreign and not overwrite:
        raise UsageError(
            f"{output.url} already holds a cache made with a different job configuration "
            f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}). "
            "Use another --output, or --overwrite to delete that cache and start again."
        )
    if foreign:
        for location in committed_files(output.url):
            location.remove()
        output.child(MANIFEST_NAME).remove()
        committed = {}
    return committed


def _check_resolution(text: str, spatial_factor: int) -> None:
    try:
        resolution = parse_resolution(text)
    except ValueError as exc:
        raise UsageError(f"--resolution: {exc}") from exc
    if not resolution.is_native and (resolution.height % spatial_factor or resolution.width % spatial_factor):
        raise UsageError(
            f"--resolution {text}: height and width must be multiples of the VAE's spatial factor {spatial_factor}"
        )


def plan_job(input_spec: str, output: str, settings: EncodeSettings, overwrite: bool = False) -> EncodePlan:
    vae_description = describe_vae(settings)
    if settings.num_frames is None:
        settings = replace(settings, num_frames=default_num_frames(vae_description["temporal_factor"]))
    check_num_frames(settings.num_frames, vae_description["temporal_factor"])
    _check_resolution(settings.resolution, vae_description["spatial_factor"])
    try:
        urls = expand_input_spec(input_spec)
        names = check_unique_names(urls)
    except InputSpecError as exc:
        raise UsageError(f"--input {input_spec!r}: {exc}") from exc
    try:
        scoring = plan_scoring(settings.scoring, settings.allow_random_weights)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    score_weights = weights_checksums(scoring)
    identity = cache_identity(settings, vae_description, scoring, score_weights)
    job_hash = identity_hash(identity)
    output_location = locate(output)
    committed = prepare_output(output_location, job_hash, overwrite)
    tasks = [ShardTask(url, name, output_location.url) for url, name in names.items() if name not in committed]
    skipped = [url for url, name in names.items() if name in committed]
    fields = {
        "job_hash": job_hash,
        "vae": vae_description,
        "latent_dtype": settings.latent_dtype,
        "sampling": {
            "num_frames": settings.num_frames,
            "frame_stride": settings.frame_stride,
            "clips_per_video": settings.clips_per_video,
            "resolution": settings.resolution,
            "max_pixels": settings.max_pixels,
            "max_frames": settings.max_frames,
        },
        "compute_dtype": settings.compute_dtype,
        "store_moments": settings.store_moments,
        "keep_previews": settings.keep_previews,
        "allow_random_weights": settings.allow_random_weights,
        "score_definitions": SCORE_DEFINITIONS,
        "scores_computed": list(scoring.computed),
        "thresholds": {SCORE_COLUMNS[name]: f"{op} {bound:g}" for name, (op, bound) in scoring.thresholds.items()},
        "null_scores": {SCORE_COLUMNS[name]: reason for name, reason in scoring.null_reasons.items()},
        "scores_with_random_weights": [SCORE_COLUMNS[name] for name in scoring.random_weights],
        "score_weights_sha256": score_weights,
        "code_version": code_version(),
    }
    return EncodePlan(
        settings, vae_description, identity, job_hash, tasks, skipped, committed, cache_metadata(fields), scoring
    )


def manifest_document(plan: EncodePlan, input_spec: str, shards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "contract_version": 1,
        "job": {
            "hash": plan.job_hash,
            "input": input_spec,
            "settings": dataclasses.asdict(plan.settings),
            "identity": plan.identity,
            "code_version": code_version(),
        },
        "model": plan.vae,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "totals": summarize(shards),
        "shards": dict(sorted(shards.items())),
    }
