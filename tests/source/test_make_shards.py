import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from jobs.make_shards import main
from pipeline.source.shard_packing import PackingError, pack_videos_into_shards
from pipeline.source.shard_reader import ShardReader
from pipeline.source.video_decode import ClipSampling, Resolution, decode_clips
from tests.media import encode_mp4, moving_pattern
from tests.processes import ROOT


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """Five small videos in nested folders, some with sidecars, plus files that are not videos."""
    root = tmp_path_factory.mktemp("videos")
    (root / "cats").mkdir()
    (root / "dogs" / "big").mkdir(parents=True)
    for seed, relative in enumerate(["cats/a.mp4", "cats/b.v2.mp4", "dogs/big/c.MOV", "d.mp4", "e.mkv"]):
        (root / relative).write_bytes(encode_mp4(moving_pattern(4, 32, 64, seed=seed)))
    (root / "cats" / "a.json").write_text('{"caption": "a cat"}')
    (root / "cats" / "a.txt").write_text("a cat, in words")
    (root / "dogs" / "big" / "c.txt").write_text("a big dog")
    (root / "notes.txt").write_text("no video of this name")
    (root / "cats" / "._a.mp4").write_bytes(b"macOS resource fork")
    return root


def read_back(shards: list[Path]) -> list[tuple[str, dict[str, bytes]]]:
    import webdataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = webdataset.tariterators.tarfile_samples([{"url": str(shard)} for shard in shards])
        return [(sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}) for sample in samples]


def test_packs_videos_with_their_sidecars(video_folder, tmp_path):
    shards = pack_videos_into_shards(video_folder, tmp_path / "out" / "shards", samples_per_shard=2)
    assert [shard.name for shard in shards] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    samples = read_back(shards)
    assert [(key, sorted(members)) for key, members in samples] == [
        ("cats_a", ["json", "mp4", "txt"]),
        ("cats_b_v2", ["mp4"]),
        ("d", ["mp4"]),
        ("dogs_big_c", ["mov", "txt"]),
        ("e", ["mkv"]),
    ]
    assert dict(samples)["cats_a"]["mp4"] == (video_folder / "cats" / "a.mp4").read_bytes()
    assert dict(samples)["dogs_big_c"]["txt"] == b"a big dog"


def test_packed_shards_decode_through_our_reader(video_folder, tmp_path):
    (shard,) = pack_videos_into_shards(video_folder, tmp_path, samples_per_shard=10)
    reader = ShardReader(str(shard))
    samples = list(reader)
    assert reader.truncation is None and len(samples) == 5
    assert samples[0].caption() == "a cat, in words" and samples[0].meta() == '{"caption": "a cat"}'
    for sample in samples:
        (clip,) = decode_clips(sample.video()[1], ClipSampling(4), Resolution(), spatial_factor=8)
        assert clip.frames.shape == (4, 32, 64, 3)


def test_reruns_are_byte_identical(video_folder, tmp_path):
    first = pack_videos_into_shards(video_folder, tmp_path / "one", samples_per_shard=3)
    (video_folder / "d.mp4").touch()  # a new mtime must not change the tar
    second = pack_videos_into_shards(video_folder, tmp_path / "two", samples_per_shard=3)
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    assert not list((tmp_path / "one").glob("*.partial"))


def test_refuses_folders_without_videos_and_colliding_keys(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackingError, match="no video files"):
        pack_videos_into_shards(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(PackingError, match="not a folder"):
        pack_videos_into_shards(tmp_path / "absent", tmp_path / "out")
    clash = tmp_path / "clash"
    (clash / "a").mkdir(parents=True)
    (clash / "a" / "b.mp4").write_bytes(b"1")
    (clash / "a_b.mp4").write_bytes(b"2")
    with pytest.raises(PackingError, match="a_b"):
        pack_videos_into_shards(clash, tmp_path / "out")
    with pytest.raises(PackingError, match="same name"):
        pack_videos_into_shards(clash, tmp_path / "out", pattern="shard.tar")


def test_cli_writes_shards_and_lists_them(video_folder, tmp_path, capsys):
    assert main([str(video_folder), str(tmp_path / "out"), "--samples-per-shard", "4"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "shard-00000.tar"), str(tmp_path / "out" / "shard-00001.tar")]


def test_cli_exits_2_on_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "jobs.make_shards", str(tmp_path / "empty"), str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "no video files" in result.stderr
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "empty"), str(tmp_path / "out"), "--samples-per-shard", "0"])
    assert exit_.value.code == 2


def test_a_folder_holding_shards_is_refused_unless_overwrite(video_folder, tmp_path):
    out = tmp_path / "out"
    assert main([str(video_folder), str(out), "--samples-per-shard", "2"]) == 0
    (out / "notes.txt").write_text("not a shard")
    result = subprocess.run([sys.executable, "-m", "jobs.make_shards", str(video_folder), str(out),
                             "--samples-per-shard", "4"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "already holds 3 shard(s) (shard-00000.tar, shard-00001.tar, shard-00002.tar)" in result.stderr
    assert "--overwrite" in result.stderr
    assert main([str(video_folder), str(out), "--samples-per-shard", "4", "--overwrite"]) == 0
    # No shard of the first packing is left for a `*.tar` glob to pick up; other files stay.
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "shard-00000.tar", "shard-00001.tar"]
    assert len(read_back(sorted(out.glob("*.tar")))) == 5


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        # Permission bits do not stop root; sysfs refuses new files to everyone.
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_an_output_that_is_a_file_or_not_writable_exits_2(video_folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, message in [(blocker, "is a file, not a folder"), (blocker / "shards", "is not writable"),
                         (_unwritable_folder(tmp_path), "is not writable")]:
        result = subprocess.run([sys.executable, "-m", "jobs.make_shards", str(video_folder), str(out)],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and str(out) in result.stderr
