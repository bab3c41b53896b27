"""One job at a time per output: `OUTPUT/_lock.json` names the job that holds it.

Two jobs writing one cache would both do all the work and race on every commit. On a local or
shared POSIX filesystem the lock is `flock` on that file: the kernel (or the NFS lock manager)
drops it when the holder dies, however it dies, so a lock left by a killed job is taken over at
once. Where `flock` is not available (object stores, some FUSE mounts) the file is a lease: created
only if absent (S3's conditional PUT), renewed by the holder every third of its length, and taken
over when it has expired, or at once when its holder ran on this host and is gone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pipeline.errors import UsageError
from pipeline.storage import locate

LOCK_NAME = "_lock.json"
# Long enough that a slow object store never loses a live job's lease, short enough that a crashed
# job on another host blocks its output only briefly.
LEASE_SECONDS = 300.0
_FLOCK_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputLockedError(UsageError):
    """Another live job holds the output (exit status 2)."""


@dataclass(frozen=True)
class LockHolder:
    job: str
    host: str
    pid: int
    started: str
    token: str
    expires: float | None = None  # leases only: seconds since the epoch

    def describe(self) -> str:
        return f"{self.job} (pid {self.pid} on {self.host}, started {self.started})"

    def is_gone(self) -> bool:
        """True when this holder can no longer be running: a dead process here, or a lapsed lease."""
        if self.host == socket.gethostname() and not _process_alive(self.pid):
            return True
        return self.expires is not None and self.expires < time.time()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _parse_holder(data: bytes) -> LockHolder | None:
    try:
        return LockHolder(**json.loads(data))
    except (ValueError, TypeError):
        return None  # being written, or not ours


class OutputLock:
    """`with OutputLock(output, "jobs.encode"):` holds the output for the block; a second job raises
    OutputLockedError naming the holder. `took_over` describes a dead holder's lock this job took."""

    def __init__(self, output: str, job: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.output = locate(output)
        self.location = self.output.child(LOCK_NAME)
        self.job = job
        self.lease_seconds = lease_seconds
        self.took_over: LockHolder | None = None
        self._holder: LockHolder | None = None
        self._fd: int | None = None
        self._created_output = False
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _new_holder(self, lease: bool) -> LockHolder:
        return LockHolder(
            job=self.job, host=socket.gethostname(), pid=os.getpid(),
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"), token=uuid.uuid4().hex,
            expires=time.time() + self.lease_seconds if lease else None,
        )

    def acquire(self) -> None:
        # A job that stops on a usage error leaves no empty output folder behind.
        self._created_output = self.output.is_local and not os.path.exists(self.output.path)
        try:
            self.output.fs.makedirs(self.output.path, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--output {self.output.url!r} is not writable: {exc}") from exc
        if self.location.is_local and self._acquire_flock():
            return
        self._acquire_lease()

    def _acquire_flock(self) -> bool:
        """False when this filesystem has no flock; raises OutputLockedError when a live job holds it."""
        import fcntl

        path = self.location.path
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UsageError(f"--output {self.output.url!r} is not writable: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse_holder(os.pread(fd, 1 << 16, 0))
                os.close(fd)
                raise OutputLockedError(self._locked_message(holder)) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in _FLOCK_UNSUPPORTED:
                    return False
                raise
            # The holder before us unlinks the file on release: a lock on an unlinked inode is no lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _parse_holder(os.pread(fd, 1 << 16, 0))
        if previous is not None:
            self.took_over = previous  # its process died without releasing: the kernel released it
        self._holder = self._new_holder(lease=False)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(self._holder)).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return True

    def _acquire_lease(self) -> None:
        fs, path = self.location.fs, self.location.path
        for _ in range(3):
            holder = self._new_holder(lease=True)
            try:
                fs.pipe_file(path, json.dumps(asdict(holder)).encode(), mode="create")
            except FileExistsError:
                current = self._lease_holder()
                if current is not None and not current.is_gone():
                    raise OutputLockedError(self._locked_message(current)) from None
                # Lapsed, or its holder is dead: remove it and race for a fresh one.
                self.took_over = current
                self.location.remove()
                continue
            self._holder = holder
            self._renewer = threading.Thread(target=self._renew, name="output-lock-lease", daemon=True)
            self._renewer.start()
            return
        raise OutputLockedError(f"{self.output.url}: another job keeps taking the lease {self.location.url}")

    def _lease_holder(self) -> LockHolder | None:
        with self.location.open("rb") as handle:
            return _parse_holder(handle.read())

    def _renew(self) -> None:
        while not self._stop_renewing.wait(self.lease_seconds / 3):
            assert self._holder is not None
            try:
                current = self._lease_holder()
                if current is None or current.token != self._holder.token:
                    print(f"warning: the lease {self.location.url} was taken by another job "
                          f"({current.describe() if current else 'unreadable'})", file=sys.stderr)
                    return
                self._holder = LockHolder(**{**asdict(self._holder), "expires": time.time() + self.lease_seconds})
                self.location.fs.pipe_file(self.location.path, json.dumps(asdict(self._holder)).encode())
            except OSError as exc:  # a transient store error: the next renewal tries again
                print(f"warning: renewing {self.location.url} failed: {exc}", file=sys.stderr)

    def release(self) -> None:
        if self._fd is not None:
            # Unlink while still holding it, so no one ever locks a file that is about to vanish.
            os.unlink(self.location.path)
            os.close(self._fd)
            self._fd = None
            if self._created_output:
                try:
                    os.rmdir(self.output.path)
                except OSError:
                    pass  # the job wrote something: keep it
        elif self._holder is not None:
            self._stop_renewing.set()
            if self._renewer is not None:
                self._renewer.join()
            current = self._lease_holder()
            if current is not None and current.token == self._holder.token:
                self.location.remove()
        self._holder = None

    @property
    def takeover_notice(self) -> str | None:
        """The line a job prints when it took over a dead job's lock."""
        if self.took_over is None:
            return None
        return f"note: took over the lock of {self.took_over.describe()}, which is no longer running"

    def _locked_message(self, holder: LockHolder | None) -> str:
        who = holder.describe() if holder else "another job (its lock file is being written)"
        return (f"{self.output.url} is in use by {who}; wait for it to finish, or use another --output. "
                f"If that job is gone, its lock ({self.location.url}) is taken over automatically"
                + (" once its lease lapses." if holder is not None and holder.expires is not None else "."))

