"""`python -m jobs.inspect`: the numbers it prints are the cache's."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from jobs.filter import main as filter_main
from jobs.inspect import main as inspect_main
from pipeline.cache.summary import (
    QUANTILES,
    format_number,
    reason_group,
    scan_cache,
    score_quantiles,
)
from tests.caches import MIN_PSNR


@pytest.fixture(scope="module")
def cache(encoded_test_cache) -> Path:
    return encoded_test_cache


@pytest.fixture(scope="module")
def printed(cache) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert inspect_main([str(cache)]) == 0
    return buffer.getvalue()


def _line(printed: str, label: str) -> str:
    return next(line for line in printed.splitlines() if line.startswith(label))


def test_files_rows_and_verdicts(printed, cache):
    table = ds.dataset(cache, format="parquet").to_table(columns=["status", "passed"])
    ok = pc.sum(pc.equal(table["status"], "ok")).as_py()
    passed = pc.sum(pc.equal(table["passed"], True)).as_py()
    size_kib = sum(p.stat().st_size for p in cache.glob("*.parquet")) / 1024
    assert f"2 Parquet files, {size_kib:.1f} KiB, 2 row groups; manifest: 2 committed, 0 partial, 0 failed" in _line(printed, "files")
    assert _line(printed, "rows") == (f"{'rows':<14}{table.num_rows}: {ok} clips ok ({passed} passed, "
                                      f"{ok - passed} rejected), 6 error rows")


def test_vae_latents_and_thresholds(printed):
    assert "autoencoder_2d 'tiny': 4 latent channels, spatial x2, temporal x1" in _line(printed, "VAE")
    assert "z_channels 4" in _line(printed, "VAE") and "ch_mult [1, 2]" in _line(printed, "VAE")
    assert _line(printed, "weights").split()[1] == "RANDOM"
    assert _line(printed, "latents") == f"{'latents':<14}float16 4x4x16x16 (8 clips)"
    assert _line(printed, "previews") == f"{'previews':<14}8 of 14 rows"
    assert _line(printed, "thresholds") == f"{'thresholds':<14}psnr >= {MIN_PSNR:g}"


def test_score_quantiles_are_numpys(printed, cache):
    table = ds.dataset(cache, format="parquet").to_table()
    ok = table.filter(pc.equal(table["status"], "ok"))
    computed = score_quantiles(table)
    for column in ("psnr", "ssim", "lpips", "disc_score"):
        values = ok[column].to_numpy().astype(np.float64)
        expected = np.quantile(values, [q for _, q in QUANTILES])
        assert computed[column]["n"] == 8
        np.testing.assert_allclose([computed[column][name] for name, _ in QUANTILES], expected, rtol=1e-12)
        line = _line(printed, f"{column} ")
        assert line.split()[1:7] == ["8", *(format_number(v) for v in expected)], line
    assert "passed if >= 11.2" in _line(printed, "psnr ")
    assert "RANDOM weights" in _line(printed, "lpips ")


def test_errors_grouped_by_reason(printed, cache):
    table = ds.dataset(cache, format="parquet").to_table(columns=["status", "error"])
    reasons = table.filter(pc.equal(table["status"], "error"))["error"].to_pylist()
    assert len(reasons) == 6
    lines = printed.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("errors by reason")))
    assert lines[start] == "errors by reason (6 rows, 3 kinds)"
    groups = {line.split(None, 1)[1]: int(line.split(None, 1)[0]) for line in lines[start + 1:start + 4]}
    assert groups == {reason_group(reason): 2 for reason in reasons}
    assert any("no video member" in group for group in groups)


def test_reason_groups():
    assert reason_group("clip 3: latent holds NaN") == reason_group("clip 0: latent holds NaN") == "latent holds NaN"
    assert reason_group("video has 2 frames, needs 4") == "video has N frames, needs N"
    assert reason_group("cannot open 'a.mp4': [Errno 5]") == reason_group("cannot open 'b.mp4': [Errno 7]")


def test_a_filtered_cache_says_where_it_came_from(cache, tmp_path, capsys):
    assert filter_main(["--cache", str(cache), "--output", str(tmp_path / "f"), "--where", "passed"]) == 0
    capsys.readouterr()
    assert inspect_main([str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert f"from {cache} where passed" in _line(out, "filtered")
    assert "errors by reason: none" in out
    assert scan_cache(str(tmp_path / "f")).differing == {}


def test_not_a_cache_exits_2(tmp_path, capsys):
    assert inspect_main([str(tmp_path)]) == 2
    assert "no committed .parquet files" in capsys.readouterr().err
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    assert inspect_main([str(tmp_path)]) == 2
    assert "x.parquet" in capsys.readouterr().err
