"""Reading webdataset shards: samples of raw member bytes, grouped by key, never decoded here.

Tars are read with `tarfile` in streaming mode, never through webdataset: nothing in a shard is ever
decoded here (no pickle), members stay raw bytes. Sample grouping follows webdataset exactly: a
member `dir/name.ext.more` belongs to sample key `dir/name` with extension `ext.more` (lowercased);
consecutive members with one key form one sample.
"""

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
from typing import IO

from pipeline.source.shard_urls import PIPE_PREFIX
from pipeline.storage import locate

# Extensions (the last dot-component of a member's extension) that hold a video container.
VIDEO_EXTENSIONS = frozenset({"mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "3gp",
                              "wmv", "ogv"})
# Extensions of still images, which training can mix in (`jobs.train_vae --image-ratio`).
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})
DEFAULT_MAX_MEMBER_BYTES = 2 * 1024**3

# webdataset's rule (tariterators.base_plus_ext): the key runs to the first dot of the basename.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# webdataset skips `__name__` metadata members, at the top level or as a leading directory.
_META_MEMBER = re.compile(r"__[^/]*__($|/)")
_STDERR_TAIL_BYTES = 2000


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

    def image(self) -> bytes | None:
        """Bytes of the first member whose last extension is a still image."""
        for extension, data in self.members.items():
            if extension.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                return data
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


class MemberListDigest:
    """A fingerprint of a tar's member list (names and sizes, in order): re-packing a shard changes it,
    a copy or a `touch` does not. The streaming reader and `member_list_fingerprint`'s header scan
    both feed it, so one tar gives one value either way."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, info: tarfile.TarInfo) -> None:
        name = info.name.encode("utf-8", "surrogateescape")
        self._digest.update(b"%d:%s:%d\n" % (len(name), name, info.size))

    def hexdigest(self) -> str:
        return self._digest.hexdigest()[:32]


# What a cut or garbled stream raises from tarfile (zlib.error and EOFError from compressed tars).
# Not OSError: a failing read is the storage's fault and may pass, so the attempt fails and is
# retried, whereas a truncated tar is committed as `partial` and never retried.
_TAR_ERRORS = (tarfile.TarError, _BrokenTar, EOFError, zlib.error)


class ShardReader:
    """Iterates the samples of one shard (local path, `file://` URL or `pipe:CMD`), without decoding them.

    A shard that breaks part-way (truncated, damaged, a `pipe:` command failing) ends the iteration
    cleanly: complete samples come first, then the sample being assembled at the break, if any, with
    `error` set, and `truncation` then holds the reason (None after a tar that ended properly). A
    file that is not a tar at all gives no samples and a `truncation`. When the iteration ends,
    `fingerprint` holds the `MemberListDigest` of the member headers read. A missing local file raises
    FileNotFoundError: that is the shard failing, not the shard being cut. Members larger than
    `max_member_bytes` are not read; their sample carries an error instead. A key seen in an earlier,
    non-adjacent group also becomes an error sample, so one key never yields two good samples.
    """

    def __init__(self, url: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES):
        self.url = url
        self.max_member_bytes = max_member_bytes
        self.truncation: str | None = None
        self.fingerprint: str | None = None

    def __iter__(self) -> Iterator[ShardSample]:
        self.truncation = self.fingerprint = None
        members = MemberListDigest()
        if self.url.startswith(PIPE_PREFIX):
            yield from self._read_pipe(self.url[len(PIPE_PREFIX):], members)
        else:
            with locate(self.url).open("rb") as stream:
                tar_problem = yield from self._read_tar(stream, members)
            self.truncation = tar_problem
        self.fingerprint = members.hexdigest()

    def _read_pipe(self, command: str, members: MemberListDigest) -> Iterator[ShardSample]:
        with tempfile.TemporaryFile() as stderr:
            # stderr goes to a file, not a pipe: a chatty command cannot block on a full stderr pipe.
            process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=stderr)
            try:
                tar_problem = yield from self._read_tar(process.stdout, members)
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

    def _read_tar(self, stream: IO[bytes], members: MemberListDigest) -> Iterator[ShardSample]:
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
                members.add(info)
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


def member_list_fingerprint(url: str) -> str:
    """The `fingerprint` a `ShardReader` of `url` ends with, from the member headers alone: members'
    data is seeked past, never read. A damaged tar's fingerprint covers the headers before the damage."""
    members = MemberListDigest()
    with locate(url).open("rb") as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r:*", tarinfo=_CheckedTarInfo) as tar:
                for info in tar:
                    tar.members = []
                    members.add(info)
        except _TAR_ERRORS:
            pass  # the streaming reader stops at the same header
    return members.hexdigest()
