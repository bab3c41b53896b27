"""The table an encode job prints when it ends."""

from __future__ import annotations

from pipeline.runner import JobReport


def format_summary(report: JobReport) -> str:
    totals = report.totals
    skipped = set(report.skipped)
    new_clips = sum(entry.get("clips", 0) for entry in report.shards.values() if entry.get("url") not in skipped)
    rate = new_clips / report.elapsed_s if report.elapsed_s > 0 else 0.0
    lines = [
        "",
        f"{'output':<18}{report.output}",
        f"{'shards':<18}{totals['shards']} ({totals['committed']} committed, {totals['partial']} partial, "
        f"{totals['failed']} failed; {len(report.skipped)} already committed before this run)",
        f"{'clips':<18}{totals['clips']} ({totals['clips'] - totals['rejected']} passed, "
        f"{totals['rejected']} below the thresholds)",
        f"{'error rows':<18}{totals['error_rows']}",
        f"{'retries':<18}{report.retries}",
        f"{'time':<18}{report.elapsed_s:.1f} s ({rate:.2f} clips/s in this run)",
    ]
    for entry in report.shards.values():
        if entry.get("status") == "partial":
            lines.append(f"partial shard     {entry['url']}: {entry['reason']}")
    for entry in report.failed:
        lines.append(f"FAILED shard      {entry['url']}: {entry['reason']}")
    if report.failed:
        lines.append("Failed shards are listed in _manifest.json; rerun the same command to retry them.")
    return "\n".join(lines)
