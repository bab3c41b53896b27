"""Clip boundaries from a sample's JSON sidecar (`--clip-spans-from json:FIELD[:frames]`), as curation tools
write them: video2dataset's `clips`, a scene detector's scene list.

FIELD holds a list of [start, end] pairs: seconds (numbers, or "HH:MM:SS.mmm" / "MM:SS.mmm" timecodes) from
the first frame, or source frame indices with `:frames`. The end is exclusive. Each span becomes one clip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

UNITS = ("seconds", "frames")


@dataclass(frozen=True)
class SpanSource:
    field: str
    unit: str = "seconds"

    def __str__(self) -> str:
        return f"json:{self.field}" + (":frames" if self.unit == "frames" else "")


def parse_span_source(text: str) -> SpanSource:
    """`json:FIELD` or `json:FIELD:frames`; ValueError naming the form otherwise."""
    match = re.fullmatch(r"json:([^:]+)(?::(seconds|frames))?", text.strip())
    if not match:
        raise ValueError(f"bad clip span source {text!r}: use json:FIELD (seconds) or json:FIELD:frames")
    return SpanSource(match[1], match[2] or "seconds")


def _seconds(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        parts = value.strip().split(":")
        if 1 <= len(parts) <= 3:
            try:
                numbers = [float(part) for part in parts]
            except ValueError:
                pass
            else:
                total = 0.0
                for number in numbers:
                    total = total * 60 + number
                return total
    raise ValueError(f"{value!r} is not a time (seconds, or HH:MM:SS.mmm)")


def read_spans(meta: str | None, source: SpanSource) -> list[tuple[float, float]]:
    """The sample's spans as (start, end) in the source's unit; ValueError saying what is missing or wrong."""
    if meta is None:
        raise ValueError(f"--clip-spans-from {source}: the sample has no JSON sidecar")
    try:
        fields = json.loads(meta)
    except ValueError as error:
        raise ValueError(f"--clip-spans-from {source}: the JSON sidecar does not parse: {error}") from None
    spans = fields.get(source.field) if isinstance(fields, dict) else None
    if not isinstance(spans, list):
        raise ValueError(f"--clip-spans-from {source}: the JSON sidecar has no list {source.field!r}")
    parsed = []
    for span in spans:
        try:
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise ValueError("not a [start, end] pair")
            if source.unit == "frames":
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in span):
                    raise ValueError("frame spans are integers")
                start, end = span
            else:
                start, end = (_seconds(value) for value in span)
            if not 0 <= start < end:
                raise ValueError("needs 0 <= start < end")
        except ValueError as error:
            raise ValueError(f"--clip-spans-from {source}: bad span {span!r}: {error}") from None
        parsed.append((start, end))
    return parsed
