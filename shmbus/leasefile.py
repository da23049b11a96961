"""The lease record file: one fixed-size record in ``{ns}@locks/{name}@lease`` (or
``@fence``), and the short critical sections in which it is read and written.

The record is ``magic, token, holder pid, holder start time, expiry (CLOCK_MONOTONIC
ns), acquired at (wall ns), ttl (ns), holder's PID namespace``, unsigned 64-bit
little-endian, written with a single ``pwrite`` (a process killed mid-way leaves the
old record or the new one).  The PID namespace (the inode of ``/proc/self/ns/pid``)
came last, in a 64-byte record: a 56-byte record of an older version reads as
namespace 0, "unknown", which :mod:`shmbus.liveness` judges as one of ours.  The file
is opened in the namespace's checked lock directory (:mod:`shmbus.lockdir`: ours, a
regular file, never through a symlink), so no other user can forge a record.

**Proof of holding.**  In a namespace shared with a group, every member can write the
record, so a record alone cannot say that the process it names ever held the lease, nor
when its lease really expires.  A holder therefore keeps a read-only descriptor of the
lease file (:meth:`LeaseFile.pin`) from acquiring until releasing, and keeps its own
expiry in that descriptor's file position (:func:`set_pin`: ``lseek``, which nobody
else can do on it); :func:`pinned_expiry` reads it from ``/proc/PID/fdinfo`` (a process
of our user, so we may look).  A lease's ``on_stale="kill"`` kills only a process whose
pin says it expired.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterator, cast

from . import liveness, lockdir, naming
from .errors import ShmbusError, Timeout

if TYPE_CHECKING:
    from .info import LeaseHolder

__all__ = ["LeaseState", "EMPTY", "LeaseFile", "TOKEN_MAX", "remove", "pinned_expiry",
           "set_pin", "unpin"]

_RECORD = struct.Struct("<8sQQQQQQQ")
_RECORD_V1_SIZE = 56  # the record before the PID namespace was added
_MAGIC = b"SHMBLEAS"
TOKEN_MAX = (1 << 64) - 1  # tokens are stored as unsigned 64-bit integers
_POLL_MIN = 0.0001
_POLL_MAX = 0.01


@dataclass(frozen=True)
class LeaseState:
    """What a lease file says: the last token, and its holder if any."""

    token: int
    pid: int             # 0: released / never held
    start_time: int
    expires_ns: int      # CLOCK_MONOTONIC nanoseconds
    acquired_wall_ns: int
    ttl_ns: int
    pid_ns: int = 0      # the holder's PID namespace (0: unknown, judged as ours)

    @property
    def expired(self) -> bool:
        return time.monotonic_ns() >= self.expires_ns

    def to_dict(self) -> LeaseHolder:
        d = asdict(self)
        d["expires_in"] = (self.expires_ns - time.monotonic_ns()) / 1e9 if self.pid else None
        d["alive"] = (liveness.liveness(self.pid, self.start_time, self.pid_ns).value
                      if self.pid else None)
        return cast("LeaseHolder", d)


EMPTY = LeaseState(0, 0, 0, 0, 0, 0)


class LeaseFile:
    """The lease record and its short critical sections.

    ``with f.locked(deadline):`` opens the file in the namespace's checked lock
    directory (:mod:`shmbus.lockdir`: ours, a regular file, never through a symlink)
    and takes its ``flock`` by non-blocking attempts until ``deadline`` (a
    ``time.monotonic()`` value, None: no limit), so a process that holds the file's
    lock (stopped, hung) delays a caller by at most its timeout, then :class:`Timeout`.
    """

    def __init__(self, path: str, namespace: str, name: str) -> None:
        self.path, self.namespace, self.name = path, namespace, name
        self.directory = naming.lock_dir(namespace)
        # Threads of one process (a keepalive thread and its owner) take turns here:
        # flock alone would let them trample each other's descriptor.
        self._threads = threading.Lock()
        self.fd = -1

    @contextmanager
    def locked(self, deadline: float | None, create: bool = True) -> Iterator["LeaseFile"]:
        if not self._threads.acquire(timeout=_seconds_left(deadline, -1)):
            raise self._busy(deadline)
        try:
            self.fd = self._open_locked(deadline, create)
            try:
                yield self
            finally:
                fd, self.fd = self.fd, -1
                os.close(fd)  # closing releases the flock
        finally:
            self._threads.release()

    def _open_locked(self, deadline: float | None, create: bool) -> int:
        delay = _POLL_MIN
        while True:
            dir_fd = lockdir.open_dir(self.namespace, create=create)
            try:
                fd = lockdir.open_file(dir_fd, self.name, self.path, create=create)
            except FileNotFoundError:
                if not create:
                    raise
                continue  # the directory was removed meanwhile: make it again
            finally:
                os.close(dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
            except BaseException:
                os.close(fd)
                raise
            left = _seconds_left(deadline, _POLL_MAX)
            if left <= 0:
                raise self._busy(deadline)
            time.sleep(min(delay, left))
            delay = min(delay * 2, _POLL_MAX)

    def _busy(self, deadline: float | None) -> Timeout:  # noqa: ARG002
        return Timeout(f"lease file {self.path} stayed locked by another process (one "
                       "holding its record lock: stopped or hung?) until the deadline; "
                       "try again later, or stop that process", path=self.path)

    def read(self) -> LeaseState:
        raw = os.pread(self.fd, _RECORD.size, 0)
        if len(raw) < _RECORD_V1_SIZE:
            return EMPTY
        magic, *fields = _RECORD.unpack(raw.ljust(_RECORD.size, b"\0"))
        if magic != _MAGIC:
            raise ShmbusError(f"lease file {self.path} is not a shmbus lease: remove it",
                              path=self.path)
        return LeaseState(*fields)

    def identity(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the open lease file (inside :meth:`locked`)."""
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def pin(self, expires_ns: int) -> int:
        """(Inside :meth:`locked`) a new read-only descriptor of the open lease file for
        the holder to keep while it holds the lease, its position set to the holder's
        expiry ``expires_ns``: what :func:`pinned_expiry` reads.  It holds no ``flock``
        (a new open file description, not a ``dup``)."""
        fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        _pins.add(fd)
        set_pin(fd, expires_ns)
        return fd

    def write(self, st: LeaseState) -> None:
        os.pwrite(self.fd, _RECORD.pack(_MAGIC, st.token, st.pid, st.start_time,
                                        st.expires_ns, st.acquired_wall_ns, st.ttl_ns,
                                        st.pid_ns), 0)


def _seconds_left(deadline: float | None, unlimited: float) -> float:
    """Seconds left until ``deadline``, or ``unlimited`` when there is none."""
    return unlimited if deadline is None else max(0.0, deadline - time.monotonic())


_pins: set[int] = set()  # this process's pins, which a forked child must not keep


def set_pin(fd: int, expires_ns: int) -> None:
    """Record the holder's expiry (CLOCK_MONOTONIC ns, > 0) in its pin ``fd``."""
    if fd in _pins:
        os.lseek(fd, max(1, expires_ns), os.SEEK_SET)


def unpin(fd: int) -> None:
    """Close a descriptor :meth:`LeaseFile.pin` gave (-1: none)."""
    if fd in _pins:
        _pins.discard(fd)
        os.close(fd)


def _after_fork_in_child() -> None:
    # A forked child never holds its parent's leases, so it must not look as if it did.
    for fd in list(_pins):
        try:
            os.close(fd)
        except OSError:
            pass
    _pins.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def pinned_expiry(pid: int, identity: tuple[int, int]) -> int | None:
    """The expiry (CLOCK_MONOTONIC ns) that process ``pid`` (as we see it) keeps in its
    pin of the lease file ``identity`` (``(st_dev, st_ino)``), or None if it has none:
    then it never acquired that lease or released it (or ``/proc`` does not let us
    look).  A pin is a read-only descriptor with a position; the short critical
    sections open the file read-write and never move the position."""
    base = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return None
    for fd in fds:
        try:
            st = os.stat(f"{base}/{fd}")
            if (st.st_dev, st.st_ino) != identity:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
            pos, flags = int(info["pos"]), int(info["flags"], 8)
        except (OSError, ValueError, KeyError):
            continue
        if flags & os.O_ACCMODE == os.O_RDONLY and pos > 0:
            return pos
    return None


def remove(namespace: str, name: str) -> None:
    """Remove lease or fence file ``name`` if it is ours, then the lock directory if
    that left it empty."""
    lockdir.remove_file(namespace, name, rmdir=True)
