import hashlib
from pathlib import Path

import pytest

from pipeline.source.shard_urls import (
    InputSpecError,
    check_unique_names,
    common_root,
    expand_input_spec,
    shard_output_name,
)


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")



def test_brace_range_keeps_zero_padding(tmp_path):
    touch(*(tmp_path / f"shard-{i:05d}.tar" for i in range(12)))
    urls = expand_input_spec(str(tmp_path / "shard-{00000..00011}.tar"))
    assert urls == [str(tmp_path / f"shard-{i:05d}.tar") for i in range(12)]


def test_several_braces_and_alternatives(tmp_path):
    touch(*(tmp_path / part / f"{i:02d}.tar" for part in ("train", "val") for i in range(3)))
    urls = expand_input_spec(str(tmp_path / "{train,val}/{00..02}.tar"))
    assert urls == [str(tmp_path / part / f"{i:02d}.tar") for part in ("train", "val") for i in range(3)]


def test_globs_are_sorted_and_comma_lists_keep_order_without_duplicates(tmp_path):
    touch(tmp_path / "b" / "2.tar", tmp_path / "b" / "1.tar", tmp_path / "a.tar", tmp_path / "b" / "notes.txt")
    spec = f"{tmp_path}/a.tar,{tmp_path}/b/*.tar, file://{tmp_path}/a.tar"
    expected = [tmp_path / "a.tar", tmp_path / "b" / "1.tar", tmp_path / "b" / "2.tar"]
    assert expand_input_spec(spec) == [str(path) for path in expected]


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    touch(tmp_path / "s.tar")
    monkeypatch.chdir(tmp_path)
    assert expand_input_spec("s.tar") == [str(tmp_path / "s.tar")]


def test_missing_paths_and_empty_globs_are_named(tmp_path):
    touch(tmp_path / "00.tar")
    with pytest.raises(InputSpecError) as error:
        expand_input_spec(f"{tmp_path}/{{00..02}}.tar,{tmp_path}/nothing-*.tar")
    message = str(error.value)
    assert "01.tar" in message and "02.tar" in message and "nothing-*.tar" in message
    assert "00.tar (" not in message
    with pytest.raises(InputSpecError, match="directory"):
        expand_input_spec(str(tmp_path))
    with pytest.raises(InputSpecError, match="names no shards"):
        expand_input_spec(" , ")


def test_pipe_items_pass_through_verbatim_and_take_commas(tmp_path):
    touch(tmp_path / "a.tar")
    spec = f"{tmp_path}/a.tar,pipe:curl -s http://host/s{{0,1}}.tar | zcat, -,pipe:cat x.tar"
    assert expand_input_spec(spec) == [
        str(tmp_path / "a.tar"),
        "pipe:curl -s http://host/s{0,1}.tar | zcat, -",
        "pipe:cat x.tar",
    ]




def test_output_names_follow_the_paths_under_the_common_root(tmp_path):
    urls = [str(tmp_path / "data" / "train" / "shard-00000.tar"), str(tmp_path / "data" / "val" / "x.tar")]
    assert common_root(urls) == str(tmp_path / "data")
    assert check_unique_names(urls) == {urls[0]: "train__shard-00000", urls[1]: "val__x"}
    assert shard_output_name(str(tmp_path / "solo.tar"), common_root([str(tmp_path / "solo.tar")])) == "solo"
    # pyarrow datasets skip files starting with "_" or ".", so such names get a prefix
    assert shard_output_name(str(tmp_path / "_hidden.tar"), str(tmp_path)) == "shard-_hidden"


def test_pipe_urls_get_a_stable_hash_name():
    url = "pipe:curl -s http://host/a.tar"
    name = shard_output_name(url, "")
    assert name == "pipe-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    assert name == shard_output_name(url, "/elsewhere")
    assert shard_output_name("pipe:cat b.tar", "") != name
    assert common_root([url]) == ""


def test_colliding_names_are_refused_naming_both(tmp_path):
    nested, flat = str(tmp_path / "a" / "b.tar"), str(tmp_path / "a__b.tar")
    with pytest.raises(InputSpecError) as error:
        check_unique_names([nested, flat])
    assert nested in str(error.value) and flat in str(error.value) and "a__b" in str(error.value)

