"""Mixed footage (landscape, portrait, square, too small) through `jobs.encode --buckets` on real Ray: each clip
in its documented bucket, never upscaled, the bucket column grouped the same by DuckDB and by jobs.inspect."""

import re

import pyarrow.parquet as pq
import pytest

from jobs.encode import main as encode_main
from jobs.inspect import main as inspect_main
from tests.media import encode_mp4, moving_pattern, write_tar

# tiny VAE: spatial factor 2, so step 4; buckets of about 32² and 48² pixels at 16:9, 1:1 and 9:16.
SPEC = "area=32,48;aspect=16:9,1:1,9:16;frames=4,8"
SOURCES = {"landscape": (64, 112), "portrait": (112, 64), "square": (56, 56), "tiny": (24, 24)}
EXPECTED = {  # (height, width) of the bucket, from the spec's sizes (see test_buckets for the rule)
    "landscape": (36, 64), "portrait": (64, 36), "square": (48, 48),
}


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("bucketed")
    # 24 pixels wide hold 3 bits of moving_pattern's frame stamp: 8 frames.
    samples = [(name, {"mp4": encode_mp4(moving_pattern(8 if w < 32 else 12, h, w, seed=i))})
               for i, (name, (h, w)) in enumerate(SOURCES.items())]
    write_tar(root / "shard-00000.tar", samples)
    status = encode_main(["--input", str(root / "shard-00000.tar"), "--output", str(root / "cache"), "--vae", "tiny",
                          "--allow-random-weights", "--buckets", SPEC, "--frame-extraction", "head",
                          "--scores", "psnr", "--num-actors", "1", "--no-progress"])
    assert status == 0
    return root / "cache"


def test_each_video_lands_in_its_bucket_with_one_clip_per_frame_bucket(bucketed):
    rows = pq.read_table(bucketed / "shard-00000.parquet").to_pylist()
    by_sample = {}
    for row in rows:
        by_sample.setdefault(row["sample_key"], []).append(row)
    for name, size in EXPECTED.items():
        clips = sorted(by_sample[name], key=lambda row: row["clip_index"])
        assert [(r["frame_start"], r["num_frames"]) for r in clips] == [(0, 4), (0, 8)]  # head: one per length
        for row in clips:
            assert (row["height"], row["width"]) == size and row["status"] == "ok"
            assert row["bucket"] == f"{size[0]}x{size[1]}x{row['num_frames']}"
            assert row["latent_shape"] == [4, row["num_frames"], size[0] // 2, size[1] // 2]
            assert (row["src_height"], row["src_width"]) == SOURCES[name]
    (tiny,) = by_sample["tiny"]
    assert tiny["status"] == "error" and tiny["bucket"] is None
    assert "24x24 is smaller than every bucket" in tiny["error"] and "--allow-upscale" in tiny["error"]
    # Rows are grouped by bucket in row groups of their own, sorted, the error row last.
    file = pq.ParquetFile(bucketed / "shard-00000.parquet")
    groups = [file.read_row_group(i, columns=["bucket"]).column(0).to_pylist() for i in range(file.num_row_groups)]
    assert [set(group) for group in groups] == [{"36x64x4"}, {"36x64x8"}, {"48x48x4"}, {"48x48x8"}, {"64x36x4"},
                                                 {"64x36x8"}, {None}]


def test_duckdb_group_by_bucket_gives_the_counts_inspect_prints(bucketed, capsys):
    duckdb = pytest.importorskip("duckdb")
    grouped = dict(duckdb.sql(f"SELECT bucket, count(*) FROM '{bucketed}/*.parquet' WHERE status = 'ok' "
                              "GROUP BY bucket").fetchall())
    assert grouped == {"36x64x4": 1, "36x64x8": 1, "64x36x4": 1, "64x36x8": 1, "48x48x4": 1, "48x48x8": 1}
    assert inspect_main([str(bucketed)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("buckets"))
    assert dict((name, int(n)) for name, n in re.findall(r"(\d+x\d+x\d+) \((\d+) clips\)", line)) == grouped


def test_upscaling_is_allowed_only_when_asked(tmp_path, local_ray):
    write_tar(tmp_path / "shard-00000.tar", [("tiny", {"mp4": encode_mp4(moving_pattern(8, 24, 24))})])
    status = encode_main(["--input", str(tmp_path / "shard-00000.tar"), "--output", str(tmp_path / "cache"),
                          "--vae", "tiny", "--allow-random-weights", "--buckets", SPEC, "--allow-upscale",
                          "--scores", "none", "--num-actors", "1", "--no-progress"])
    assert status == 0
    rows = pq.read_table(tmp_path / "cache" / "shard-00000.parquet").to_pylist()
    # The smallest area's square bucket; uniform extraction, one clip per frame bucket.
    assert sorted((r["bucket"], r["frame_start"]) for r in rows) == [("32x32x4", 0), ("32x32x8", 0)]


@pytest.mark.parametrize("flags, message", [
    (["--buckets", "area=32;step=3"], "step=3 is not a multiple of the VAE's spatial factor 2; use 2 or 4"),
    (["--buckets", "area=32", "--resolution", "64"], "--resolution and --buckets both set the frame size"),
    (["--vae", "tiny-3d", "--buckets", "area=32;frames=9,10"], "--buckets frames= 10 does not fit"),
    (["--buckets", "area=32;frames=4,8", "--num-frames", "6"], "--num-frames 6 is not among --buckets frames="),
])
def test_bucket_specs_the_vae_cannot_take_are_usage_errors(tmp_path, capsys, flags, message):
    write_tar(tmp_path / "shard-00000.tar", [("a", {"mp4": encode_mp4(moving_pattern(12, 48, 64))})])
    vae = [] if "--vae" in flags else ["--vae", "tiny"]
    status = encode_main(["--input", str(tmp_path / "shard-00000.tar"), "--output", str(tmp_path / "cache"), *vae,
                          "--allow-random-weights", *flags, "--no-progress"])
    assert status == 2
    assert message in capsys.readouterr().err


def test_spans_from_the_json_sidecar_and_a_target_fps_through_the_job(tmp_path, local_ray):
    meta = b'{"clips": [[0.0, 1.0], [1.5, 2.5]], "caption": "a drifting pattern"}'
    write_tar(tmp_path / "shard-00000.tar", [
        ("scenes", {"mp4": encode_mp4(moving_pattern(75, 48, 64), fps=25), "json": meta}),
        ("no_sidecar", {"mp4": encode_mp4(moving_pattern(75, 48, 64), fps=25)}),
    ])
    status = encode_main(["--input", str(tmp_path / "shard-00000.tar"), "--output", str(tmp_path / "cache"),
                          "--vae", "tiny", "--allow-random-weights", "--resolution", "32", "--target-fps", "12",
                          "--clip-spans-from", "json:clips", "--num-frames", "8", "--scores", "none",
                          "--num-actors", "1", "--no-progress"])
    assert status == 0
    rows = {(r["sample_key"], r["clip_index"]): r for r in pq.read_table(tmp_path / "cache").to_pylist()}
    # 12 fps frames 0-11 lie in [0, 1 s), 18-29 in [1.5, 2.5 s): 8-frame clips from each span's first frame.
    scenes = [rows[("scenes", 0)], rows[("scenes", 1)]]
    # 18 × 25/12 = 37.5: a tie, to the earlier frame. Both clips span 15 source frames: 7 intervals in 0.6 s.
    assert [(r["frame_start"], r["num_frames"]) for r in scenes] == [(0, 8), (37, 8)]
    assert all(r["fps"] == pytest.approx(7 / 0.6, rel=1e-3) and r["frame_stride"] is None for r in scenes)
    error = rows[("no_sidecar", -1)]
    assert error["status"] == "error" and "--clip-spans-from json:clips: the sample has no JSON sidecar" in error["error"]


def test_the_report_shows_clips_per_bucket(bucketed, tmp_path):
    import xml.etree.ElementTree as ElementTree

    from pipeline.cache.report import write_report

    page = (tmp_path / "report.html")
    write_report(str(bucketed), str(page))
    html = page.read_text()
    section = html[html.index("<h2>Buckets</h2>"):html.index("<h2>Scores</h2>")]
    for bucket in ("36x64x4", "36x64x8", "64x36x4", "64x36x8", "48x48x4", "48x48x8"):
        assert f"<td>{bucket}</td>" in section
    chart = section[section.index("<svg"):section.index("</svg>") + 6]
    assert len(ElementTree.fromstring(chart).findall("{*}rect") or ElementTree.fromstring(chart).findall("rect")) == 6
