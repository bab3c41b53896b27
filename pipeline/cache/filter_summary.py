"""What the filter job reports: rows kept and dropped per criterion and for the whole expression."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.cache.manifest import summarize


@dataclass
class FilterReport:
    source: str
    output: str
    where: str
    criteria: list[str]
    shards: dict[str, dict[str, Any]]
    skipped: list[str]
    elapsed_s: float = 0.0
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return summarize(self.shards)

    @property
    def counts(self) -> dict[str, Any]:
        """Rows of the source, kept and dropped, per criterion and for the whole expression."""
        return total_counts(self.criteria, self.shards.values())

    @property
    def exit_status(self) -> int:
        return 3 if self.failed else 0


def total_counts(texts: list[str], entries: Any) -> dict[str, Any]:
    per_criterion = [0] * len(texts)
    source_rows = kept = 0
    for entry in entries:
        counts = entry.get("filter")
        if not counts:
            continue
        source_rows += counts["source_rows"]
        kept += counts["kept"]
        for index, item in enumerate(counts["criteria"]):
            per_criterion[index] += item["kept"]
    return {
        "source_rows": source_rows,
        "kept": kept,
        "dropped": source_rows - kept,
        "criteria": [{"criterion": text, "kept": n, "dropped": source_rows - n} for text, n in zip(texts, per_criterion)],
    }


def format_filter_summary(report: FilterReport) -> str:
    counts = report.counts
    totals = report.totals
    width = max([len("the whole expression"), *(len(text) for text in report.criteria)]) + 2

    def share(n: int) -> str:
        return f"{100 * n / counts['source_rows']:.1f}%" if counts["source_rows"] else "-"

    lines = [
        "",
        f"{'source':<18}{report.source}",
        f"{'output':<18}{report.output}",
        f"{'where':<18}{report.where}",
        "",
        f"{'criterion':<{width}}{'kept':>10}{'dropped':>10}{'kept %':>9}",
    ]
    for item in counts["criteria"]:
        lines.append(f"{item['criterion']:<{width}}{item['kept']:>10}{item['dropped']:>10}{share(item['kept']):>9}")
    lines.append(f"{'the whole expression':<{width}}{counts['kept']:>10}{counts['dropped']:>10}{share(counts['kept']):>9}")
    lines += [
        "",
        f"{'shards':<18}{totals['shards']} ({totals['committed']} committed, {totals['partial']} partial, "
        f"{totals['failed']} failed; {len(report.skipped)} already committed before this run)",
        f"{'rows':<18}{counts['kept']} of {counts['source_rows']} kept: {totals['clips']} clips "
        f"({totals['clips'] - totals['rejected']} passed, {totals['rejected']} below the thresholds), "
        f"{totals['error_rows']} error rows",
        f"{'time':<18}{report.elapsed_s:.1f} s",
    ]
    for entry in report.failed:
        lines.append(f"FAILED shard      {entry['name']}: {entry['reason']}")
    if report.failed:
        lines.append("Failed files are listed in _manifest.json; rerun the same command to retry them.")
    return "\n".join(lines)
