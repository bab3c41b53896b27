"""The table an encode job prints when it ends."""

from __future__ import annotations

from pipeline.run.job_plan import ResumeCheck
from pipeline.run.runner import JobReport


def _some(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _resume_lines(resume: ResumeCheck) -> list[str]:
    lines = []
    if resume.rethresholded:
        lines.append(f"{'rethresholded':<18}{len(resume.rethresholded)} committed file(s): `passed` recomputed "
                     "from the stored scores for the new thresholds, latents untouched")
    if resume.unchecked:
        lines.append(f"warning: {len(resume.unchecked)} committed shard(s) kept without checking whether their "
                     f"input changed (a pipe: input cannot be looked at without running it, or no input was "
                     f"recorded): {_some(resume.unchecked)}")
    if resume.not_in_input:
        lines.append(f"warning: {len(resume.not_in_input)} committed file(s) belong to shards no longer in --input "
                     f"and are kept: {_some(resume.not_in_input)}")
    return lines


def format_summary(report: JobReport) -> str:
    totals = report.totals
    resume = report.resume
    if resume.trusted:
        checked = ", not checked for changed input (--trust-committed)"
    elif resume.reencoded:
        checked = f", {len(resume.reencoded)} re-encoded because their input changed"
    else:
        checked = ""
    skipped = set(report.skipped)
    new_clips = sum(entry.get("clips", 0) for entry in report.shards.values() if entry.get("url") not in skipped)
    rate = new_clips / report.elapsed_s if report.elapsed_s > 0 else 0.0
    lines = [
        "",
        f"{'output':<18}{report.output}",
        f"{'shards':<18}{totals['shards']} ({totals['committed']} committed, {totals['partial']} partial, "
        f"{totals['failed']} failed; {len(report.skipped)} already committed before this run{checked})",
        f"{'clips':<18}{totals['clips']} ({totals['clips'] - totals['rejected']} passed, "
        f"{totals['rejected']} below the thresholds)",
        f"{'error rows':<18}{totals['error_rows']}",
        f"{'retries':<18}{report.retries}",
        f"{'time':<18}{report.elapsed_s:.1f} s ({rate:.2f} clips/s in this run)",
    ]
    lines += _resume_lines(resume)
    for entry in report.shards.values():
        if entry.get("status") == "partial":
            lines.append(f"partial shard     {entry['url']}: {entry['reason']}")
    for entry in report.failed:
        lines.append(f"FAILED shard      {entry['url']}: {entry['reason']}")
    if report.failed:
        lines.append("Failed shards are listed in _manifest.json; rerun the same command to retry them.")
    return "\n".join(lines)
