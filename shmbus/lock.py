"""``FileLock``: an inter-process lock that can never go stale.

Why ``flock`` (and not POSIX ``lockf``/``fcntl`` record locks): a record lock belongs to
the *process* and is dropped as soon as the process closes *any* descriptor of the file,
which any library in the process may do by accident; an ``flock`` lock belongs to the
open file description, is released by the kernel when the last descriptor of it is
closed (so the moment the holder dies, even by kill -9), and a holder's own other
descriptors cannot drop it.  Linux's OFD locks have the same semantics as ``flock`` for
whole files; ``flock`` is simpler and visible in ``/proc/locks`` with the holder's pid.

Threads and fork:

* The lock is held by the process.  Inside a process, a per-path thread lock
  orders threads: a second thread blocks (or times out) like another process would, and
  the same thread may acquire again (reentrant; every ``acquire`` needs a ``release``).
  Two ``FileLock`` objects for the same name in one process share that state.
* A forked child inherits the descriptor, and with it the lock.  shmbus closes every
  such inherited descriptor in the child right after ``fork`` (``os.register_at_fork``):
  closing does not release the parent's lock, so the child holds nothing, ``held`` is
  False there, and ``release()`` in the child raises :class:`NotHeld` instead of
  silently releasing the parent's lock.

Files: ``/dev/shm/{namespace}@locks/{name}``.  The holder writes its pid, process start
time and the time it took the lock into the file (shared holders append a line each),
and the kernel's ``/proc/locks`` says which processes hold or wait for it, so any
process of the same user can ask who holds a lock.  The last holder to release deletes
the file (and the directory, when it was the last file); a process that locked a file
which was deleted meanwhile notices (the path no longer names the inode it locked) and
retries, so deletion never breaks exclusion.

Security: the directory and the files are created private and checked after opening
(:mod:`shmbus.lockdir`): a lock directory or file made by another user, a symlink or
anything but a regular file is refused with :class:`PermissionDenied`, so nobody else
can redirect our writes or delete a lock file that someone holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, cast

from . import liveness, lockdir, naming
from .errors import AlreadyHeld, NotHeld, PermissionDenied, ShmbusError, Timeout

if TYPE_CHECKING:
    from .info import LockHolderInfo, LockInfo

__all__ = ["FileLock", "LockHolder", "lock_holders", "list_locks"]

_POLL_MIN = 0.0001
_POLL_MAX = 0.01


@dataclass(frozen=True)
class LockHolder:
    """One process holding (or waiting for) a lock."""

    pid: int
    mode: str            # "exclusive" or "shared"
    since: float | None  # time.time() when it took the lock, if it recorded it
    start_time: int | None
    waiting: bool = False

    def to_dict(self) -> LockHolderInfo:
        return cast("LockHolderInfo", asdict(self))


class _ThreadLock:
    """Orders threads like an ``RLock`` (reentrant for the thread that holds it), but
    may be released from another thread: a handle opened in one thread may be closed
    from another (``close()`` wakes a thread blocked in it), and ``RLock`` raised
    RuntimeError there, leaving the path locked for every other thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._count = 0

    def acquire(self, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if self._owner == me:
            self._count += 1
            return True
        if not self._lock.acquire(timeout=timeout):
            return False
        self._owner, self._count = me, 1
        return True

    def release(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._lock.release()


class _PathState:
    """What this process knows about one lock file (shared by FileLock objects)."""

    def __init__(self) -> None:
        self.thread_lock = _ThreadLock()
        self.fd = -1
        self.count = 0
        self.shared = False


_states: dict[str, _PathState] = {}


def _state_for(path: str) -> _PathState:
    # No lock around the dict: a finalizer (a Consumer's ``__del__`` closing its lock)
    # can run inside any allocation here, on this very thread, and would wait for itself
    # on a lock this function held.  ``dict.setdefault`` is atomic under the GIL, so two
    # threads still end up with one state per path.
    st = _states.get(path)
    if st is None:
        st = _states.setdefault(path, _PathState())
    return st


def _after_fork_in_child() -> None:
    # The child must not hold its parent's locks: close the inherited descriptors
    # (this does not release the parent's lock: the parent's descriptor stays open).
    for st in list(_states.values()):
        if st.fd >= 0:
            try:
                os.close(st.fd)
            except OSError:
                pass
        st.fd = -1
        st.count = 0
        st.thread_lock = _ThreadLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class FileLock:
    """An exclusive or shared lock between processes, released by the kernel when the
    holder dies.

    ``FileLock(name, shared=False, timeout=None, namespace=None)``; ``timeout`` is the
    default for :meth:`acquire` (None: wait forever, 0: try once).  Use as a context
    manager or with ``acquire()``/``release()``.  Reentrant per thread, unless
    ``reentrant=False``: then acquiring it again in the thread that holds it raises
    :class:`AlreadyHeld` at once, whatever the timeout (a programming error, never a
    ``Timeout`` a retry loop would spin on), and ``try_acquire()`` returns False (shmbus
    uses that for ownership: one producer per ring even within a process).
    """

    def __init__(self, name: str, *, shared: bool = False, timeout: float | None = None,
                 namespace: str | None = None, reentrant: bool = True,
                 _internal: bool = False) -> None:
        if not _internal:
            naming.check_name(name, "lock name")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
        self.name = name
        self.shared = bool(shared)
        self.reentrant = bool(reentrant)
        self.timeout = timeout
        self.namespace = naming.resolve_namespace(namespace)
        self.directory = naming.lock_dir(self.namespace)
        self.path = f"{self.directory}/{name}"
        self._depth = 0
        self._owner_pid = -1

    def __repr__(self) -> str:
        mode = "shared" if self.shared else "exclusive"
        return f"<FileLock {self.name!r} {mode} {'held' if self.held else 'free'}>"

    # -- public API -------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True if this object holds the lock in this process."""
        return self._depth > 0 and self._owner_pid == os.getpid()

    def acquire(self, timeout: float | None | object = ...) -> "Acquired":
        """Take the lock, waiting up to ``timeout`` seconds (None: forever; 0: try once;
        default: the constructor's).  Raises :class:`Timeout` naming the holder when the
        lock stays taken (whatever other processes do with the file: with a timeout, the
        file is only ever tried without blocking), :class:`AlreadyHeld` when this thread
        holds it already and it is not reentrant, :class:`PermissionDenied` when the
        lock directory or file is not ours, :class:`ShmFull` when ``/dev/shm`` has no
        room for the lock file.  Returns a context manager that releases it (so both
        ``lock.acquire(); ...; lock.release()`` and ``with lock.acquire(5): ...`` work)."""
        if timeout is ...:
            timeout = self.timeout
        if timeout is not None and timeout < 0:  # type: ignore[operator]
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
        if self._depth and self._owner_pid != os.getpid():
            self._depth = 0  # inherited across fork: the child does not hold it
        deadline = None if timeout is None else time.monotonic() + timeout  # type: ignore
        st = _state_for(self.path)
        got = st.thread_lock.acquire(timeout=-1 if timeout is None else timeout)  # type: ignore
        if not got:
            raise self._timeout_error(timeout)
        try:
            if st.count:
                if not self.reentrant:
                    raise AlreadyHeld(
                        f"lock {self.name!r} is already held by this thread (pid "
                        f"{os.getpid()}) and is not reentrant: release it before "
                        "acquiring it again (waiting would never help)", name=self.name,
                        pid=os.getpid())
                if st.shared and not self.shared:
                    raise ShmbusError(
                        f"lock {self.name!r} is held shared by this thread; it cannot be "
                        "upgraded to exclusive: release it first", name=self.name)
            else:
                st.fd = self._lock_file(deadline, timeout)
                st.shared = self.shared
            st.count += 1
        except BaseException:
            st.thread_lock.release()
            raise
        self._depth += 1
        self._owner_pid = os.getpid()
        return Acquired(self)

    def try_acquire(self) -> bool:
        """Take the lock if it is free now; return whether it was taken.  False also
        when this very thread holds a non-reentrant lock (it is not free: callers such as
        ``Producer`` then report the ring busy, naming this process); ``acquire`` raises
        :class:`AlreadyHeld` in that case."""
        try:
            self.acquire(0)
        except (Timeout, AlreadyHeld):
            return False
        return True

    def release(self) -> None:
        """Release one level of this lock; the last release unlocks the file.  Raises
        :class:`NotHeld` if this object does not hold the lock in this process."""
        if not self.held:
            raise NotHeld(
                f"lock {self.name!r} is not held by this process (pid {os.getpid()}) "
                "through this object: acquire it before releasing it (a forked child "
                "never holds its parent's locks)", name=self.name, pid=os.getpid())
        st = _state_for(self.path)
        try:
            st.count -= 1
            if st.count == 0:
                fd, st.fd = st.fd, -1
                self._unlock_file(fd)
        finally:
            self._depth -= 1
            st.thread_lock.release()

    def holders(self) -> list[LockHolder]:
        """The processes that hold (and, flagged ``waiting``, wait for) this lock now."""
        return lock_holders(self.path)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            while self.held:
                self.release()
        except Exception:
            pass

    # -- the file ---------------------------------------------------------------------

    def _lock_file(self, deadline: float | None, timeout: object) -> int:
        op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        delay = _POLL_MIN
        while True:
            fd = self._open()
            try:
                if deadline is None:
                    fcntl.flock(fd, op)
                else:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                remaining = deadline - time.monotonic()  # type: ignore[operator]
                if remaining <= 0:
                    raise self._timeout_error(timeout) from None
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, _POLL_MAX)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                linked = self._still_linked(fd)
            except BaseException:
                os.close(fd)
                raise
            if not linked:
                os.close(fd)  # locked a file that was deleted meanwhile: try the new one
                continue
            try:
                self._record_holder(fd)
            except BaseException:
                self._unlock_file(fd)  # (e.g. /dev/shm full) and leave no file behind
                raise
            return fd

    def _open(self) -> int:
        while True:
            dir_fd = lockdir.open_dir(self.namespace)
            try:
                return lockdir.open_file(dir_fd, self.name, self.path)
            except FileNotFoundError:
                continue  # the directory was removed (its last lock released): again
            finally:
                os.close(dir_fd)

    def _still_linked(self, fd: int) -> bool:
        """Whether the lock's name, in the checked lock directory, is the file ``fd``.
        Raises :class:`PermissionDenied` if the directory is no longer ours."""
        try:
            dir_fd = lockdir.open_dir(self.namespace, create=False)
        except FileNotFoundError:
            return False
        try:
            return _names(dir_fd, self.name, fd)
        finally:
            os.close(dir_fd)

    def _record_holder(self, fd: int) -> None:
        me = liveness.current()
        line = f"{me.pid} {me.start_time} {time.time():.6f} {'shared' if self.shared else 'exclusive'}\n"
        if self.shared:
            os.lseek(fd, 0, os.SEEK_END)
        else:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        try:
            os.write(fd, line.encode())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise lockdir.full_error(self.path, e) from None
            raise

    def _unlock_file(self, fd: int) -> None:
        # Delete the file if nobody else holds it: we own it if we can lock it
        # exclusively without waiting (a waiter that locks the deleted inode retries).
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            self._remove_file(fd)
        finally:
            os.close(fd)

    def _remove_file(self, fd: int) -> None:
        """Delete the lock file ``fd`` (which we hold exclusively) from the checked lock
        directory, never through its path (a shared directory's owner may have swapped
        it for a symlink), then the directory if that left it empty."""
        try:
            dir_fd = lockdir.open_dir(self.namespace, create=False)
        except (OSError, ShmbusError):
            return  # gone, or no longer ours: nothing of ours to remove there
        try:
            if not _names(dir_fd, self.name, fd):
                return
            try:
                os.unlink(self.name, dir_fd=dir_fd)
            except OSError:
                pass  # gone, or (shared namespace) not ours to remove: both fine
        finally:
            os.close(dir_fd)
        try:
            os.rmdir(self.directory)  # never follows a symlink; only an empty directory
        except OSError:
            pass  # not empty, or gone: either is fine

    def _timeout_error(self, timeout: object) -> Timeout:
        held = ", ".join(f"pid {h.pid} ({h.mode})" for h in self.holders() if not h.waiting)
        return Timeout(
            f"lock {self.name!r} not acquired within {timeout} s: held by "
            f"{held or 'another process'}; wait longer or stop the holder",
            name=self.name, timeout=timeout)


def _names(dir_fd: int, name: str, fd: int) -> bool:
    """Whether ``name`` in directory ``dir_fd`` is the file open as ``fd``."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


class Acquired:
    """What :meth:`FileLock.acquire` returns: ``with`` on it releases the lock."""

    __slots__ = ("lock",)

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock

    def __enter__(self) -> FileLock:
        return self.lock

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _proc_locks() -> list[tuple[tuple[int, int, int], str, int, bool]]:
    """((major, minor, inode), mode, pid, waiting) of every FLOCK lock in /proc/locks.
    The device counts: another user can lock a file of another filesystem (a tmpfs of
    his, a pipe) that has our lock file's inode number."""
    out = []
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        waiting = len(parts) > 1 and parts[1] == "->"
        if waiting:
            parts = parts[:1] + parts[2:]
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            out.append(((int(major, 16), int(minor, 16), int(inode)), "exclusive" if parts[3] == "WRITE" else "shared",
                        int(parts[4]), waiting))
        except (ValueError, IndexError):
            continue
    return out


def lock_holders(path: str) -> list[LockHolder]:
    """Who holds or waits for the lock file at ``path`` (empty if nobody, no file, or
    not a lock file of ours: a symlink, a FIFO or another user's file is not read).
    The file is opened in its checked lock directory (:func:`lockdir.open_path`),
    never through a directory someone could have swapped for a symlink."""
    directory, name = os.path.split(path)
    try:
        dir_fd = lockdir.open_path(directory)
    except (OSError, PermissionDenied):
        return []
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return []
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        lockdir.check(st, path, "regular file", naming.share_group())
        file_id = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        recorded = os.read(fd, 1 << 16).decode(errors="replace").splitlines()
    except (OSError, PermissionDenied):
        return []
    finally:
        os.close(fd)
    info: dict[int, tuple[int, float]] = {}
    for line in recorded:
        parts = line.split()
        if len(parts) >= 3:
            try:
                info[int(parts[0])] = (int(parts[1]), float(parts[2]))
            except ValueError:
                continue
    holders = []
    for lock_file, mode, pid, waiting in _proc_locks():
        if lock_file != file_id:
            continue
        start, since = info.get(pid, (None, None))
        holders.append(LockHolder(pid=pid, mode=mode, since=None if waiting else since,
                                  start_time=start, waiting=waiting))
    return holders


def list_locks(namespace: str | None = None) -> list[LockInfo]:
    """Every lock file of the namespace with its holders, as plain data:
    ``{"name", "path", "holders": [{"pid", "mode", "since", "start_time", "waiting"}]}``.
    Raises :class:`PermissionDenied` if the namespace's lock directory is not ours."""
    ns = naming.resolve_namespace(namespace)
    directory = naming.lock_dir(ns)
    try:
        dir_fd = lockdir.open_dir(ns, create=False)
    except FileNotFoundError:
        return []
    try:
        names = sorted(n for n in os.listdir(dir_fd) if not is_lease_file(n))
    finally:
        os.close(dir_fd)
    out: list[LockInfo] = []
    for name in names:
        path = f"{directory}/{name}"
        out.append({"name": name, "path": path,
                    "holders": [h.to_dict() for h in lock_holders(path)]})
    return out


def is_lease_file(name: str) -> bool:
    """Lease, fence and balancer-stats files (and wake-up FIFOs) live beside lock
    files but are not flock-held."""
    return name.endswith(("@lease", "@fence", "@stats")) or name.endswith(".tmp") or \
        "@" in name and name.endswith(".wake")
