import io
import os
import tarfile
import warnings
from pathlib import Path

import pytest

from pipeline.source.shard_reader import ShardReader, ShardSample
from tests.media import write_tar


def read_all(url: str, **kwargs) -> tuple[list[ShardSample], ShardReader]:
    reader = ShardReader(url, **kwargs)
    return list(reader), reader


def webdataset_samples(path: Path) -> list[dict]:
    import webdataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = list(webdataset.tariterators.tarfile_samples([{"url": str(path)}]))
    return [{k: v for k, v in sample.items() if not k.startswith("__")} | {"__key__": sample["__key__"]}
            for sample in samples]


def rich_tar(path: Path) -> Path:
    """Members webdataset must group and skip: sidecars, a pickle, a folder, metadata, names without a dot."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("__index__", b"metadata")
        add("clips", kind=tarfile.DIRTYPE)
        add("clips/a.mp4", b"video a")
        add("clips/a.json", b'{"caption": " a cat "}')
        add("clips/a.TXT", b"  the cat  ")
        add("clips/a.cls", b"3")
        add("clips/a.pickle", b"\x80\x04\x95 not to be unpickled")
        add("README", b"no dot: skipped")
        add(".hidden", b"dot first at the top level: skipped")
        add("clips/.dotfile", b"webdataset's rule makes this sample 'clips/' with extension 'dotfile'")
        add("b.seg.0.MOV", b"video b")
        add("b.json", b'{"text": "a dog"}')
        add("__meta__/c.txt", b"inside a metadata folder: skipped")
        add("c.pyd", b"raw")
        add("c.mkv", b"video c")
    return path


def test_reader_groups_members_like_webdataset(tmp_path):
    path = rich_tar(tmp_path / "rich.tar")
    samples, reader = read_all(str(path))
    assert reader.truncation is None
    ours = [dict(sample.members, __key__=sample.key) for sample in samples]
    assert ours == webdataset_samples(path)
    assert [sample.key for sample in samples] == ["clips/a", "clips/", "b", "c"]
    assert all(sample.error is None and sample.url == str(path) for sample in samples)
    assert samples[0].members["pickle"] == b"\x80\x04\x95 not to be unpickled"


def test_sample_accessors(tmp_path):
    samples, _ = read_all(f"file://{rich_tar(tmp_path / 'rich.tar')}")
    a, dotfile, b, c = samples
    assert dotfile.members == {"dotfile": b"webdataset's rule makes this sample 'clips/' with extension 'dotfile'"}
    assert a.video() == ("mp4", b"video a")
    assert a.caption() == "the cat"  # .txt wins over .json
    assert a.meta() == '{"caption": " a cat "}'
    assert b.video() == ("seg.0.mov", b"video b")
    assert b.caption() == "a dog"
    assert c.video() == ("mkv", b"video c") and c.caption() is None and c.meta() is None
    assert ShardSample("k", "u", {"json": b"not json"}).caption() is None
    assert ShardSample("k", "u", {"jpg": b""}).video() is None


def three_samples(path: Path) -> tuple[Path, list[tuple[str, dict[str, bytes]]]]:
    samples = [(f"s{i}", {"mp4": bytes([i]) * 3000, "txt": f"caption {i}".encode()}) for i in range(3)]
    return write_tar(path, samples), samples


def member_data_offset(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


def test_truncated_tar_yields_complete_samples_then_the_broken_one(tmp_path):
    full, _ = three_samples(tmp_path / "full.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:member_data_offset(full, "s1.mp4") + 1000])
    samples, reader = read_all(str(cut))
    assert [sample.key for sample in samples] == ["s0", "s1"]
    assert samples[0].error is None and samples[0].members["mp4"] == bytes([0]) * 3000
    assert "truncated" in samples[1].error and samples[1].members == {}
    assert reader.truncation and "truncated" in reader.truncation


def test_cut_inside_a_header_or_at_a_member_boundary_is_noticed(tmp_path):
    full, _ = three_samples(tmp_path / "full.tar")
    data = full.read_bytes()
    header_of_s1 = member_data_offset(full, "s1.mp4") - 512
    for name, cut_at in [("mid-header", header_of_s1 + 100), ("boundary", header_of_s1)]:
        cut = tmp_path / f"{name}.tar"
        cut.write_bytes(data[:cut_at])
        samples, reader = read_all(str(cut))
        # s0 was complete as far as the stream shows, but the break came before its end was certain
        assert [sample.key for sample in samples] == ["s0"], name
        assert samples[0].error is not None and reader.truncation is not None, name


def garbled_tar(tmp_path: Path) -> Path:
    """Three samples, the header of s2's first member overwritten."""
    full, _ = three_samples(tmp_path / "full.tar")
    data = bytearray(full.read_bytes())
    header_of_s2 = member_data_offset(full, "s2.mp4") - 512
    data[header_of_s2:header_of_s2 + 100] = b"\xff" * 100
    garbled = tmp_path / "garbled.tar"
    garbled.write_bytes(bytes(data))
    return garbled


def test_garbled_header_mid_archive_is_noticed(tmp_path):
    samples, reader = read_all(str(garbled_tar(tmp_path)))
    assert [sample.key for sample in samples] == ["s0", "s1"]
    assert samples[0].error is None and "damaged" in samples[1].error
    assert "damaged member header" in reader.truncation


def test_not_a_tar_and_empty_file_give_no_samples_and_a_reason(tmp_path):
    for name, data in [("junk.tar", os.urandom(5000)), ("empty.tar", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        samples, reader = read_all(str(path))
        assert samples == [] and reader.truncation.startswith("not a tar archive"), name


def test_missing_file_is_a_shard_failure(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_all(str(tmp_path / "absent.tar"))


def test_pipe_url_reads_the_command_output(tmp_path):
    full, expected = three_samples(tmp_path / "full.tar")
    samples, reader = read_all(f"pipe:cat '{full}'")
    assert reader.truncation is None
    assert [(sample.key, sample.members) for sample in samples] == expected


def test_failing_pipe_command_is_a_truncation_with_its_stderr(tmp_path):
    samples, reader = read_all(f"pipe:cat '{tmp_path}/absent.tar'")
    assert samples == []
    assert "status 1" in reader.truncation and "absent.tar" in reader.truncation

    full, _ = three_samples(tmp_path / "full.tar")
    partial = f"pipe:head -c {member_data_offset(full, 's2.mp4') + 10} '{full}'; echo network down >&2; exit 7"
    samples, reader = read_all(partial)
    assert [(sample.key, sample.error is None) for sample in samples] == [("s0", True), ("s1", True), ("s2", False)]
    assert "status 7" in reader.truncation and "network down" in reader.truncation


def test_stopping_early_ends_the_pipe_command(tmp_path):
    full, _ = three_samples(tmp_path / "full.tar")
    samples = iter(ShardReader(f"pipe:cat '{full}'; sleep 30"))
    assert next(samples).key == "s0"
    samples.close()  # must not wait for the sleep


def test_oversized_member_is_not_read(tmp_path):
    full, _ = three_samples(tmp_path / "full.tar")
    samples, reader = read_all(str(full), max_member_bytes=100)
    assert reader.truncation is None and len(samples) == 3
    assert all("limit" in sample.error and "mp4" not in sample.members for sample in samples)
    assert samples[2].members["txt"] == b"caption 2"


def test_repeated_keys_are_errors_not_duplicates(tmp_path):
    path = write_tar(tmp_path / "dup.tar", [("a", {"mp4": b"1"}), ("b", {"mp4": b"2"}), ("a", {"txt": b"3"})])
    samples, _ = read_all(str(path))
    assert [(sample.key, sample.error is None) for sample in samples] == [("a", True), ("b", True), ("a", False)]
    assert "appears twice" in samples[2].error


def test_damaged_tar_from_a_pipe_still_writing_blames_the_tar(tmp_path):
    garbled = garbled_tar(tmp_path)
    # `yes` keeps writing until we close the pipe; its SIGPIPE death is not the command's failure
    samples, reader = read_all(f"pipe:cat '{garbled}'; yes")
    assert [sample.key for sample in samples] == ["s0", "s1"]
    assert "damaged member header" in reader.truncation and "status" not in reader.truncation
