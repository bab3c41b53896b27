"""The filter job on a cache the real encode job made: the output is the filtered view of the source,
byte for byte; counts per criterion; resume; refusal of another expression; no model is built."""

import json
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from jobs.filter import main as filter_main
from pipeline.cache.filter import FilterSettings, _Stopped, filter_file, plan_filter
from pipeline.cache.manifest import MANIFEST_NAME
from pipeline.cache.schema import METADATA_KEY, SHARD_METADATA_KEY, read_cache_metadata
from pipeline.cache.where import criteria, parse_where
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.run.runner import run_encode_job
from tests.media import encode_mp4, moving_pattern, write_tar
from vae import load_model


@pytest.fixture(scope="module")
def source(encoded_test_cache) -> Path:
    return encoded_test_cache


@pytest.fixture(scope="module")
def default_scores_cache(tmp_path_factory, local_ray) -> Path:
    """What a default run makes: VAE weights given, none for LPIPS or the discriminator, so lpips and
    disc_score are null in every row, with the reason in the file metadata."""
    root = tmp_path_factory.mktemp("default_scores")
    save_file(load_model("tiny").state_dict(), root / "tiny.safetensors")
    write_tar(root / "shard-00000.tar", [("a", {"mp4": encode_mp4(moving_pattern(12, 48, 64, seed=1))}),
                                         ("b", {"txt": b"no video"})])
    settings = EncodeSettings(vae="tiny", weights=str(root / "tiny.safetensors"), num_frames=4, resolution="32")
    report = run_encode_job(str(root / "shard-00000.tar"), str(root / "cache"), settings,
                            RunSettings(num_actors=1, cpus_per_actor=1, progress=False))
    assert report.exit_status == 0
    return root / "cache"


WHERE = "passed and lpips < 0 and (ssim > 0 or psnr > 11.3)"


def _filtered_view(cache: Path, where: str) -> dict[str, pa.Table]:
    """What a pyarrow reader selects from each file of the source with the same expression."""
    view = {}
    for path in sorted(cache.glob("*.parquet")):
        table = pq.read_table(path)
        view[path.stem] = table.filter(parse_where(where, table.schema))
    return view


def _run(capsys, *args: str) -> tuple[int, str, str]:
    status = filter_main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_cache_has_what_the_tests_need(source):
    table = ds.dataset(source, format="parquet").to_table(columns=["status", "passed", "preview"])
    assert pc.sum(pc.equal(table["status"], "error")).as_py() == 6
    assert pc.sum(pc.equal(table["passed"], True)).as_py() > 0
    assert pc.sum(pc.equal(table["passed"], False)).as_py() > 0
    assert table["preview"].null_count == 6


def test_output_is_the_filtered_view_byte_for_byte(source, tmp_path, capsys):
    output = tmp_path / "out"
    status, out, err = _run(capsys, "--cache", str(source), "--output", str(output), "--where", WHERE)
    assert status == 0, err
    expected = _filtered_view(source, WHERE)
    assert sorted(p.stem for p in output.glob("*.parquet")) == sorted(expected)
    assert sum(t.num_rows for t in expected.values()) > 0
    for name, want in expected.items():
        file = pq.ParquetFile(output / f"{name}.parquet")
        got = file.read()
        assert got.schema.remove_metadata().equals(want.schema.remove_metadata())
        assert got.equals(want), name  # every column, latents and previews included
        assert got.column("latent").to_pylist() == want.column("latent").to_pylist()
        # The metadata is the source's plus the filter entry.
        source_metadata = read_cache_metadata(pq.read_metadata(source / f"{name}.parquet").metadata)
        metadata = read_cache_metadata(file.schema_arrow.metadata)
        entry = metadata.pop("filter")
        assert entry["expression"] == WHERE and entry["source"] == str(source) and entry["time"]
        assert entry["criteria"] == criteria(WHERE) and entry["previous"] is None
        assert entry["source_job_hash"] == source_metadata["job_hash"]
        assert metadata.pop("job_hash") != source_metadata.pop("job_hash")
        assert metadata == source_metadata
    # The same through a dataset scan of the whole cache.
    scan = ds.dataset(source, format="parquet").to_table(filter=parse_where(WHERE, pq.read_schema(source / "shard-00000.parquet")))
    assert ds.dataset(output, format="parquet").to_table().sort_by("key").equals(scan.sort_by("key"))
    assert not (output / "_tmp").exists()


def test_counts_per_criterion_are_printed_and_recorded(source, tmp_path, capsys):
    output = tmp_path / "out"
    status, out, _ = _run(capsys, "--cache", str(source), "--output", str(output), "--where", WHERE)
    assert status == 0
    table = ds.dataset(source, format="parquet").to_table()
    total = table.num_rows
    lines = out.splitlines()
    expected = {}
    for text in criteria(WHERE):
        kept = table.filter(parse_where(text, table.schema)).num_rows
        expected[text] = (kept, total - kept)
    kept = table.filter(parse_where(WHERE, table.schema)).num_rows
    expected["the whole expression"] = (kept, total - kept)
    for text, (kept, dropped) in expected.items():
        line = next(line for line in lines if line.startswith(text + " "))
        assert line.split()[-3:-1] == [str(kept), str(dropped)], line
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    assert manifest["job"]["kind"] == "filter" and manifest["job"]["where"] == WHERE
    assert manifest["filter"]["source_rows"] == total
    assert manifest["filter"]["kept"] == expected["the whole expression"][0]
    assert [(c["criterion"], c["kept"], c["dropped"]) for c in manifest["filter"]["criteria"]] == [
        (text, *expected[text]) for text in criteria(WHERE)]
    for name, entry in manifest["shards"].items():
        rows = pq.read_table(output / f"{name}.parquet")
        assert entry["status"] == "committed" and entry["rows"] == rows.num_rows
        assert entry["clips"] == pc.sum(pc.equal(rows["status"], "ok")).as_py()
        assert entry["error_rows"] == 0  # passed is null on error rows
        assert entry["rejected"] == 0
        assert entry["size_bytes"] == (output / f"{name}.parquet").stat().st_size
        footer = json.loads(pq.read_metadata(output / f"{name}.parquet").metadata[SHARD_METADATA_KEY])
        assert footer["filter"] == entry["filter"]
    assert manifest["totals"]["committed"] == 2 and manifest["totals"]["failed"] == 0


def test_error_rows_are_kept_only_when_selected(source, tmp_path, capsys):
    status, _, _ = _run(capsys, "--cache", str(source), "--output", str(tmp_path / "errors"),
                        "--where", "status = 'error'")
    assert status == 0
    errors = ds.dataset(tmp_path / "errors", format="parquet").to_table()
    assert errors.num_rows == 6 and set(errors["status"].to_pylist()) == {"error"}
    manifest = json.loads((tmp_path / "errors" / MANIFEST_NAME).read_text())
    assert manifest["totals"]["error_rows"] == 6 and manifest["totals"]["clips"] == 0
    status, _, _ = _run(capsys, "--cache", str(source), "--output", str(tmp_path / "rejected"),
                        "--where", "not passed or status = 'error'")
    assert status == 0
    rows = ds.dataset(tmp_path / "rejected", format="parquet").to_table()
    assert set(rows["status"].to_pylist()) == {"ok", "error"}
    assert rows.filter(pc.equal(rows["status"], "ok"))["passed"].to_pylist() == [False] * (rows.num_rows - 6)


def test_nothing_selected_still_commits_every_file(source, tmp_path, capsys):
    status, out, _ = _run(capsys, "--cache", str(source), "--output", str(tmp_path / "none"), "--where", "psnr > 1000")
    assert status == 0
    files = sorted((tmp_path / "none").glob("*.parquet"))
    assert len(files) == 2 and all(pq.read_metadata(f).num_rows == 0 for f in files)
    assert ds.dataset(tmp_path / "none", format="parquet").to_table().num_rows == 0


def test_resume_skips_committed_files_and_refilters_what_is_missing(source, tmp_path, capsys):
    output = tmp_path / "out"
    assert _run(capsys, "--cache", str(source), "--output", str(output), "--where", WHERE)[0] == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in output.glob("*.parquet")}
    # Another spelling of the same expression is the same filter.
    status, out, _ = _run(capsys, "--cache", str(source), "--output", str(output), "--where", WHERE.replace("and", "AND"))
    assert status == 0 and "2 already committed before this run" in out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in output.glob("*.parquet")} == before
    (output / "shard-00001.parquet").unlink()
    status, out, _ = _run(capsys, "--cache", str(source), "--output", str(output), "--where", WHERE)
    assert status == 0 and "1 already committed before this run" in out
    assert (output / "shard-00000.parquet").stat().st_mtime_ns == before["shard-00000.parquet"][0]
    assert pq.read_table(output / "shard-00001.parquet").equals(_filtered_view(source, WHERE)["shard-00001"])
    manifest = json.loads((output / MANIFEST_NAME).read_text())
    assert manifest["totals"]["committed"] == 2


def test_a_changed_source_file_is_filtered_again(source, tmp_path, capsys):
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    output = tmp_path / "out"
    assert _run(capsys, "--cache", str(copy), "--output", str(output), "--where", "passed")[0] == 0
    # Rewrite one source file with fewer rows, as a re-encode would.
    path = copy / "shard-00000.parquet"
    footer = pq.read_metadata(path)
    table = pq.read_table(path).slice(0, 2)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: footer.metadata[METADATA_KEY]}), path)
    status, out, _ = _run(capsys, "--cache", str(copy), "--output", str(output), "--where", "passed")
    assert status == 0 and "1 already committed before this run" in out
    assert pq.read_table(output / "shard-00000.parquet").equals(_filtered_view(copy, "passed")["shard-00000"])


def test_another_expression_is_refused_unless_overwrite(source, tmp_path, capsys):
    output = tmp_path / "out"
    assert _run(capsys, "--cache", str(source), "--output", str(output), "--where", WHERE)[0] == 0
    status, _, err = _run(capsys, "--cache", str(source), "--output", str(output), "--where", "passed")
    assert status == 2
    assert "already holds another cache" in err and WHERE in err and "--overwrite" in err
    status, _, err = _run(capsys, "--cache", str(source), "--output", str(output), "--where", "passed", "--overwrite")
    assert status == 0, err
    assert ds.dataset(output, format="parquet").to_table().sort_by("key").equals(
        pa.concat_tables(_filtered_view(source, "passed").values()).sort_by("key"))
    assert json.loads((output / MANIFEST_NAME).read_text())["job"]["where"] == "passed"


def test_an_encoded_cache_in_output_is_refused(source, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    status, _, err = _run(capsys, "--cache", str(source), "--output", str(copy), "--where", "passed")
    assert status == 2 and "an encoded cache" in err
    status, _, err = _run(capsys, "--cache", str(source), "--output", str(source), "--where", "passed")
    assert status == 2 and "--output must differ from --cache" in err


def test_a_filtered_cache_filters_again_and_keeps_the_chain(source, tmp_path, capsys):
    assert _run(capsys, "--cache", str(source), "--output", str(tmp_path / "a"), "--where", "passed")[0] == 0
    assert _run(capsys, "--cache", str(tmp_path / "a"), "--output", str(tmp_path / "b"), "--where", "psnr > 11.3")[0] == 0
    metadata = read_cache_metadata(pq.read_schema(tmp_path / "b" / "shard-00000.parquet").metadata)
    assert metadata["filter"]["expression"] == "psnr > 11.3"
    assert metadata["filter"]["previous"]["expression"] == "passed"
    both = ds.dataset(tmp_path / "b", format="parquet").to_table().sort_by("key")
    assert both.equals(pa.concat_tables(_filtered_view(source, "passed and psnr > 11.3").values()).sort_by("key"))


@pytest.mark.parametrize("args, message", [
    (["--where", "pased"], "unknown column 'pased' (did you mean 'passed'?); the columns are: key,"),
    (["--where", "psnr > 'x'"], "cannot compare 'psnr'"),
    (["--where", "passed and"], "expected a column"),
    (["--where", "passed", "--workers", "0"], "--workers"),
])
def test_usage_errors_exit_2(source, tmp_path, capsys, args, message):
    status, _, err = _run(capsys, "--cache", str(source), "--output", str(tmp_path / "out"), *args)
    assert status == 2 and message in err, err
    assert not list((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else True


def test_a_directory_without_a_cache_exits_2(tmp_path, capsys):
    status, _, err = _run(capsys, "--cache", str(tmp_path), "--output", str(tmp_path / "out"), "--where", "passed")
    assert status == 2 and "no committed .parquet files" in err


def test_a_missing_cache_folder_exits_2_saying_so(tmp_path, capsys):
    missing = tmp_path / "no-such-cache"
    status, _, err = _run(capsys, "--cache", str(missing), "--output", str(tmp_path / "out"), "--where", "passed")
    assert status == 2 and f"--cache {str(missing)!r} does not exist" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, column, reason", [
    ("passed and lpips < 0.2", "lpips", "no LPIPS weights: missing the "),
    ("psnr >= 10 or disc_score in (1, 2)", "disc_score", "no discriminator weights (--disc-weights)"),
    ("not (lpips > 0.5)", "lpips", "no LPIPS weights: missing the "),
])
def test_a_criterion_on_a_score_null_in_every_row_is_refused_with_its_reason(
        default_scores_cache, tmp_path, capsys, where, column, reason):
    status, _, err = _run(capsys, "--cache", str(default_scores_cache), "--output", str(tmp_path / "out"),
                          "--where", where)
    assert status == 2, err
    assert f"'{column}' is null in every row of the cache ({reason}" in err
    assert f"test it with '{column} is null' or '{column} is not null'" in err
    assert f"  {where}\n" in err  # the expression is quoted, a caret under the column
    assert not (tmp_path / "out").exists()  # refused before the output is touched


def test_is_null_on_a_score_null_in_every_row_still_filters(default_scores_cache, tmp_path, capsys):
    rows = ds.dataset(default_scores_cache, format="parquet").to_table()
    assert rows["lpips"].null_count == rows.num_rows > rows["psnr"].null_count > 0
    status, out, err = _run(capsys, "--cache", str(default_scores_cache), "--output", str(tmp_path / "null"),
                            "--where", "lpips is null and psnr is not null")
    assert status == 0, err
    kept = ds.dataset(tmp_path / "null", format="parquet").to_table()
    assert kept.num_rows == rows.num_rows - rows["psnr"].null_count and set(kept["status"].to_pylist()) == {"ok"}
    status, _, err = _run(capsys, "--cache", str(default_scores_cache), "--output", str(tmp_path / "none"),
                          "--where", "lpips is not null")
    assert status == 0, err
    assert ds.dataset(tmp_path / "none", format="parquet").to_table().num_rows == 0


def test_a_column_the_statistics_show_null_everywhere_is_refused(source, tmp_path, capsys):
    # An error-only cache: its metadata gives no reason for null scores, its footers' statistics do.
    status, _, _ = _run(capsys, "--cache", str(source), "--output", str(tmp_path / "errors"), "--where", "status = 'error'")
    assert status == 0
    status, _, err = _run(capsys, "--cache", str(tmp_path / "errors"), "--output", str(tmp_path / "out"),
                          "--where", "status = 'error' and psnr > 0")
    assert status == 2
    assert "'psnr' is null in every row of the cache (it holds only nulls" in err, err
    status, _, err = _run(capsys, "--cache", str(tmp_path / "errors"), "--output", str(tmp_path / "out"),
                          "--where", "psnr is null")
    assert status == 0, err


def test_no_model_is_built(source, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the filter job built a torch module")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    status, _, err = _run(capsys, "--cache", str(source), "--output", str(tmp_path / "out"), "--where", WHERE)
    assert status == 0, err


def test_an_interrupted_filter_drops_the_file_it_was_writing(source, tmp_path):
    plan = plan_filter(FilterSettings(str(source), str(tmp_path / "out"), "passed"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(_Stopped):
        filter_file(plan, plan.todo[0], stop)
    assert list((tmp_path / "out").rglob("*.parquet")) == []
