"""The HTML report: one self-contained page that parses, whose every image decodes, with the totals,
histograms, throughput and contact sheets the cache calls for; rendered by headless chromium where
Debian's chromium is installed."""

import base64
import io
import json
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.report import main as report_main
from pipeline.cache.report import NO_PREVIEWS
from tests.caches import MIN_PSNR
from tests.processes import HUNG_AFTER_S

CHROMIUM = Path("/usr/bin/chromium")


class _Page(HTMLParser):
    """Collects what the tests look at; fails on tags a self-contained, script-free page must not have."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.open_svgs = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attributes)
        for name in ("src", "href", "xlink:href", "action", "poster", "data"):
            if name in attributes:
                self.links.append(attributes[name])

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def _svgs(page: str) -> list[ElementTree.Element]:
    blocks = []
    start = page.find("<svg")
    while start != -1:
        end = page.index("</svg>", start) + len("</svg>")
        blocks.append(ElementTree.fromstring(page[start:end]))
        start = page.find("<svg", end)
    return blocks


def _decode(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header in ("data:image/jpeg;base64", "data:image/png;base64"), header
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    image.load()
    assert image.format == ("JPEG" if "jpeg" in header else "PNG")
    return image


@pytest.fixture(scope="module")
def cache(encoded_test_cache) -> Path:
    return encoded_test_cache


@pytest.fixture(scope="module")
def report(cache, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert report_main(["--cache", str(cache), "--out", str(out), "--worst", "3"]) == 0
    return out, out.read_text(encoding="utf-8")


def test_the_page_is_self_contained_and_every_image_decodes(report):
    _, page = report
    parsed = _parse(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert all(link.startswith("data:") for link in parsed.links), parsed.links
    assert "http://" not in page and "https://" not in page and "url(" not in page
    # Contact sheets: 3 worst and 3 best clips, each a JPEG of 2 rows of 4 frames.
    assert len(parsed.images) == 6
    for attributes in parsed.images:
        image = _decode(attributes["src"])
        assert image.height == 2 * 96 and image.width == 4 * 96
    svgs = _svgs(page)
    assert len(svgs) == 5  # clips per bucket, and one histogram per score with values
    assert svgs[0].get("aria-label") == "clips per bucket"
    for svg in svgs:
        assert svg.tag == "svg" and svg.findall("rect")


def test_totals_and_errors_by_reason(report, cache):
    _, page = report
    text = " ".join(_parse(page).text)
    table = ds.dataset(cache, format="parquet").to_table(columns=["status", "passed"])
    ok = pc.sum(pc.equal(table["status"], "ok")).as_py()
    passed = pc.sum(pc.equal(table["passed"], True)).as_py()
    totals = f"<td class=\"n\">2</td><td class=\"n\">{table.num_rows}</td><td class=\"n\">{ok}</td>" \
             f"<td class=\"n\">6</td><td class=\"n\">{passed}</td><td class=\"n\">{ok - passed}</td>"
    assert totals in page
    assert f"psnr >= {MIN_PSNR:g}" in text
    assert "no video member in this sample (found: txt)" in text
    assert "cannot decode video" in text
    assert "RANDOM" in text


def test_histograms_draw_the_threshold(report):
    _, page = report
    svgs = [svg for svg in _svgs(page) if svg.get("aria-label") != "clips per bucket"]
    titles = [svg.find("text").text for svg in svgs]
    assert titles == ["psnr (higher is better)", "ssim (higher is better)", "lpips (lower is better)",
                      "disc_score (higher is better)"]
    psnr = svgs[0]
    assert any(line.get("stroke-dasharray") for line in psnr.findall("line"))
    assert any((t.text or "").startswith(f"passed if >= {MIN_PSNR:g}") for t in psnr.findall("text"))
    # Bins below the threshold are drawn red, the others blue.
    assert {rect.get("fill") for rect in psnr.findall("rect")} == {"#d9534f", "#4a7ebb"}
    assert not any(line.get("stroke-dasharray") for svg in svgs[1:] for line in svg.findall("line"))


def test_throughput_per_shard(report, cache):
    _, page = report
    manifest = json.loads((cache / "_manifest.json").read_text())
    for name, entry in manifest["shards"].items():
        assert f"<td>{name}</td>" in page
        assert f"{entry['seconds']['vae_encode']:.2f}" in page
        assert f"{entry['clips'] / entry['seconds']['total']:.2f}" in page
    for stage in ("video_decode s", "vae_encode s", "score s", "total s", "clips/s"):
        assert f"<th>{stage}</th>" in page


def test_contact_sheets_rank_worst_and_best(report, cache):
    _, page = report
    table = ds.dataset(cache, format="parquet").to_table(columns=["key", "status", "psnr"])
    ok = table.filter(pc.equal(table["status"], "ok")).sort_by([("psnr", "ascending"), ("key", "ascending")])
    keys = ok["key"].to_pylist()
    shown = [image["alt"] for image in _parse(page).images]
    assert shown == keys[:3] + keys[::-1][:3]
    assert "3 worst by psnr" in page and "3 best by psnr" in page


def test_by_another_score(cache, tmp_path):
    out = tmp_path / "r.html"
    assert report_main(["--cache", str(cache), "--out", str(out), "--worst", "2", "--by", "lpips"]) == 0
    page = out.read_text()
    table = ds.dataset(cache, format="parquet").to_table(columns=["key", "status", "lpips"])
    ok = table.filter(pc.equal(table["status"], "ok")).sort_by([("lpips", "descending"), ("key", "ascending")])
    assert [image["alt"] for image in _parse(page).images][:2] == ok["key"].to_pylist()[:2]
    assert "lower is better" in page


@pytest.fixture(scope="module")
def bare_cache(cache, tmp_path_factory) -> Path:
    """The cache as it would be without --keep-previews and without LPIPS, and without a manifest."""
    copy = tmp_path_factory.mktemp("bare")
    for path in cache.glob("*.parquet"):
        file = pq.ParquetFile(path)
        table = file.read()
        table = table.set_column(table.schema.get_field_index("preview"), "preview", pa.nulls(table.num_rows, pa.large_binary()))
        table = table.set_column(table.schema.get_field_index("lpips"), "lpips", pa.nulls(table.num_rows, pa.float32()))
        metadata = json.loads(file.schema_arrow.metadata[b"video_latent_cache"])
        metadata["null_scores"] = {"lpips": "no LPIPS weights given"}
        writer_metadata = {b"video_latent_cache": json.dumps(metadata).encode(),
                           b"video_latent_cache.shard": file.metadata.metadata[b"video_latent_cache.shard"]}
        pq.write_table(table.replace_schema_metadata(writer_metadata), copy / path.name)
    return copy


def test_a_cache_without_previews_says_how_to_get_them(bare_cache, tmp_path):
    out = tmp_path / "r.html"
    assert report_main(["--cache", str(bare_cache), "--out", str(out)]) == 0
    page = out.read_text()
    parsed = _parse(page)
    assert NO_PREVIEWS in " ".join(parsed.text) and "encode with --keep-previews" in page
    assert parsed.images == []
    assert len(_svgs(page)) == 4  # clips per bucket, and the 3 scores with values
    assert "lpips: no values (no LPIPS weights given)" in " ".join(parsed.text)
    assert "From the files&#x27; footers (no _manifest.json)" in page


def test_usage_errors(cache, bare_cache, tmp_path, capsys):
    assert report_main(["--cache", str(bare_cache), "--out", str(tmp_path / "r.html"), "--by", "lpips"]) == 2
    assert "has no lpips values" in capsys.readouterr().err
    assert report_main(["--cache", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "no committed .parquet files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        report_main(["--cache", str(cache), "--out", str(tmp_path / "r.html"), "--by", "clipscore"])
    assert caught.value.code == 2
    (tmp_path / "file").write_text("")
    assert report_main(["--cache", str(cache), "--out", str(tmp_path / "file" / "r.html")]) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_headless_chromium_renders_the_page(report, tmp_path):
    out, _ = report
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}", "--window-size=1200,2000",
         out.resolve().as_uri()],
        check=True, timeout=HUNG_AFTER_S, capture_output=True,
    )
    image = Image.open(screenshot)
    assert image.size == (1200, 2000)
    pixels = np.asarray(image.convert("RGB"))
    # Not a blank page: text, red warnings, blue histogram bars.
    assert pixels.std() > 20
    blue = (pixels[..., 0] < 110) & (pixels[..., 1] > 100) & (pixels[..., 1] < 150) & (pixels[..., 2] > 160)
    assert blue.sum() > 500
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
