"""One self-contained HTML page about a cache: totals, score histograms with the thresholds, per-shard
throughput, and contact sheets of the worst and best clips (the `preview` JPEGs).

Everything is inline: CSS in a <style>, histograms as <svg>, previews as data: URIs. No script, no
external resource, so the file opens anywhere, offline, and can be attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cache.summary import (
    HIGHER_IS_BETTER,
    QUANTILES,
    SCORES,
    CacheScan,
    bucket_counts,
    errors_by_reason,
    format_number,
    latent_shapes,
    row_counts,
    sampling_text,
    scan_cache,
    score_quantiles,
    score_values,
    thresholds,
    vae_text,
    weights_text,
)
from pipeline.errors import UsageError
from pipeline.storage import locate

NO_PREVIEWS = ("This cache has no previews: encode with --keep-previews to see source and reconstruction "
               "frames here.")
# Stages in the order a shard goes through them (encode, then the filter's); others follow, sorted.
STAGE_ORDER = ("video_decode", "vae_encode", "vae_decode", "score", "read", "filter", "write")
MAX_SHARD_ROWS = 200
HISTOGRAM_BINS = 30

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d2330; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #dde; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eef; }
th { text-align: left; background: #f4f6fa; } td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.warn { color: #a4161a; font-weight: 600; } .muted { color: #667; }
.note { background: #fff6e0; border: 1px solid #f0d9a0; padding: 8px 12px; display: inline-block; }
.hists { display: flex; flex-wrap: wrap; gap: 16px; } .hist { border: 1px solid #e4e7ef; padding: 6px; }
.sheet { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #e4e7ef; padding: 6px; max-width: 420px; }
figure img { display: block; max-width: 100%; image-rendering: auto; }
figcaption { font-size: 12px; word-break: break-all; }
.bad { color: #a4161a; } .good { color: #1b7a3a; }
.bar { display: inline-block; height: 10px; background: #4a7ebb; vertical-align: middle; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"n\">{cell}</td>" if i in numeric else f"<td>{cell}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def histogram_svg(values: np.ndarray, title: str, threshold: tuple[str, float] | None = None,
                  bins: int = HISTOGRAM_BINS, width: int = 520, height: int = 210) -> str:
    """A histogram as a standalone <svg> (well-formed XML). The threshold, when given, is drawn as a
    dashed line and bins on its failing side are red."""
    left, right, top, bottom = 46, 30, 26, 36
    lo, hi = float(values.min()), float(values.max())
    if threshold is not None:
        lo, hi = min(lo, threshold[1]), max(hi, threshold[1])
    if hi <= lo:
        pad = abs(lo) * 0.01 or 0.5
        lo, hi = lo - pad, hi + pad
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    peak = max(int(counts.max()), 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(value: float) -> float:
        return left + (value - lo) / (hi - lo) * plot_w

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{_e(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="600">{_e(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#556"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#556"/>',
             f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{peak}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>']
    for count, start, end in zip(counts, edges[:-1], edges[1:]):
        if not count:
            continue
        centre = (start + end) / 2
        failing = threshold is not None and not _passes(centre, threshold)
        bar_h = count / peak * plot_h
        parts.append(f'<rect x="{x(start):.2f}" y="{top + plot_h - bar_h:.2f}" width="{max(x(end) - x(start) - 1, 1):.2f}" '
                     f'height="{bar_h:.2f}" fill="{"#d9534f" if failing else "#4a7ebb"}"><title>'
                     f'{_e(format_number(start))} to {_e(format_number(end))}: {count}</title></rect>')
    for tick in np.linspace(lo, hi, 5):
        parts.append(f'<line x1="{x(tick):.2f}" y1="{top + plot_h}" x2="{x(tick):.2f}" y2="{top + plot_h + 4}" stroke="#556"/>')
        parts.append(f'<text x="{x(tick):.2f}" y="{top + plot_h + 16}" font-size="10" text-anchor="middle">'
                     f'{_e(format_number(float(tick)))}</text>')
    if threshold is not None:
        op, bound = threshold
        tx = x(bound)
        parts.append(f'<line x1="{tx:.2f}" y1="{top - 4}" x2="{tx:.2f}" y2="{top + plot_h}" stroke="#a4161a" '
                     f'stroke-width="2" stroke-dasharray="5,3"/>')
        anchor = "end" if tx > left + plot_w / 2 else "start"
        offset = -4 if anchor == "end" else 4
        parts.append(f'<text x="{tx + offset:.2f}" y="{top + 8}" font-size="11" fill="#a4161a" text-anchor="{anchor}">'
                     f'passed if {_e(op)} {_e(format_number(bound))}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 4}" font-size="10" text-anchor="end" fill="#667">'
                 f'n = {values.size}, mean {_e(format_number(float(values.mean())))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _passes(value: float, threshold: tuple[str, float]) -> bool:
    op, bound = threshold
    return value >= bound if op == ">=" else value <= bound if op == "<=" else True


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_mime(data: bytes) -> str:
    return "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"


def default_rank_score(scan: CacheScan) -> str | None:
    """The score the contact sheets rank by when none is asked for: the first one with a threshold,
    else the first one with values."""
    present = [column for column in SCORES if score_values(scan.table, column).size]
    for column in thresholds(scan.metadata):
        if column in present:
            return column
    return present[0] if present else None


@dataclass(frozen=True)
class SheetClip:
    key: str
    file: str
    scores: dict[str, float | None]
    passed: bool | None
    caption: str | None
    preview: bytes | None


def rank_clips(scan: CacheScan, by: str, count: int) -> tuple[list[SheetClip], list[SheetClip]]:
    """The `count` worst and best ok clips by `by` (worst first / best first), previews attached;
    a clip is never in both lists."""
    table = scan.table
    ok = table.filter(pc.and_(pc.equal(table.column("status"), "ok"), pc.is_valid(table.column(by))))
    order = pc.sort_indices(ok, sort_keys=[(by, "ascending" if HIGHER_IS_BETTER[by] else "descending"),
                                           ("key", "ascending")])
    ranked = ok.take(order)
    worst_rows = ranked.slice(0, count)
    best_start = max(count, ranked.num_rows - count)
    best_rows = ranked.slice(best_start).take(pa.array(range(ranked.num_rows - best_start - 1, -1, -1), pa.int64()))
    previews = _load_previews(scan, worst_rows.column("key").to_pylist() + best_rows.column("key").to_pylist(),
                              worst_rows.column("file").to_pylist() + best_rows.column("file").to_pylist())

    def clips(rows: pa.Table) -> list[SheetClip]:
        return [SheetClip(row["key"], row["file"], {c: row[c] for c in SCORES}, row["passed"], row["caption"],
                          previews.get(row["key"])) for row in rows.to_pylist()]

    return clips(worst_rows), clips(best_rows)


def _load_previews(scan: CacheScan, keys: list[str], files: list[str]) -> dict[str, bytes]:
    """The preview bytes of `keys`, reading the key and preview columns of only the files that hold them."""
    if not keys or not scan.previews:
        return {}
    wanted = set(keys)
    found: dict[str, bytes] = {}
    by_name = {file.name: file for file in scan.files}
    for name in sorted(set(files)):
        file = by_name[name]
        if not file.previews:
            continue
        location = locate(file.url)
        with location.open("rb") as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                rows = parquet.read_row_group(group, columns=["key"])
                mask = pc.is_in(rows.column("key"), value_set=pa.array(sorted(wanted)))
                if not pc.any(mask).as_py():
                    continue
                picked = parquet.read_row_group(group, columns=["key", "preview"]).filter(mask)
                for key, preview in zip(picked.column("key").to_pylist(), picked.column("preview").to_pylist()):
                    if preview is not None:
                        found[key] = preview
    return found


def _header(scan: CacheScan) -> str:
    metadata = scan.metadata
    rows = [
        ["cache", _e(scan.url)],
        ["contract", _e(f"v{metadata.get('contract_version')}, code {metadata.get('code_version', '?')}")],
        ["VAE", _e(vae_text(metadata))],
        ["weights", (f'<span class="warn">{_e(weights_text(metadata))}</span>'
                     if not (metadata.get("vae") or {}).get("weights_sha256") else _e(weights_text(metadata)))],
    ]
    shapes = latent_shapes(scan.table)
    rows.append(["latents", _e("; ".join(f"{dtype} {'x'.join(map(str, shape))} ({n} clips)"
                                         for (dtype, shape), n in shapes.most_common()) or "none")])
    if metadata.get("sampling"):
        rows.append(["sampling", _e(sampling_text(metadata["sampling"]))])
    random_scores = metadata.get("scores_with_random_weights") or []
    if random_scores:
        rows.append(["scores", f'<span class="warn">{_e(", ".join(random_scores))} computed with RANDOM weights '
                               "(meaningless)</span>"])
    chain = metadata.get("filter")
    while chain:
        rows.append(["filtered", _e(f"from {chain.get('source')} where {chain.get('expression')} ({chain.get('time')})")])
        chain = chain.get("previous")
    for field, odd in scan.differing.items():
        rows.append(["warning", f'<span class="warn">files differ in {_e(field)}: {_e(", ".join(odd[:5]))}</span>'])
    return _table(["", ""], rows)


def _totals(scan: CacheScan) -> str:
    counts = row_counts(scan.table)
    parts = [_table(["files", "rows", "clips ok", "error rows", "passed", "rejected"],
                    [[len(scan.files), counts.rows, counts.ok, counts.errors, counts.passed, counts.rejected]],
                    numeric=set(range(6)))]
    limits = thresholds(scan.metadata)
    parts.append("<p>Thresholds: " + (_e(", ".join(f"{c} {op} {format_number(b)}" for c, (op, b) in limits.items()))
                                      or "none (every ok clip passed)") + "</p>")
    errors = errors_by_reason(scan.table)
    if errors:
        parts.append("<h3>Errors by reason</h3>")
        parts.append(_table(["rows", "reason", "example"],
                            [[count, _e(group), f'<span class="muted">{_e(example)}</span>'] for group, count, example in errors],
                            numeric={0}))
    else:
        parts.append("<p>No error rows.</p>")
    return "".join(parts)


def bucket_chart_svg(counts: list[tuple[str, int]], width: int = 520) -> str:
    """Clips per bucket as horizontal bars, largest first, as a standalone <svg>."""
    left, bar, gap, top = 110, 16, 4, 8
    height = top + len(counts) * (bar + gap) + 8
    peak = max((n for _, n in counts), default=1)
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="clips per bucket">']
    for index, (name, count) in enumerate(counts):
        y = top + index * (bar + gap)
        length = count / peak * (width - left - 60)
        parts.append(f'<text x="{left - 6}" y="{y + bar - 4}" font-size="11" text-anchor="end">{_e(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{max(length, 1):.2f}" height="{bar}" fill="#4a7ebb">'
                     f'<title>{_e(name)}: {count}</title></rect>')
        parts.append(f'<text x="{left + length + 4:.2f}" y="{y + bar - 4}" font-size="11">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _buckets(scan: CacheScan) -> str:
    counts = bucket_counts(scan.table)
    if not counts:
        return "<p>No clips.</p>"
    total = sum(n for _, n in counts)
    rows = [[_e(name), *name.split("x"), n, f"{n / total:.1%}"] for name, n in counts]
    return (_table(["bucket", "height", "width", "frames", "clips", "share"], rows, numeric={1, 2, 3, 4, 5})
            + f'<div class="hist">{bucket_chart_svg(counts)}</div>')


def _histograms(scan: CacheScan) -> str:
    limits = thresholds(scan.metadata)
    null_reasons = scan.metadata.get("null_scores") or {}
    quantiles = score_quantiles(scan.table)
    figures, notes = [], []
    for column in SCORES:
        values = score_values(scan.table, column)
        if values.size == 0:
            notes.append(f"<li>{_e(column)}: no values ({_e(null_reasons.get(column, 'not computed'))})</li>")
            continue
        direction = "higher is better" if HIGHER_IS_BETTER[column] else "lower is better"
        figures.append(f'<div class="hist">{histogram_svg(values, f"{column} ({direction})", limits.get(column))}</div>')
    parts = [f'<div class="hists">{"".join(figures)}</div>'] if figures else []
    if notes:
        parts.append(f"<ul>{''.join(notes)}</ul>")
    rows = [[_e(column), stats["n"], *(_e(format_number(stats[name])) for name, _ in QUANTILES)]
            for column, stats in quantiles.items() if stats]
    if rows:
        parts.append(_table(["score", "n", *(name for name, _ in QUANTILES)], rows, numeric=set(range(1, 7))))
    return "".join(parts) or "<p>No scores were computed.</p>"


def _throughput(scan: CacheScan) -> str:
    if scan.manifest is not None:
        entries = list(scan.manifest.get("shards", {}).values())
        source = "_manifest.json"
    else:
        entries = [{**file.shard, "name": file.name} for file in scan.files]
        source = "the files' footers (no _manifest.json)"
    if not entries:
        return "<p>No shard entries.</p>"
    stages = [s for s in STAGE_ORDER if any(s in (e.get("seconds") or {}) for e in entries)]
    stages += sorted({s for e in entries for s in (e.get("seconds") or {})} - set(stages) - {"total"})
    rates = {}
    for entry in entries:
        total = (entry.get("seconds") or {}).get("total")
        if total and entry.get("status") != "failed":
            rates[entry.get("name")] = entry.get("clips", 0) / total
    fastest = max(rates.values(), default=0.0) or 1.0
    rows = []
    for entry in sorted(entries, key=lambda e: str(e.get("name")))[:MAX_SHARD_ROWS]:
        seconds = entry.get("seconds") or {}
        rate = rates.get(entry.get("name"))
        status = _e(entry.get("status", "?"))
        if entry.get("status") in ("failed", "partial"):
            status = f'<span class="warn" title="{_e(entry.get("reason"))}">{status}</span>'
        rows.append([
            _e(entry.get("name")), status, entry.get("rows", ""), entry.get("clips", ""), entry.get("error_rows", ""),
            entry.get("rejected", ""),
            *(_e(f"{seconds[s]:.2f}") if s in seconds else "" for s in stages),
            _e(f"{seconds['total']:.2f}") if "total" in seconds else "",
            (f'{rate:.2f} <span class="bar" style="width:{max(1, round(60 * rate / fastest))}px"></span>'
             if rate is not None else ""),
        ])
    headers = ["shard", "status", "rows", "clips", "error rows", "rejected", *(f"{s} s" for s in stages), "total s", "clips/s"]
    parts = [f"<p class=\"muted\">From {_e(source)}. Seconds are per stage inside the worker that wrote the file.</p>",
             _table(headers, rows, numeric=set(range(2, len(headers))))]
    if len(entries) > MAX_SHARD_ROWS:
        parts.append(f"<p>… and {len(entries) - MAX_SHARD_ROWS} more shards.</p>")
    totals: Counter[str] = Counter()
    for entry in entries:
        totals.update(entry.get("seconds") or {})
    clips = sum(entry.get("clips", 0) for entry in entries if entry.get("status") != "failed")
    if totals.get("total"):
        parts.append(f"<p>All shards: {clips} clips in {totals['total']:.1f} worker-seconds "
                     f"({clips / totals['total']:.2f} clips per worker-second).</p>")
    failed = [entry for entry in entries if entry.get("status") == "failed"]
    for entry in failed:
        parts.append(f'<p class="warn">FAILED {_e(entry.get("url") or entry.get("name"))}: {_e(entry.get("reason"))}</p>')
    return "".join(parts)


def _sheet(clips: list[SheetClip], by: str) -> str:
    figures = []
    for clip in clips:
        verdict = ("<span class=\"good\">passed</span>" if clip.passed else
                   "<span class=\"bad\">rejected</span>" if clip.passed is False else "")
        scores = ", ".join(f"{name} {format_number(value)}" if name != by else f"<b>{name} {format_number(value)}</b>"
                           for name, value in clip.scores.items() if value is not None)
        image = (f'<img src="{_data_uri(clip.preview, _image_mime(clip.preview))}" alt="{_e(clip.key)}">'
                 if clip.preview else '<p class="muted">no preview</p>')
        caption = f"<br><span class=\"muted\">{_e((clip.caption or '')[:160])}</span>" if clip.caption else ""
        figures.append(f"<figure>{image}<figcaption>{_e(clip.key)} {verdict}<br>{scores}{caption}</figcaption></figure>")
    return f'<div class="sheet">{"".join(figures)}</div>'


def _sheets(scan: CacheScan, by: str | None, count: int) -> str:
    parts = []
    if not scan.previews:
        parts.append(f'<p class="note">{_e(NO_PREVIEWS)}</p>')
    if by is None:
        parts.append("<p>No score has values to rank clips by.</p>")
        return "".join(parts)
    if count <= 0:
        return "".join(parts)
    worst, best = rank_clips(scan, by, count)
    direction = "higher is better" if HIGHER_IS_BETTER[by] else "lower is better"
    parts.append(f"<p>Ranked by <b>{_e(by)}</b> ({direction}). Each image: the top row shows 4 source frames, "
                 "the bottom row the same frames as the VAE reconstructs them.</p>")
    parts.append(f"<h3>{len(worst)} worst by {_e(by)}</h3>{_sheet(worst, by)}")
    if best:
        parts.append(f"<h3>{len(best)} best by {_e(by)}</h3>{_sheet(best, by)}")
    return "".join(parts)


def build_report(scan: CacheScan, worst: int = 8, by: str | None = None) -> str:
    """The page, as a string. `by` defaults to `default_rank_score`; UsageError for a score the
    cache does not have."""
    if worst < 0:
        raise UsageError("--worst must be 0 or more")
    if by is not None:
        if by not in SCORES:
            raise UsageError(f"--by {by!r}: expected one of {', '.join(SCORES)}")
        if score_values(scan.table, by).size == 0:
            reason = (scan.metadata.get("null_scores") or {}).get(by, "not computed")
            raise UsageError(f"--by {by}: the cache has no {by} values ({reason})")
    else:
        by = default_rank_score(scan)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return "".join([
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Latent cache report: {_e(scan.url)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Latent cache report</h1><p class=\"muted\">{_e(scan.url)} · generated {_e(generated)}</p>",
        _header(scan),
        "<h2>Totals</h2>", _totals(scan),
        "<h2>Buckets</h2>", _buckets(scan),
        "<h2>Scores</h2>", _histograms(scan),
        "<h2>Per-shard throughput</h2>", _throughput(scan),
        "<h2>Contact sheets</h2>", _sheets(scan, by, worst),
        "</body></html>\n",
    ])


def write_report(cache: str, out: str, worst: int = 8, by: str | None = None) -> str:
    """Scan `cache`, write the page to `out` (replaced atomically when local); returns `out`'s URL."""
    page = build_report(scan_cache(cache), worst, by).encode("utf-8")
    target = locate(out)
    try:
        if target.is_local:
            os.makedirs(os.path.dirname(target.path) or ".", exist_ok=True)
            aside = f"{target.path}.{os.getpid()}.tmp"
            with open(aside, "wb") as handle:
                handle.write(page)
            os.replace(aside, target.path)
        else:
            target.fs.pipe_file(target.path, page)
    except OSError as exc:
        raise UsageError(f"--out {out!r} is not writable: {exc}") from exc
    return target.url
