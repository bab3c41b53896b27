"""The encode job end to end on an embedded local Ray: real mp4s, real tars, real Parquet."""

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from jobs.encode import main as encode_main
from pipeline.cache.manifest import MANIFEST_NAME
from pipeline.cache.schema import SCHEMA, read_cache_metadata
from pipeline.encode.clip_encoding import ClipEncoder
from pipeline.encode.model_loading import build_model
from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.reader import load_latent
from pipeline.run.job_plan import plan_job
from pipeline.run.runner import run_encode_job
from pipeline.source.video_decode import ClipSampling, decode_clips, parse_resolution
from tests.media import encode_mp4, moving_pattern, write_tar

SETTINGS = dict(vae="tiny", allow_random_weights=True, num_frames=4, frame_stride=2, clips_per_video=2,
                resolution="32", latent_dtype="float32")
QUIET = RunSettings(num_actors=2, cpus_per_actor=1, batch_size=3, progress=False)


def _video(frames: int, seed: int) -> bytes:
    return encode_mp4(moving_pattern(frames, 48, 64, seed=seed))


@pytest.fixture(scope="module")
def good_video() -> bytes:
    # Kept, not re-made: x264 output is not always byte-identical from one encode to the next.
    return _video(20, 0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, good_video) -> Path:
    """Three shards: good samples, every kind of broken sample, and a truncated tar."""
    root = tmp_path_factory.mktemp("shards")
    good = good_video
    write_tar(root / "shard-00000.tar", [
        ("a", {"mp4": good, "txt": b"a caption"}),
        ("b", {"mp4": _video(12, 1), "json": json.dumps({"caption": "from json", "id": 7}).encode()}),
        ("c", {"txt": b"no video here"}),
    ])
    write_tar(root / "shard-00001.tar", [
        ("d", {"mp4": good[: len(good) // 3]}),
        ("e", {"mp4": _video(2, 2)}),
        ("f", {"mp4": _video(30, 3), "cls": b"3"}),
        ("g", {"mp4": b"\x00not a video at all" * 50}),
    ])
    write_tar(root / "full-00002.tar", [("h", {"mp4": _video(16, 4)}), ("i", {"mp4": _video(16, 5)})])
    full = (root / "full-00002.tar").read_bytes()
    cut = full.index(b"i.mp4") + 512 + 100  # inside the data of sample i's video
    (root / "shard-00002.tar").write_bytes(full[:cut])
    (root / "full-00002.tar").unlink()
    return root


def _rows(cache: Path) -> list[dict]:
    return [row for path in sorted(cache.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


@pytest.fixture(scope="module")
def encoded(shards, tmp_path_factory, local_ray):
    cache = tmp_path_factory.mktemp("cache")
    report = run_encode_job(str(shards / "shard-{00000..00002}.tar"), str(cache), EncodeSettings(**SETTINGS), QUIET)
    return cache, report


def test_every_sample_appears_as_the_contract_says(encoded):
    cache, report = encoded
    assert report.exit_status == 0 and not report.failed
    rows = _rows(cache)
    by_sample = Counter(row["sample_key"] for row in rows)
    errors = {row["sample_key"]: row["error"] for row in rows if row["status"] == "error"}
    # Every sample read appears; the truncated tar loses only what it did not hold.
    assert set(by_sample) == {"a", "b", "c", "d", "e", "f", "g", "h", "i"}
    assert set(errors) == {"c", "d", "e", "g", "i"}
    assert "no video member" in errors["c"]
    assert "frames" in errors["e"]
    assert "truncated" in errors["i"]
    for key in ("c", "d", "e", "g", "i"):
        assert by_sample[key] == 1, key
    # Clip counts: span = (4 - 1) * 2 + 1 = 7 frames; at most 2 clips per video.
    assert by_sample["a"] == 2 and by_sample["b"] == 1 and by_sample["f"] == 2 and by_sample["h"] == 2
    assert len({row["key"] for row in rows}) == len(rows)
    for row in rows:
        if row["status"] == "ok":
            assert row["error"] is None and row["clip_index"] >= 0
            assert row["latent_shape"] == [4, 4, 16, 16]
            assert (row["height"], row["width"], row["src_height"], row["src_width"]) == (32, 32, 48, 64)
            assert row["key"] == f"{Path(row['source_shard']).stem}/{row['sample_key']}/{row['clip_index']}"
            assert all(row[name] is not None for name in ("psnr", "ssim", "lpips", "disc_score"))
            assert row["passed"] is True  # no thresholds in force
        else:
            assert row["clip_index"] == -1 and row["latent"] is None and row["error"]
    captions = {row["sample_key"]: row["caption"] for row in rows}
    assert captions["a"] == "a caption" and captions["b"] == "from json"
    assert json.loads(next(row["meta"] for row in rows if row["sample_key"] == "b"))["id"] == 7


def test_truncated_tar_is_committed_partial_with_a_reason(encoded):
    cache, report = encoded
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    entry = manifest["shards"]["shard-00002"]
    assert entry["status"] == "partial" and entry["reason"]
    assert manifest["shards"]["shard-00000"]["status"] == "committed"
    rows = [row for row in _rows(cache) if row["source_shard"].endswith("shard-00002.tar")]
    assert {row["sample_key"] for row in rows} == {"h", "i"}
    assert manifest["totals"]["partial"] == 1 and manifest["totals"]["committed"] == 2


def test_no_temporary_files_remain_and_metadata_describes_the_cache(encoded):
    cache, _ = encoded
    assert sorted(p.name for p in cache.glob("*.parquet")) == [
        "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert not list((cache / "_tmp").glob("*")) if (cache / "_tmp").exists() else True
    file = pq.ParquetFile(cache / "shard-00000.parquet")
    assert file.schema_arrow.remove_metadata().equals(SCHEMA)
    metadata = read_cache_metadata(file.schema_arrow.metadata)
    assert metadata["contract_version"] == "1.2"
    assert metadata["allow_random_weights"] is True
    assert metadata["vae"]["kind"] == "autoencoder_2d" and metadata["vae"]["spatial_factor"] == 2
    assert metadata["vae"]["weights_sha256"] is None and metadata["vae"]["random_init_seed"] == 0
    assert metadata["latent_dtype"] == "float32"
    assert metadata["sampling"] == {"num_frames": 4, "frame_stride": 2, "clips_per_video": 2, "resolution": "32",
                                    "resize_in": "torch", "max_pixels": 4096 * 4096, "max_frames": 100_000,
                                    "buckets": None, "allow_upscale": False, "frame_extraction": "uniform",
                                    "slide_step": 0, "target_fps": None, "clip_spans_from": None}
    # Random weights allowed: every score is computed, the two that need weights say so.
    assert metadata["scores_computed"] == ["psnr", "ssim", "lpips", "disc"] and metadata["null_scores"] == {}
    assert metadata["scores_with_random_weights"] == ["lpips", "disc_score"]


def test_cached_latents_equal_an_in_process_encode(encoded, good_video):
    cache, _ = encoded
    settings = EncodeSettings(**SETTINGS)
    encoder = ClipEncoder(build_model(settings), torch.device("cpu"), torch.float32)
    clips = decode_clips(good_video, ClipSampling(4, 2, 2), parse_resolution("32"), spatial_factor=2)
    latents, _ = encoder.encode(torch.stack([clip.frames for clip in clips]))
    for clip, expected in zip(clips, latents):
        cached = load_latent(cache, f"shard-00000/a/{clip.clip_index}")
        assert cached.dtype == torch.float32 and cached.shape == expected.shape
        torch.testing.assert_close(cached, expected, atol=1e-5, rtol=0)


def test_rerun_skips_committed_shards_and_writes_nothing(encoded, shards):
    cache, _ = encoded
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.glob("*.parquet")}
    report = run_encode_job(str(shards / "shard-*.tar"), str(cache), EncodeSettings(**SETTINGS), QUIET)
    assert len(report.skipped) == 3 and report.exit_status == 0
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.glob("*.parquet")}
    assert after == before
    # The rewritten manifest still carries each committed file's checksum and size.
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    for name, (_, data) in after.items():
        entry = manifest["shards"][name.removesuffix(".parquet")]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size_bytes"] == len(data)


def test_rerun_with_a_different_config_is_refused(encoded, shards, capsys):
    cache, _ = encoded
    status = encode_main([
        "--input", str(shards / "shard-*.tar"), "--output", str(cache), "--vae", "tiny",
        "--allow-random-weights", "--num-frames", "5", "--resolution", "32", "--no-progress",
    ])
    assert status == 2
    err = capsys.readouterr().err
    # Each setting that differs, old → new (this command also leaves out SETTINGS' stride, clips and dtype).
    assert "different job configuration: clips_per_video: 2 → 1; frame_stride: 2 → 1" in err
    assert "latent_dtype: 'float32' → 'float16'; num_frames: 4 → 5." in err and "--overwrite" in err


def test_float16_cache_is_within_float16_precision(shards, good_video, tmp_path, local_ray):
    settings = EncodeSettings(**{**SETTINGS, "latent_dtype": "float16"})
    report = run_encode_job(str(shards / "shard-00000.tar"), str(tmp_path), settings, QUIET)
    assert report.exit_status == 0
    encoder = ClipEncoder(build_model(settings), torch.device("cpu"), torch.float32)
    clips = decode_clips(good_video, ClipSampling(4, 2, 2), parse_resolution("32"), spatial_factor=2)
    expected, _ = encoder.encode(torch.stack([clip.frames for clip in clips]))
    cached = torch.stack([load_latent(tmp_path, f"shard-00000/a/{c.clip_index}") for c in clips])
    assert cached.dtype == torch.float16
    torch.testing.assert_close(cached.float(), expected, rtol=2e-3, atol=1e-4)


def test_a_shard_that_keeps_failing_is_recorded_and_exits_3(shards, tmp_path, local_ray, capsys):
    broken = "/proc/self/mem"  # a file whose every read fails with EIO, as a dying disk's would
    status = encode_main([
        "--input", f"{shards / 'shard-00000.tar'},{broken}", "--output", str(tmp_path / "cache"),
        "--vae", "tiny", "--allow-random-weights", "--num-frames", "4", "--resolution", "32",
        "--max-retries", "1", "--num-actors", "1", "--cpus-per-actor", "1", "--no-progress",
    ])
    captured = capsys.readouterr()
    assert status == 3
    assert "FAILED shard" in captured.out and "Errno" in captured.out
    manifest = json.loads((tmp_path / "cache" / MANIFEST_NAME).read_text())
    failed = [entry for entry in manifest["shards"].values() if entry["status"] == "failed"]
    assert len(failed) == 1 and len(failed[0]["attempts"]) == 2
    assert manifest["totals"]["committed"] == 1


@pytest.mark.parametrize("extra, message", [
    ([], "--weights"),
    (["--allow-random-weights", "--vae", "nope"], "unknown VAE preset"),
    (["--allow-random-weights", "--input", "/nonexistent/shard-{0..3}.tar"], "--input"),
    (["--allow-random-weights", "--conv3d-chunk-elements", "lots"], "--conv3d-chunk-elements takes auto, off or"),
    (["--allow-random-weights", "--conv3d-chunk-elements", "0"], "a positive number of elements, not '0'"),
])
def test_usage_errors_exit_2(extra, message, tmp_path, capsys):
    args = ["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--vae", "tiny"]
    assert encode_main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_unwritable_output_exits_2(shards, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = encode_main(["--input", str(shards / "shard-00000.tar"), "--output", str(blocker / "cache"),
                          "--vae", "tiny", "--allow-random-weights"])
    assert status == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--latent-scale", "1,2"], "normalisation of 2 values does not fit a VAE with 4 latent channels"),
    (["--latent-shift", "0,0,0,0", "--latent-scale", "1,1,1"], "different channel counts"),
    (["--latent-scale", "0"], "scale must not be 0"),
    (["--latent-shift", "a,b"], "expected a number or a comma list of numbers"),
])
def test_a_latent_normalisation_that_does_not_fit_exits_2(flags, message, shards, tmp_path, capsys):
    try:
        status = encode_main(["--input", str(shards / "shard-00000.tar"), "--output", str(tmp_path / "cache"),
                              "--vae", "tiny", "--allow-random-weights", *flags])
    except SystemExit as stopped:  # argparse's own refusal of a malformed value
        status = stopped.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("cache/*.parquet"))


@pytest.mark.parametrize("resolution, message", [("big", "--resolution"), ("33", "multiples")])
def test_bad_resolution_exits_2_before_any_work(resolution, message, shards, tmp_path, capsys):
    status = encode_main(["--input", str(shards / "shard-00000.tar"), "--output", str(tmp_path),
                          "--vae", "tiny", "--allow-random-weights", "--resolution", resolution])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.parquet"))


def test_stored_moments_give_back_the_cached_latent(shards, tmp_path, local_ray):
    config = tmp_path / "vae.json"
    config.write_text(json.dumps({"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4,
                                  "scale_factor": 0.5, "shift_factor": 0.1}))
    settings = EncodeSettings(**{**SETTINGS, "vae": str(config), "store_moments": True})
    report = run_encode_job(str(shards / "shard-00000.tar"), str(tmp_path / "cache"), settings, QUIET)
    assert report.exit_status == 0
    rows = [row for row in pq.read_table(tmp_path / "cache" / "shard-00000.parquet").to_pylist()
            if row["status"] == "ok"]
    assert len(rows) == 3
    for row in rows:
        c, t, h, w = row["latent_shape"]
        moments = torch.frombuffer(bytearray(row["moments"]), dtype=torch.float32).reshape(2 * c, t, h, w)
        latent = load_latent(tmp_path / "cache", row["key"])
        torch.testing.assert_close(latent, 0.5 * (moments[:c] - 0.1), atol=1e-6, rtol=0)
        assert row["latent_mean"] == pytest.approx(latent.mean().item(), abs=1e-6)
        assert row["latent_std"] == pytest.approx(latent.std().item(), abs=1e-6)


def test_actors_no_node_can_hold_are_a_usage_error(shards, tmp_path, local_ray, capsys):
    status = encode_main(["--input", str(shards / "shard-00000.tar"), "--output", str(tmp_path),
                          "--vae", "tiny", "--allow-random-weights", "--resolution", "32", "--num-frames", "4",
                          "--gpus-per-actor", "1", "--no-progress"])
    assert status == 2
    assert "no node of the Ray cluster can hold" in capsys.readouterr().err


def test_more_actors_than_fit_are_trimmed(shards, tmp_path, local_ray, capsys):
    run = RunSettings(num_actors=5, cpus_per_actor=1, progress=False)
    report = run_encode_job(str(shards / "shard-0000[01].tar"), str(tmp_path), EncodeSettings(**SETTINGS), run)
    assert report.exit_status == 0
    assert "holds 2 actors" in capsys.readouterr().err


def test_causal_3d_vae_end_to_end(shards, good_video, tmp_path, local_ray):
    settings = EncodeSettings(vae="tiny-3d", allow_random_weights=True, num_frames=9, resolution="32",
                              latent_dtype="float32")
    report = run_encode_job(str(shards / "shard-00000.tar"), str(tmp_path), settings, QUIET)
    assert report.exit_status == 0
    rows = {row["sample_key"]: row for row in pq.read_table(tmp_path / "shard-00000.parquet").to_pylist()}
    # 1 + 4k frames → 1 + k latent frames; 4x spatial compression.
    assert rows["a"]["latent_shape"] == [4, 3, 8, 8] and rows["a"]["num_frames"] == 9
    assert rows["b"]["status"] == "ok" and rows["a"]["psnr"] is not None
    metadata = read_cache_metadata(pq.read_schema(tmp_path / "shard-00000.parquet").metadata)
    assert metadata["vae"]["kind"] == "autoencoder_3d"
    assert (metadata["vae"]["temporal_factor"], metadata["vae"]["spatial_factor"]) == (4, 4)
    model = build_model(settings)
    (clip,) = decode_clips(good_video, ClipSampling(9), parse_resolution("32"), spatial_factor=4)
    expected, _ = ClipEncoder(model, torch.device("cpu"), torch.float32).encode(clip.frames[None])
    torch.testing.assert_close(load_latent(tmp_path, "shard-00000/a/0"), expected[0], atol=1e-5, rtol=0)


def test_3d_vae_defaults_to_17_frames_and_refuses_invalid_counts(shards, tmp_path, capsys):
    plan = plan_job(str(shards / "shard-00000.tar"), str(tmp_path / "planned"),
                    EncodeSettings(vae="tiny-3d", allow_random_weights=True, resolution="32"))
    assert plan.settings.num_frames == 17
    status = encode_main(["--input", str(shards / "shard-00000.tar"), "--output", str(tmp_path), "--vae", "tiny-3d",
                          "--allow-random-weights", "--resolution", "32", "--num-frames", "16"])
    assert status == 2
    assert "use 13 or 17" in capsys.readouterr().err


def test_previews_show_source_over_reconstruction(shards, tmp_path, local_ray):
    from PIL import Image

    settings = EncodeSettings(**{**SETTINGS, "keep_previews": True, "scoring": ScoreSettings(scores=())})
    assert run_encode_job(str(shards / "shard-00000.tar"), str(tmp_path), settings, QUIET).exit_status == 0
    rows = [row for row in pq.read_table(tmp_path / "shard-00000.parquet").to_pylist() if row["status"] == "ok"]
    for row in rows:
        image = Image.open(io.BytesIO(row["preview"]))
        assert image.format == "JPEG" and image.size == (4 * 96, 2 * 96)  # 4 frames of 32x32, two rows


def test_clips_of_many_shapes_are_all_encoded(tmp_path, local_ray):
    # decord 0.6 mis-sizes some narrow widths (48 px fails with a size check): these decode.
    sizes = [(48, 64), (32, 64), (64, 32), (48, 32), (48, 96), (64, 96)]
    write_tar(tmp_path / "shard-00000.tar", [
        (f"v{i}", {"mp4": encode_mp4(moving_pattern(8, h, w, seed=i))}) for i, (h, w) in enumerate(sizes)])
    settings = EncodeSettings(**{**SETTINGS, "resolution": "native", "scoring": ScoreSettings(scores=())})
    run = RunSettings(num_actors=1, cpus_per_actor=1, batch_size=2, progress=False)
    assert run_encode_job(str(tmp_path / "shard-00000.tar"), str(tmp_path / "cache"), settings, run).exit_status == 0
    rows = pq.read_table(tmp_path / "cache" / "shard-00000.parquet").to_pylist()
    assert sorted((row["height"], row["width"]) for row in rows if row["status"] == "ok") == sorted(sizes)


def test_file_urls_for_input_and_output(shards, tmp_path, local_ray):
    settings = EncodeSettings(**{**SETTINGS, "scoring": ScoreSettings(scores=())})
    report = run_encode_job(f"file://{shards}/shard-0000{{0,1}}.tar", f"file://{tmp_path}/cache", settings, QUIET)
    assert report.exit_status == 0 and report.output == str(tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]


def test_resizing_in_the_decoder_is_another_job_and_torch_the_one_caches_were_made_with(encoded, shards, capsys):
    cache, _ = encoded
    common = ["--input", str(shards / "shard-*.tar"), "--output", str(cache), "--vae", "tiny", "--allow-random-weights",
              "--num-frames", "4", "--frame-stride", "2", "--clips-per-video", "2", "--resolution", "32",
              "--latent-dtype", "float32", "--no-progress"]
    assert encode_main([*common, "--resize-in", "decoder"]) == 2
    assert "resize_in" in capsys.readouterr().err
    # The default, and the value caches from before the flag were made with, adds nothing to the job's identity.
    assert encode_main([*common, "--resize-in", "torch"]) == 0
