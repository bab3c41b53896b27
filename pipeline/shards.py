"""Webdataset shards: expand an input spec into shard URLs, name each shard's output, read samples, pack videos.

Tars are read with `tarfile` in streaming mode, never through webdataset: nothing in a shard is ever
decoded here (no pickle), members stay raw bytes. Sample grouping follows webdataset exactly: a
member `dir/name.ext.more` belongs to sample key `dir/name` with extension `ext.more` (lowercased);
consecutive members with one key form one sample.
"""

import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Extensions (the last dot-component of a member's extension) that hold a video container.
VIDEO_EXTENSIONS = frozenset({"mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "3gp",
                              "wmv", "ogv"})
SIDECAR_EXTENSIONS = ("json", "txt")
DEFAULT_MAX_MEMBER_BYTES = 2 * 1024**3
PIPE_PREFIX = "pipe:"
FILE_PREFIX = "file://"

# webdataset's rule (tariterators.base_plus_ext): the key runs to the first dot of the basename.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# webdataset skips `__name__` metadata members, at the top level or as a leading directory.
_META_MEMBER = re.compile(r"__[^/]*__($|/)")
_GLOB_CHARS = re.compile(r"[*?[]")
_NUMERIC_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_STDERR_TAIL_BYTES = 2000


class InputSpecError(ValueError):
    """The input spec names nothing usable: missing paths, empty globs, colliding output names."""


class PackingError(ValueError):
    """A folder cannot be packed into shards: not a folder, no videos, or two videos mapping to one key."""


# ---------------------------------------------------------------------------------------------- spec


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


def _local_path(item: str) -> str:
    return item[len(FILE_PREFIX):] if item.startswith(FILE_PREFIX) else item


def expand_input_spec(spec: str) -> list[str]:
    """Shard URLs from a spec: comma-separated items, each with braces, globs, `file://` or `pipe:`.

    Local items become absolute paths (Ray workers do not share the driver's working directory),
    globs are sorted, `pipe:CMD` items pass through verbatim (see `_split_items` for where they end),
    and duplicates are dropped keeping the first. Missing paths and globs matching no file raise
    InputSpecError naming all of them.
    """
    urls: list[str] = []
    problems: list[str] = []
    for item in _split_items(spec):
        if item.startswith(PIPE_PREFIX):
            urls.append(item)
            continue
        for candidate in expand_braces(_local_path(item)):
            path = os.path.expanduser(candidate)
            if _GLOB_CHARS.search(path):
                matches = sorted(match for match in glob.glob(path, recursive=True) if os.path.isfile(match))
                if not matches:
                    problems.append(f"{candidate} (glob matches no file)")
                urls.extend(os.path.abspath(match) for match in matches)
            elif os.path.isdir(path):
                problems.append(f"{candidate} (a directory, not a shard; use {candidate.rstrip('/')}/*.tar)")
            elif not os.path.isfile(path):
                problems.append(f"{candidate} (no such file)")
            else:
                urls.append(os.path.abspath(path))
    if problems:
        raise InputSpecError("input spec names shards that do not exist: " + "; ".join(problems))
    if not urls:
        raise InputSpecError(f"input spec {spec!r} names no shards")
    return list(dict.fromkeys(urls))


# --------------------------------------------------------------------------------------------- names


def common_root(urls: list[str]) -> str:
    """The deepest folder holding every local shard ("" when all are `pipe:` URLs)."""
    folders = [os.path.dirname(os.path.abspath(_local_path(url))) for url in urls if not url.startswith(PIPE_PREFIX)]
    return os.path.commonpath(folders) if folders else ""


def shard_output_name(url: str, root: str) -> str:
    """The output file stem for a shard: its path under `root` with `/` → `__` and `.tar` dropped.

    `pipe:` URLs get `pipe-<first 16 hex of sha256(url)>`. Names that would start with `_` or `.`
    get a `shard-` prefix, because pyarrow datasets silently skip such files.
    """
    if url.startswith(PIPE_PREFIX):
        return "pipe-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    relative = os.path.relpath(os.path.abspath(_local_path(url)), root)
    if relative.startswith(".." + os.sep) or relative == "..":
        raise ValueError(f"shard {url} is not under the root {root}")
    name = relative.replace(os.sep, "__")
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


# ------------------------------------------------------------------------------------------- samples


@dataclass
class ShardSample:
    """One webdataset sample: raw member bytes by extension (lowercased, no leading dot)."""

    key: str
    url: str
    members: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None

    def video(self) -> tuple[str, bytes] | None:
        """(extension, bytes) of the first member whose last extension is a video container."""
        for extension, data in self.members.items():
            if extension.rsplit(".", 1)[-1] in VIDEO_EXTENSIONS:
                return extension, data
        return None

    def caption(self) -> str | None:
        """The `.txt` member, else the `caption` or `text` string field of the `.json` member."""
        if "txt" in self.members:
            return self.members["txt"].decode("utf-8", errors="replace").strip() or None
        if "json" in self.members:
            try:
                fields = json.loads(self.members["json"])
            except (ValueError, UnicodeDecodeError):
                return None
            if isinstance(fields, dict):
                for name in ("caption", "text"):
                    if isinstance(fields.get(name), str):
                        return fields[name].strip() or None
        return None

    def meta(self) -> str | None:
        """The `.json` member verbatim."""
        if "json" not in self.members:
            return None
        return self.members["json"].decode("utf-8", errors="replace")


class _BrokenTar(Exception):
    """The tar stream ended without a proper end-of-archive marker, or is damaged."""


class _CheckedTarInfo(tarfile.TarInfo):
    """TarFile.next() takes a truncated or garbled header after the first member for the end of the
    archive and stops silently; this turns those headers into _BrokenTar so a cut shard is noticed."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise  # a zero block: the proper end of the archive
        except tarfile.HeaderError as error:
            if tar.offset == 0:
                raise  # tarfile reports a bad first header itself, as "not a tar"
            if isinstance(error, tarfile.EmptyHeaderError):
                raise _BrokenTar("the data ends without an end-of-archive marker") from None
            raise _BrokenTar(f"damaged member header ({error})") from None


# What a cut or garbled stream raises from tarfile (zlib.error and EOFError from compressed tars).
# Not OSError: a failing read is the storage's fault and may pass, so the attempt fails and is
# retried, whereas a truncated tar is committed as `partial` and never retried.
_TAR_ERRORS = (tarfile.TarError, _BrokenTar, EOFError, zlib.error)


class ShardReader:
    """Iterates the samples of one shard (local path, `file://` URL or `pipe:CMD`), without decoding them.

    A shard that breaks part-way (truncated, damaged, a `pipe:` command failing) ends the iteration
    cleanly: complete samples come first, then the sample being assembled at the break, if any, with
    `error` set, and `truncation` then holds the reason (None after a tar that ended properly). A
    file that is not a tar at all gives no samples and a `truncation`. A missing local file raises
    FileNotFoundError: that is the shard failing, not the shard being cut. Members larger than
    `max_member_bytes` are not read; their sample carries an error instead. A key seen in an earlier,
    non-adjacent group also becomes an error sample, so one key never yields two good samples.
    """

    def __init__(self, url: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
        self.url = url
        self.max_member_bytes = max_member_bytes
        self.truncation: str | None = None

    def __iter__(self) -> Iterator[ShardSample]:
        self.truncation = None
        if self.url.startswith(PIPE_PREFIX):
            yield from self._read_pipe(self.url[len(PIPE_PREFIX):])
        else:
            with open(_local_path(self.url), "rb") as stream:
                tar_problem = yield from self._read_tar(stream)
            self.truncation = tar_problem

    def _read_pipe(self, command: str) -> Iterator[ShardSample]:
        with tempfile.TemporaryFile() as stderr:
            # stderr goes to a file, not a pipe: a chatty command cannot block on a full stderr pipe.
            process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=stderr)
            try:
                tar_problem = yield from self._read_tar(process.stdout)
                if tar_problem is None:
                    # Read what follows the end marker (record padding), so that a well-behaved writer
                    # does not die of a closed pipe.
                    while process.stdout.read(1 << 16):
                        pass
                process.stdout.close()
                try:
                    status = process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    status = process.wait()
                    tar_problem = tar_problem or "the command did not exit after its output ended"
                # After a damaged tar we close the pipe while the command may still write: its death by
                # SIGPIPE (directly, or as the shell's 128+13) is our doing, not its failure.
                closed_by_us = tar_problem is not None and status in (-signal.SIGPIPE, 128 + signal.SIGPIPE)
                if status != 0 and not closed_by_us:
                    stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - _STDERR_TAIL_BYTES))
                    tail = stderr.read().decode("utf-8", errors="replace").strip()
                    failure = f"command exited with status {status}: {tail or '(no stderr)'}"
                    tar_problem = f"{failure} ({tar_problem})" if tar_problem else failure
                self.truncation = tar_problem
            finally:
                if process.poll() is None:  # the consumer stopped early
                    process.kill()
                    process.wait()
                process.stdout.close()

    def _read_tar(self, stream: IO[bytes]) -> Iterator[ShardSample]:
        """Yield the samples; return the reason the tar broke, or None when it ended properly."""
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CheckedTarInfo)
        except _TAR_ERRORS as error:
            return f"not a tar archive ({error})"
        seen_keys: set[str] = set()
        sample: ShardSample | None = None
        try:
            for info in tar:
                tar.members = []  # streaming: do not keep every header in memory
                key_and_extension = self._key_and_extension(info)
                if key_and_extension is None:
                    continue
                key, extension = key_and_extension
                if sample is None or sample.key != key:
                    if sample is not None:
                        yield sample
                    sample = ShardSample(key, self.url)
                    if key in seen_keys:
                        sample.error = (f"sample key {key!r} appears twice in this shard (its members are not "
                                        f"consecutive)")
                    seen_keys.add(key)
                if extension in sample.members:
                    sample.error = sample.error or f"duplicate member {info.name!r} in this sample"
                elif info.size > self.max_member_bytes:
                    sample.error = sample.error or (f"member {info.name!r} is {info.size} bytes, over the "
                                                    f"{self.max_member_bytes}-byte limit; not read")
                else:
                    sample.members[extension] = tar.extractfile(info).read()
        except _TAR_ERRORS as error:
            reason = f"tar truncated or damaged: {error}"
            if sample is not None:
                sample.error = f"tar truncated or damaged inside this sample: {error}"
                yield sample
            return reason
        if sample is not None:
            yield sample
        return None

    @staticmethod
    def _key_and_extension(info: tarfile.TarInfo) -> tuple[str, str] | None:
        if not info.isreg():
            return None
        if _META_MEMBER.match(info.name):
            return None
        match = _KEY_AND_EXTENSION.match(info.name)
        if match is None:
            return None
        return match[1], match[2].lower()


# ------------------------------------------------------------------------------------------- packing


def _sample_key(relative: Path) -> str:
    """`a/b.c.mp4` → `a_b_c`: webdataset keys end at the first dot, so dots and `/` become `_`."""
    return relative.with_suffix("").as_posix().replace("/", "_").replace(".", "_")


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    # Fixed metadata: the same folder always packs to byte-identical shards.
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with open(path, "rb") as data:
        tar.addfile(info, data)


def pack_videos_into_shards(src_dir: str | Path, out_dir: str | Path, samples_per_shard: int = 100,
                            pattern: str = "shard-{:05d}.tar") -> list[Path]:
    """Pack every video under src_dir (recursive, sorted by path) into webdataset tars, one sample each.

    Hidden files and folders are skipped. A video's `.json` and `.txt` sidecars (same folder, same
    stem) join its sample. The key is the
    path under src_dir without the extension, `/` and `.` replaced by `_` (see `_sample_key`); two
    videos with one key raise PackingError. Shards are written under a temporary name and renamed,
    and are byte-identical across runs. Existing files in out_dir with other names are left alone.
    """
    src, out = Path(src_dir), Path(out_dir)
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    if pattern.format(0) == pattern.format(1):
        raise PackingError(f"pattern {pattern!r} gives every shard the same name; put {{:05d}} in it")
    if not src.is_dir():
        raise PackingError(f"{src} is not a folder")
    videos = sorted((path for path in src.rglob("*")
                     if path.is_file() and path.suffix[1:].lower() in VIDEO_EXTENSIONS
                     # hidden files include macOS `._name.mp4` resource forks, which are not videos
                     and not any(part.startswith(".") for part in path.relative_to(src).parts)),
                    key=lambda path: path.relative_to(src).as_posix())
    if not videos:
        raise PackingError(f"no video files under {src} (looked for {', '.join(sorted(VIDEO_EXTENSIONS))})")
    keyed: dict[str, Path] = {}
    for video in videos:
        key = _sample_key(video.relative_to(src))
        if key in keyed:
            raise PackingError(f"{keyed[key]} and {video} both map to sample key {key!r}; rename one")
        keyed[key] = video
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    items = list(keyed.items())
    for shard_index, first in enumerate(range(0, len(items), samples_per_shard)):
        path = out / pattern.format(shard_index)
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for key, video in items[first:first + samples_per_shard]:
                _add_file(tar, f"{key}.{video.suffix[1:].lower()}", video)
                for extension in SIDECAR_EXTENSIONS:
                    sidecar = video.with_suffix("." + extension)
                    if sidecar.is_file():
                        _add_file(tar, f"{key}.{extension}", sidecar)
        os.replace(partial, path)
        written.append(path)
    return written
