"""Planning an encode job: the cache's identity, the shards still to do, the metadata every file carries."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from pipeline.cache.manifest import (
    MANIFEST_NAME,
    committed_files,
    identity_hash,
    load_manifest,
    read_committed_shard,
    shard_name,
    summarize,
    write_manifest,
)
from pipeline.cache.schema import (
    CONTRACT_VERSION,
    SCORE_COLUMNS,
    SCORE_DEFINITIONS,
    cache_metadata,
    read_cache_metadata,
)
from pipeline.cache.shard_writer import open_output_dir, sha256_of_file
from pipeline.encode.model_loading import (
    check_num_frames,
    default_num_frames,
    describe_vae,
)
from pipeline.encode.scoring import ScoringPlan, plan_scoring, weights_checksums
from pipeline.encode.settings import EncodeSettings
from pipeline.encode.shard_encoder import ShardTask
from pipeline.errors import UsageError
from pipeline.run.job_differences import (
    describe,
    differences,
    is_threshold,
    metadata_differences,
)
from pipeline.run.rethreshold import rethreshold_file
from pipeline.source.buckets import BucketSpecError, parse_buckets
from pipeline.source.input_identity import input_changed
from pipeline.source.shard_urls import (
    InputSpecError,
    check_unique_names,
    expand_input_spec,
)
from pipeline.source.video_decode import parse_resolution
from pipeline.storage import Location, locate
from pipeline.version import code_version

# Committed inputs checked at once (on an object store, one request each).
INPUT_CHECK_THREADS = 16
# Files rewritten at once by --rethreshold: Parquet I/O, which releases the GIL.
RETHRESHOLD_THREADS = 4


@dataclass(frozen=True)
class ResumeCheck:
    """What planning found among the committed files, for the job summary (names of shards)."""

    reencoded: list[str] = field(default_factory=list)  # their input changed: encoded again
    unchecked: list[str] = field(default_factory=list)  # kept without a check: `pipe:`, or nothing recorded
    not_in_input: list[str] = field(default_factory=list)  # committed, but their shard is not in --input
    rethresholded: list[str] = field(default_factory=list)  # `passed` recomputed for new thresholds
    trusted: bool = False  # --trust-committed: no input was checked


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
    resume: ResumeCheck


SETTINGS_ADDED_LATER = {"resize_in": "torch", "buckets": None, "allow_upscale": False,
                        "frame_extraction": "uniform", "slide_step": 0, "target_fps": None,
                        "clip_spans_from": None}


def cache_identity(
    settings: EncodeSettings, vae_description: dict[str, Any], scoring: ScoringPlan, score_weights: dict[str, str | None]
) -> dict[str, Any]:
    """What a rerun must match to add to an existing cache: file paths stand in by their checksums."""
    produced = dataclasses.asdict(settings)
    # The normalisation flags count through their result, the vae entry's shift_factor and scale_factor.
    del produced["vae"], produced["weights"], produced["latent_shift"], produced["latent_scale"]
    for name, original in SETTINGS_ADDED_LATER.items():
        # At the value caches made before the setting existed were made with, it leaves their identity as it
        # was, so they stay resumable.
        if produced[name] == original:
            del produced[name]
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


def _beyond_thresholds(found: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    return {name: change for name, change in found.items() if not is_threshold(name)}


def _refusal(output: Location, described: dict[str, tuple[Any, Any]], beyond_thresholds: dict[str, tuple[Any, Any]],
             rethreshold: bool) -> str:
    unknown = "the recorded settings do not say which"
    if rethreshold:
        return (f"--rethreshold rewrites only `passed`, but {output.url} holds a cache that differs in more than "
                f"its thresholds: {describe(beyond_thresholds) or unknown}. Use another --output, or --overwrite "
                "to delete that cache and start again.")
    message = (f"{output.url} already holds a cache made with a different job configuration: "
               f"{describe(described) or unknown}.")
    if described and not beyond_thresholds:
        return (f"{message} Only thresholds differ, and the scores are stored: rerun with --rethreshold to "
                f"recompute `passed` in place (latents untouched), or write a selection to a new cache with "
                f"`python -m jobs.filter --cache {output.url} --output NEW --where ...`.")
    return f"{message} Use another --output, or --overwrite to delete that cache and start again."


def prepare_output(output: Location, identity: dict[str, Any], metadata: dict[str, Any], overwrite: bool,
                   rethreshold: bool = False) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Create OUTPUT, clear `_tmp/`, and return the committed files' entries and the names of those a
    job differing only in thresholds made (only with `rethreshold`, which rewrites them; otherwise a
    cache of another job is refused, naming each setting that differs, unless `overwrite` deletes it).
    `identity` is the job's (`cache_identity`), `metadata` what each of its files will carry."""
    open_output_dir(output)
    manifest = load_manifest(output.url)
    committed: dict[str, dict[str, Any]] = {}
    foreign: dict[str, dict[str, Any]] = {}
    for location in committed_files(output.url):
        found_metadata, shard = read_committed_shard(location)
        if found_metadata.get("job_hash") != metadata["job_hash"]:
            foreign[shard_name(location)] = found_metadata
        committed[shard_name(location)] = _committed_entry(location, shard, manifest)
    manifest_job = (manifest or {}).get("job", {})
    foreign_manifest = manifest is not None and manifest_job.get("hash") != metadata["job_hash"]
    if not foreign and not foreign_manifest:
        return committed, []
    if overwrite:
        for location in committed_files(output.url):
            location.remove()
        output.child(MANIFEST_NAME).remove()
        return {}, []
    # The manifest names the old job's settings as the flags do; the files' metadata says what it can
    # when the manifest is gone, and is checked anyway: a file may come from yet another job.
    in_files: dict[str, tuple[Any, Any]] = {}
    for found_metadata in foreign.values():
        in_files.update(metadata_differences(found_metadata, metadata))
    old_identity = manifest_job.get("identity") if foreign_manifest else None
    in_manifest = differences(old_identity, identity) if old_identity else {}
    described = in_manifest or in_files
    beyond_thresholds = _beyond_thresholds(described) or _beyond_thresholds(in_files)
    if rethreshold and described and not beyond_thresholds:
        return committed, sorted(foreign)
    raise UsageError(_refusal(output, described, beyond_thresholds, rethreshold))


def _check_resolution(text: str, spatial_factor: int) -> None:
    try:
        resolution = parse_resolution(text)
    except ValueError as exc:
        raise UsageError(f"--resolution: {exc}") from exc
    if not resolution.is_native and (resolution.height % spatial_factor or resolution.width % spatial_factor):
        raise UsageError(
            f"--resolution {text}: height and width must be multiples of the VAE's spatial factor {spatial_factor}"
        )


def _with_checked_buckets(settings: EncodeSettings, vae_description: dict[str, Any]) -> EncodeSettings:
    """The settings with the bucket spec in its canonical form (equal specs, one job identity) and the first
    frame bucket as num_frames; a spec the VAE cannot take is a usage error naming the nearest valid values."""
    try:
        spec = parse_buckets(settings.buckets, vae_description["spatial_factor"])
    except BucketSpecError as exc:
        raise UsageError(f"--buckets: {exc}") from exc
    for frames in spec.frames:
        check_num_frames(frames, vae_description["temporal_factor"], vae_description.get("frame_step"),
                         flag="--buckets frames=")
    if spec.frames and settings.num_frames is not None and settings.num_frames not in spec.frames:
        raise UsageError(f"--num-frames {settings.num_frames} is not among --buckets frames={spec.frames}: "
                         "give the frame counts in one place")
    return replace(settings, buckets=str(spec), num_frames=spec.frames[0] if spec.frames else settings.num_frames)


def _cache_fields(settings: EncodeSettings, vae_description: dict[str, Any], scoring: ScoringPlan,
                  score_weights: dict[str, str | None], job_hash: str) -> dict[str, Any]:
    """The job's self-description, in every file's metadata."""
    return {
        "job_hash": job_hash,
        "vae": vae_description,
        "latent_dtype": settings.latent_dtype,
        "sampling": {
            "num_frames": settings.num_frames,
            "frame_stride": settings.frame_stride,
            "clips_per_video": settings.clips_per_video,
            "resolution": None if settings.buckets else settings.resolution,
            "buckets": settings.buckets,
            "allow_upscale": settings.allow_upscale,
            "frame_extraction": settings.frame_extraction,
            "slide_step": settings.slide_step,
            "target_fps": settings.target_fps,
            "clip_spans_from": settings.clip_spans_from,
            "resize_in": settings.resize_in,
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


def _check_inputs(names: dict[str, str], committed: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Names of the committed shards whose input changed since, and of those that cannot be checked."""
    kept = [(url, name) for url, name in names.items() if name in committed]
    # On an object store each check is a request: several at once hide the latency.
    with ThreadPoolExecutor(max_workers=INPUT_CHECK_THREADS) as pool:
        verdicts = list(pool.map(lambda pair: input_changed(pair[0], committed[pair[1]].get("input")), kept))
    return ([name for (_, name), changed in zip(kept, verdicts) if changed],
            [name for (_, name), changed in zip(kept, verdicts) if changed is None])


def _rethreshold(output: Location, names: list[str], fields: dict[str, Any], scoring: ScoringPlan,
                 committed: dict[str, dict[str, Any]]) -> None:
    """Rewrite the named files for the new thresholds, updating their entries in `committed`."""
    with ThreadPoolExecutor(max_workers=RETHRESHOLD_THREADS) as pool:
        entries = list(pool.map(lambda name: rethreshold_file(output, name, fields, scoring.thresholds), names))
    for name, entry in zip(names, entries):
        committed[name] = {**committed[name], **entry}


def plan_job(input_spec: str, output: str, settings: EncodeSettings, overwrite: bool = False,
             trust_committed: bool = False, rethreshold: bool = False) -> EncodePlan:
    """Check the flags, prepare the output and decide what to encode: a committed shard is skipped
    unless its input changed (not checked with `trust_committed`). With `rethreshold`, the committed
    files of a job differing only in thresholds are rewritten here, and the manifest with them."""
    vae_description = describe_vae(settings)
    if settings.buckets is not None:
        settings = _with_checked_buckets(settings, vae_description)
    if settings.num_frames is None:
        settings = replace(settings, num_frames=default_num_frames(vae_description["temporal_factor"]))
    check_num_frames(settings.num_frames, vae_description["temporal_factor"], vae_description.get("frame_step"))
    if settings.buckets is None:
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
    fields = _cache_fields(settings, vae_description, scoring, score_weights, job_hash)
    output_location = locate(output)
    committed, stale = prepare_output(output_location, identity, read_cache_metadata(cache_metadata(fields)),
                                      overwrite, rethreshold)
    changed, unchecked = ([], []) if trust_committed else _check_inputs(names, committed)
    todo = {url: name for url, name in names.items() if name not in committed or name in changed}
    rethresholded = [name for name in stale if name not in changed]
    _rethreshold(output_location, rethresholded, fields, scoring, committed)
    resume = ResumeCheck(reencoded=changed, unchecked=unchecked, rethresholded=rethresholded,
                         not_in_input=sorted(set(committed) - set(names.values())), trusted=trust_committed)
    plan = EncodePlan(settings, vae_description, identity, job_hash,
                      tasks=[ShardTask(url, name, output_location.url) for url, name in todo.items()],
                      skipped=[url for url in names if url not in todo], committed=committed,
                      cache_fields=cache_metadata(fields), scoring=scoring, resume=resume)
    if rethresholded:
        write_manifest(output_location.url, manifest_document(plan, input_spec, committed))
    return plan


def manifest_document(plan: EncodePlan, input_spec: str, shards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "contract_version": CONTRACT_VERSION,
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
