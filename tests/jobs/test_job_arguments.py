"""What every job's command line tells a user: each default in --help, every preset, a hint for an unquoted glob."""

import importlib

import pytest

from jobs import encode, make_shards, report
from jobs import filter as filter_job
from vae.presets import PRESETS, PRESETS_3D


def test_encode_help_lists_every_preset_and_shows_every_default():
    text = " ".join(encode.build_parser().format_help().split())
    for preset in [*PRESETS, *PRESETS_3D]:
        assert preset in text
    for shown in ("--clips-per-video CLIPS_PER_VIDEO at most this many non-overlapping clips, spread over the "
                  "video (default: 1)", "(default: 4)", "(default: 2)", "(default: 3600.0)", "(default: 50)",
                  "stored latents (default: float16)", "native; default 256", "(default: 0)"):
        assert shown in text


@pytest.mark.parametrize("job", [filter_job, make_shards, report])
def test_the_other_jobs_show_their_defaults(job):
    parser = job.build_parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, "==SUPPRESS==") and action.help:
            assert f"default: {action.default}" in text or "default" in action.help, action.dest


def test_an_unquoted_glob_gets_a_hint_to_quote_it(tmp_path, capsys):
    for index in range(2):
        (tmp_path / f"shard-{index:05d}.tar").write_bytes(b"")
    expanded = [str(path) for path in sorted(tmp_path.glob("*.tar"))]
    with pytest.raises(SystemExit) as stopped:
        encode.build_parser().parse_args(["--input", expanded[0], *expanded[1:], "--output", "out", "--vae", "tiny"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and "quote it" in err and "--input 'shards/*.tar'" in err


def test_other_unknown_arguments_get_no_hint(capsys):
    with pytest.raises(SystemExit):
        encode.build_parser().parse_args(["--input", "x", "--output", "y", "--vae", "tiny", "--frobnicate"])
    assert "quote it" not in capsys.readouterr().err


@pytest.mark.parametrize("job, args", [
    ("jobs.inspect", ["{cache}"]),
    ("jobs.report", ["--cache", "{cache}", "--out", "{tmp}/report.html"]),
    ("jobs.filter", ["--cache", "{cache}", "--output", "{tmp}/out", "--where", "passed"]),
])
def test_a_job_reading_a_missing_cache_exits_2_saying_it_does_not_exist(job, args, tmp_path, capsys):
    missing = tmp_path / "no-such-cache"
    main = importlib.import_module(job).main
    status = main([arg.format(cache=missing, tmp=tmp_path) for arg in args])
    assert status == 2 and f"{str(missing)!r} does not exist" in capsys.readouterr().err
