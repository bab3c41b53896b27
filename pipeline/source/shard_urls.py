"""Shard URLs: expand an input spec into shard URLs and name each shard's output file."""

import glob
import hashlib
import os
import posixpath
import re

from pipeline.storage import locate

PIPE_PREFIX = "pipe:"
FILE_PREFIX = "file://"

_GLOB_CHARS = re.compile(r"[*?[]")
_NUMERIC_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


class InputSpecError(ValueError):
    """The input spec names nothing usable: missing paths, empty globs, colliding output names."""


def _split_top_level_commas(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth = max(0, depth + {"{": 1, "}": -1}.get(char, 0))
        current.append(char)
    parts.append("".join(current))
    return parts


def _split_items(spec: str) -> list[str]:
    """Split on commas outside braces; from the first `pipe:` item on, split only before `,pipe:`.

    Shell commands contain commas, so a `pipe:` item runs to the next `,pipe:` or the end of the
    spec: list local paths first, pipe commands last.
    """
    first_pipe = re.search(r"(?:^|,)\s*(?=pipe:)", spec)
    local_part, pipe_part = (spec, "") if first_pipe is None else (spec[:first_pipe.start()], spec[first_pipe.end():])
    items = _split_top_level_commas(local_part) if local_part else []
    if pipe_part:
        items.extend(re.split(r",\s*(?=pipe:)", pipe_part))
    return [item.strip() for item in items if item.strip()]


def _matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for index in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return index
    return -1


def expand_braces(text: str) -> list[str]:
    """Bash-style braces: `{0..12}`, `{00..12}` (padded to the wider bound), `{a,b}`; nested and repeated.

    A brace group that is neither a range nor holds a comma (e.g. `{x}`) stays literal.
    """
    open_at = text.find("{")
    while open_at >= 0:
        close_at = _matching_brace(text, open_at)
        if close_at < 0:
            return [text]
        body = text[open_at + 1:close_at]
        prefix, suffixes = text[:open_at], expand_braces(text[close_at + 1:])
        numeric = _NUMERIC_RANGE.fullmatch(body)
        if numeric:
            first, last = int(numeric[1]), int(numeric[2])
            padded = any(bound.lstrip("-").startswith("0") and len(bound.lstrip("-")) > 1 for bound in numeric.groups())
            width = max(len(bound) for bound in numeric.groups()) if padded else 0
            step = 1 if last >= first else -1
            choices = [str(value).zfill(width) for value in range(first, last + step, step)]
        elif "," in body:
            choices = [choice for part in _split_top_level_commas(body) for choice in expand_braces(part)]
        else:
            open_at = text.find("{", open_at + 1)
            continue
        return [prefix + choice + suffix for choice in choices for suffix in suffixes]
    return [text]


def local_path(item: str) -> str:
    return item[len(FILE_PREFIX):] if item.startswith(FILE_PREFIX) else item


def is_remote(item: str) -> bool:
    """An fsspec URL (s3://, gs://, hf://, ...); `file://` counts as local."""
    return "://" in item and not item.startswith(FILE_PREFIX)


def _expand_remote(candidate: str, problems: list[str]) -> list[str]:
    location = locate(candidate)
    if _GLOB_CHARS.search(location.path):
        matches = sorted(match for match in location.fs.glob(location.path) if location.fs.isfile(match))
        if not matches:
            problems.append(f"{candidate} (glob matches no object)")
        return [location.fs.unstrip_protocol(match) for match in matches]
    if not location.fs.isfile(location.path):
        problems.append(f"{candidate} (no such object)")
        return []
    return [candidate]


def _expand_local(candidate: str, problems: list[str]) -> list[str]:
    path = os.path.expanduser(candidate)
    if _GLOB_CHARS.search(path):
        matches = sorted(match for match in glob.glob(path, recursive=True) if os.path.isfile(match))
        if not matches:
            problems.append(f"{candidate} (glob matches no file)")
        return [os.path.abspath(match) for match in matches]
    if os.path.isdir(path):
        problems.append(f"{candidate} (a directory, not a shard; use {candidate.rstrip('/')}/*.tar)")
    elif not os.path.isfile(path):
        problems.append(f"{candidate} (no such file)")
    else:
        return [os.path.abspath(path)]
    return []


def expand_input_spec(spec: str) -> list[str]:
    """Shard URLs from a spec: comma-separated items, each with braces, globs, `file://`, an fsspec
    URL (`s3://bucket/shards/*.tar`) or `pipe:`.

    Local items become absolute paths (Ray workers do not share the driver's working directory),
    globs are sorted, `pipe:CMD` items pass through verbatim (see `_split_items` for where they end),
    and duplicates are dropped keeping the first. Missing paths and globs matching nothing raise
    InputSpecError naming all of them.
    """
    urls: list[str] = []
    problems: list[str] = []
    for item in _split_items(spec):
        if item.startswith(PIPE_PREFIX):
            urls.append(item)
            continue
        for candidate in expand_braces(local_path(item)):
            expand = _expand_remote if is_remote(candidate) else _expand_local
            urls.extend(expand(candidate, problems))
    if problems:
        raise InputSpecError("input spec names shards that do not exist: " + "; ".join(problems))
    if not urls:
        raise InputSpecError(f"input spec {spec!r} names no shards")
    return list(dict.fromkeys(urls))


def _naming_path(url: str) -> str:
    """One absolute path space for local files and URLs: `s3://b/k` → `/s3/b/k`."""
    if is_remote(url):
        protocol, _, rest = url.partition("://")
        return posixpath.join("/", protocol, rest)
    return os.path.abspath(local_path(url))


def common_root(urls: list[str]) -> str:
    """The deepest folder holding every shard ("" when all are `pipe:` URLs)."""
    folders = [posixpath.dirname(_naming_path(url)) for url in urls if not url.startswith(PIPE_PREFIX)]
    return posixpath.commonpath(folders) if folders else ""


def shard_output_name(url: str, root: str) -> str:
    """The output file stem for a shard: its path under `root` with `/` → `__` and `.tar` dropped.

    `pipe:` URLs get `pipe-<first 16 hex of sha256(url)>`. Names that would start with `_` or `.`
    get a `shard-` prefix, because pyarrow datasets silently skip such files.
    """
    if url.startswith(PIPE_PREFIX):
        return "pipe-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    relative = posixpath.relpath(_naming_path(url), root)
    if relative.startswith("../") or relative == "..":
        raise ValueError(f"shard {url} is not under the root {root}")
    name = relative.replace("/", "__")
    name = name.removesuffix(".tar")
    return "shard-" + name if not name or name[0] in "_." else name


def check_unique_names(urls: list[str]) -> dict[str, str]:
    """Map every URL to its output name, refusing two shards that would write one file."""
    root = common_root(urls)
    names: dict[str, str] = {}
    owners: dict[str, str] = {}
    for url in urls:
        name = shard_output_name(url, root)
        if name in owners and owners[name] != url:
            raise InputSpecError(f"shards {owners[name]} and {url} would both be written as {name!r}; "
                                 f"rename one of them")
        owners[name] = url
        names[url] = name
    return names
