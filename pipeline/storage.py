"""Where shards and caches live: local paths, or any fsspec URL (s3://, gs://, hf://, file://).

A `Location` pairs an fsspec filesystem with a path on it. Local locations keep POSIX guarantees
(fsync, atomic rename); on an object store a commit is a copy of a finished object to its final
name, which appears whole or not at all.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

_PROTOCOL_SEPARATOR = "://"


@dataclass(frozen=True)
class Location:
    fs: fsspec.AbstractFileSystem
    path: str
    url: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def child(self, *names: str) -> Location:
        path = posixpath.join(self.path, *names)
        base = self.url.rstrip("/")
        return Location(self.fs, path, "/".join([base, *names]))

    def open(self, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path, mode)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def glob(self, pattern: str) -> list[Location]:
        """Children matching `pattern`, sorted; listings are re-read, since other processes write here."""
        self.fs.invalidate_cache(self.path)
        matches = sorted(self.fs.glob(posixpath.join(self.path, pattern)))
        return [self.child(posixpath.relpath(match, self.path)) for match in matches]

    def remove(self, recursive: bool = False) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=recursive)


def locate(url: str | os.PathLike) -> Location:
    """A local path (made absolute) or an fsspec URL."""
    text = os.fspath(url)
    if _PROTOCOL_SEPARATOR not in text or text.startswith("file://"):
        path = os.path.abspath(text.removeprefix("file://"))
        return Location(LocalFileSystem(), path, path)
    fs, path = fsspec.core.url_to_fs(text)
    return Location(fs, path.rstrip("/"), text.rstrip("/"))
