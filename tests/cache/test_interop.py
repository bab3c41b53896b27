"""A cache is plain Parquet: Ray Data, DuckDB, pandas, Hugging Face `datasets` and numpy alone read it."""

import os
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from pipeline.encode.scoring import ScoreSettings
from pipeline.encode.settings import EncodeSettings, RunSettings
from pipeline.reader import LatentDataset, load_latent
from pipeline.run.runner import run_encode_job
from tests.media import encode_mp4, moving_pattern, write_tar
from tests.processes import ROOT

QUIET = RunSettings(num_actors=2, cpus_per_actor=1, batch_size=4, progress=False)

# The README's snippet, verbatim: numpy restores a latent (bfloat16 widened to float32 by bit shift) and
# undoes its normalisation (scalars or per channel).
NUMPY_SNIPPET = """\
import numpy as np, pyarrow.parquet as pq
row = pq.read_table("cache/shard-00000.parquet", filters=[("status", "=", "ok")]).slice(0, 1).to_pylist()[0]
dtype = {"float16": "<f2", "float32": "<f4", "bfloat16": "<u2"}[row["latent_dtype"]]
latent = np.frombuffer(row["latent"], dtype=dtype).reshape(row["latent_shape"])
if row["latent_dtype"] == "bfloat16": latent = (latent.astype("<u4") << 16).view("<f4")  # bf16 = top half of f32
# Undo the normalisation (e.g. to decode with the VAE's own library): numbers, or one value per channel.
import json
vae = json.loads(pq.read_schema("cache/shard-00000.parquet").metadata[b"video_latent_cache"])["vae"]
shift, scale = (np.asarray(vae[k], dtype="<f4").reshape(-1, 1, 1, 1) for k in ("shift_factor", "scale_factor"))
raw = latent.astype("<f4") / scale + shift
"""


@pytest.fixture(scope="module")
def caches(tmp_path_factory, local_ray) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interop")
    shards = root / "shards"
    shards.mkdir()
    black = encode_mp4(np.zeros((12, 48, 64, 3), np.uint8))  # scores ~5.5 dB: rejected by min_psnr 8
    pattern = encode_mp4(moving_pattern(12, 48, 64, seed=1))
    write_tar(shards / "shard-00000.tar",
              [("a", {"mp4": pattern, "txt": b"first"}), ("b", {"mp4": black}), ("c", {"txt": b"no video"})])
    write_tar(shards / "shard-00001.tar", [("d", {"mp4": encode_mp4(moving_pattern(12, 48, 64, seed=2))})])
    common = dict(vae="tiny", allow_random_weights=True, num_frames=4, clips_per_video=2, resolution="32")
    made = {}
    for name, inputs, settings in [
        ("float16", "shard-0000{0..1}.tar", EncodeSettings(scoring=ScoreSettings(scores=("psnr",), min_psnr=8.0),
                                                           **common)),
        ("bfloat16", "shard-00000.tar", EncodeSettings(latent_dtype="bfloat16", scoring=ScoreSettings(scores=()),
                                                       **common)),
        ("per_channel", "shard-00000.tar", EncodeSettings(latent_shift=(0.1, -0.2, 0.3, 0.0), latent_dtype="float32",
                                                          latent_scale=(0.5, 1.0, 2.0, 1.5),
                                                          scoring=ScoreSettings(scores=()), **common)),
    ]:
        report = run_encode_job(str(shards / inputs), str(root / name / "cache"), settings, QUIET)
        assert report.exit_status == 0, report
        made[name] = root / name / "cache"
    return made


def _rows(cache: Path) -> list[dict]:
    return ds.dataset(cache, format="parquet").to_table().to_pylist()


def test_ray_data_reads_the_cache(caches, local_ray):
    import ray.data

    cache = caches["float16"]
    from ray.data.expressions import col

    dataset = ray.data.read_parquet(str(cache)).select_columns(["key", "status", "passed", "latent", "latent_shape"])
    assert dataset.count() == 7  # a: 2 clips, b: 2 clips, c: error, d: 2 clips
    passed = dataset.filter(expr=col("passed") == True)  # noqa: E712 (an expression, not a test)
    keys = []
    for batch in passed.iter_batches(batch_size=4, batch_format="numpy"):
        for key, latent, shape in zip(batch["key"], batch["latent"], batch["latent_shape"]):
            restored = np.frombuffer(latent, dtype="<f2").reshape(list(shape))
            assert np.array_equal(restored, load_latent(cache, key).numpy())
            keys.append(key)
    assert sorted(keys) == sorted(s["key"] for s in LatentDataset(cache, where="passed"))
    assert len(keys) == 4


def test_duckdb_queries_the_metadata(caches, monkeypatch):
    duckdb = pytest.importorskip("duckdb")
    cache = caches["float16"]
    monkeypatch.chdir(cache.parent)
    sql = duckdb.connect()
    average = sql.execute("SELECT avg(psnr) FROM 'cache/*.parquet' WHERE passed").fetchone()[0]
    rows = _rows(cache)
    expected = np.mean([row["psnr"] for row in rows if row["passed"]])
    assert average == pytest.approx(expected, rel=1e-6)
    counts = dict(sql.execute("SELECT status, count(*) FROM 'cache/*.parquet' GROUP BY status").fetchall())
    assert counts == {"ok": 6, "error": 1}
    key, latent, shape = sql.execute(
        "SELECT key, latent, latent_shape FROM 'cache/*.parquet' WHERE NOT passed ORDER BY key LIMIT 1").fetchone()
    assert key.startswith("shard-00000/b/")
    assert np.array_equal(np.frombuffer(latent, "<f2").reshape(shape), load_latent(cache, key).numpy())


def test_pandas_reads_every_column(caches):
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(caches["float16"])
    assert len(frame) == 7 and frame.key.is_unique
    assert set(frame.status) == {"ok", "error"}
    assert frame.groupby("passed").size().to_dict() == {False: 2, True: 4}
    first = frame[frame.status == "ok"].iloc[0]
    restored = np.frombuffer(first.latent, "<f2").reshape(list(first.latent_shape))
    assert np.array_equal(restored, load_latent(caches["float16"], first.key).numpy())


def test_hugging_face_datasets_reads_the_cache(caches, tmp_path):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    cache = caches["float16"]
    loaded = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in cache.glob("*.parquet")),
                                   split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 7
    passed = loaded.filter(lambda row: bool(row["passed"]))
    assert passed.num_rows == 4
    row = passed[0]
    restored = np.frombuffer(row["latent"], "<f2").reshape(row["latent_shape"])
    assert np.array_equal(restored, load_latent(cache, row["key"]).numpy())


@pytest.mark.parametrize("name", ["float16", "bfloat16", "per_channel"])
def test_numpy_alone_restores_a_latent_and_its_raw_values(caches, name, monkeypatch):
    monkeypatch.chdir(caches[name].parent)
    namespace: dict = {}
    exec(NUMPY_SNIPPET, namespace)
    latent, row = namespace["latent"], namespace["row"]
    dtype = row["latent_dtype"]
    assert latent.dtype == (np.float16 if dtype == "float16" else np.float32)
    expected = load_latent(caches[name], row["key"])
    assert expected.dtype == getattr(torch, dtype)
    assert np.array_equal(latent, expected.float().numpy().astype(latent.dtype))
    undone = LatentDataset(caches[name]).normalisation.undo(expected.float())
    np.testing.assert_allclose(namespace["raw"], undone.numpy(), rtol=1e-6, atol=1e-6)


def test_the_readme_shows_the_tested_snippet():
    assert NUMPY_SNIPPET in (ROOT / "README.md").read_text()
