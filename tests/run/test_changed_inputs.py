"""A resume never skips a shard whose tar changed: re-packed shards are encoded again, a `touch` is not a change."""

import gzip
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.cache.manifest import MANIFEST_NAME
from pipeline.encode.fault_injection import FAULTS_ENV
from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.run.job_summary import format_summary
from pipeline.run.runner import run_encode_job
from pipeline.source.shard_reader import ShardReader, member_list_fingerprint
from tests.cache_checks import assert_every_sample_once
from tests.media import encode_mp4, moving_pattern, write_tar

SETTINGS = EncodeSettings(vae="tiny", allow_random_weights=True, num_frames=4, resolution="32",
                          scoring=ScoreSettings(scores=()))
RUN = RunSettings(num_actors=2, cpus_per_actor=1, progress=False)


@pytest.fixture(scope="module")
def videos() -> list[bytes]:
    return [encode_mp4(moving_pattern(8, 48, 64, seed=seed)) for seed in range(4)]


def _pack(path: Path, keys: list[str], videos: list[bytes]) -> Path:
    return write_tar(path, [(key, {"mp4": video, "txt": key.encode()}) for key, video in zip(keys, videos)])


def _file_state(path: Path) -> tuple:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, path.read_bytes()


def _later_mtime(path: Path) -> None:
    """A modification time surely different from before, whatever the filesystem's clock granularity."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


def _encode(root: Path, cache: Path, **run) -> tuple:
    report = run_encode_job(str(root / "shard-*.tar"), str(cache), SETTINGS, replace(RUN, **run))
    assert report.exit_status == 0
    return report, format_summary(report)


def _two_encoded_shards(videos: list[bytes], tmp_path: Path) -> tuple[Path, Path, tuple]:
    """Shards a0,a1 and b0,b1 encoded; the shards' folder, the cache and shard-00000's file state."""
    root, cache = tmp_path / "shards", tmp_path / "cache"
    root.mkdir()
    _pack(root / "shard-00000.tar", ["a0", "a1"], videos[:2])
    _pack(root / "shard-00001.tar", ["b0", "b1"], videos[2:])
    _encode(root, cache)
    return root, cache, _file_state(cache / "shard-00000.parquet")


def test_reader_and_header_scan_give_one_fingerprint(videos, tmp_path):
    plain = _pack(tmp_path / "plain.tar", ["a", "b"], videos)
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(plain.read_bytes()[: len(videos[0]) + 2048])
    compressed = tmp_path / "plain.tar.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, truncated, compressed):
        reader = ShardReader(str(path))
        list(reader)
        assert (reader.truncation is not None) == (path == truncated)
        assert reader.fingerprint == member_list_fingerprint(str(path)), path.name
    # Names and sizes make the fingerprint; where the tar lives or when it was written does not.
    copy = Path(shutil.copy(plain, tmp_path / "copy.tar"))
    assert member_list_fingerprint(str(copy)) == member_list_fingerprint(str(plain))
    renamed = _pack(tmp_path / "renamed.tar", ["a", "c"], videos)
    assert renamed.stat().st_size == plain.stat().st_size
    assert member_list_fingerprint(str(renamed)) != member_list_fingerprint(str(plain))


def test_a_repacked_shard_is_encoded_again_unless_trusted(videos, tmp_path, local_ray):
    root, cache, untouched = _two_encoded_shards(videos, tmp_path)
    job_hash = json.loads((cache / MANIFEST_NAME).read_text())["job"]["hash"]

    _pack(root / "shard-00001.tar", ["c0", "c1", "c2"], [videos[3], videos[0], videos[1]])
    report, summary = _encode(root, cache, trust_committed=True)
    assert report.resume.trusted and not report.resume.reencoded and len(report.skipped) == 2
    assert "not checked for changed input (--trust-committed)" in summary
    assert_every_sample_once(cache, {"shard-00000": ["a0", "a1"], "shard-00001": ["b0", "b1"]})
    # A run setting: the cache's identity is the same.
    assert json.loads((cache / MANIFEST_NAME).read_text())["job"]["hash"] == job_hash

    report, summary = _encode(root, cache)
    assert report.resume.reencoded == ["shard-00001"] and report.skipped == [str(root / "shard-00000.tar")]
    assert "1 already committed before this run, 1 re-encoded because their input changed" in summary
    assert_every_sample_once(cache, {"shard-00000": ["a0", "a1"], "shard-00001": ["c0", "c1", "c2"]})
    assert _file_state(cache / "shard-00000.parquet") == untouched
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    recorded = manifest["shards"]["shard-00001"]["input"]
    assert recorded["fingerprint"] == member_list_fingerprint(str(root / "shard-00001.tar"))
    assert recorded["size"] == (root / "shard-00001.tar").stat().st_size
    assert manifest["job"]["hash"] == job_hash and manifest["totals"]["clips"] == 5

    report, _ = _encode(root, cache)
    assert not report.resume.reencoded and len(report.skipped) == 2


def test_touch_is_not_a_change_but_renamed_members_of_the_same_size_are(videos, tmp_path, local_ray):
    root, cache, untouched = _two_encoded_shards(videos, tmp_path)
    size = (root / "shard-00001.tar").stat().st_size

    _later_mtime(root / "shard-00000.tar")  # as `touch` does
    _pack(root / "shard-00001.tar", ["b0", "bX"], videos[2:])  # same sizes, one name changed
    _later_mtime(root / "shard-00001.tar")
    assert (root / "shard-00001.tar").stat().st_size == size
    report, _ = _encode(root, cache)
    assert report.resume.reencoded == ["shard-00001"]
    assert _file_state(cache / "shard-00000.parquet") == untouched
    assert_every_sample_once(cache, {"shard-00000": ["a0", "a1"], "shard-00001": ["b0", "bX"]})

    # Shards no longer in --input keep their files, with a warning naming them.
    report = run_encode_job(str(root / "shard-00000.tar"), str(cache), SETTINGS, RUN)
    assert report.exit_status == 0 and report.resume.not_in_input == ["shard-00001"]
    assert ("warning: 1 committed file(s) belong to shards no longer in --input and are kept: shard-00001"
            in format_summary(report))
    assert (cache / "shard-00001.parquet").exists()


def test_pipe_inputs_stay_committed_with_a_warning(videos, tmp_path, local_ray):
    shard = _pack(tmp_path / "shard.tar", ["a0"], videos[:1])
    spec = f"pipe:cat {shard}"
    assert run_encode_job(spec, str(tmp_path / "cache"), SETTINGS, RUN).exit_status == 0
    _pack(shard, ["z0"], videos[1:2])
    report = run_encode_job(spec, str(tmp_path / "cache"), SETTINGS, RUN)
    assert report.resume.unchecked == [next(iter(report.shards))] and report.skipped == [spec]
    assert "kept without checking whether their input changed (a pipe: input" in format_summary(report)


def test_objects_are_compared_by_etag_then_by_member_list(videos, tmp_path, s3_endpoint):
    import s3fs

    from pipeline.source.input_identity import input_changed, input_stat

    fs = s3fs.S3FileSystem()
    fs.mkdir("inputs")
    url = "s3://inputs/shards/shard-00000.tar"
    original = _pack(tmp_path / "original.tar", ["a", "b"], videos[:2]).read_bytes()
    fs.pipe_file(url, original)
    recorded = {**input_stat(url), "fingerprint": member_list_fingerprint(url)}
    assert recorded["size"] == len(original) and recorded["etag"]
    assert input_changed(url, recorded) is False
    fs.pipe_file(url, original)  # uploaded again: the same ETag
    assert input_changed(url, recorded) is False
    fs.pipe_file(url, _pack(tmp_path / "renamed.tar", ["a", "c"], videos[:2]).read_bytes())
    assert input_stat(url)["size"] == recorded["size"]  # same size, another ETag: the member list decides
    assert input_changed(url, recorded) is True
    fs.pipe_file(url, original)
    assert input_changed(url, {**recorded, "etag": "from a multipart upload"}) is False


def test_a_changed_shard_that_then_fails_for_good_loses_its_stale_file(videos, tmp_path, local_ray, monkeypatch):
    root, cache = tmp_path / "shards", tmp_path / "cache"
    root.mkdir()
    _pack(root / "shard-00000.tar", ["a0"], videos[:1])
    _encode(root, cache)
    _pack(root / "shard-00000.tar", ["b0", "b1"], videos[1:3])
    monkeypatch.setenv(FAULTS_ENV, "exit:shard-00000:0")
    report = run_encode_job(str(root / "shard-*.tar"), str(cache), SETTINGS, replace(RUN, max_retries=0))
    assert report.exit_status == 3 and report.resume.reencoded == ["shard-00000"]
    # Rows of the tar as it was are not rows of the input any more.
    assert not (cache / "shard-00000.parquet").exists()
    assert json.loads((cache / MANIFEST_NAME).read_text())["shards"]["shard-00000"]["status"] == "failed"
