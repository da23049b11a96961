"""Wake-up FIFOs: a file descriptor a selector or an event loop can watch.

A waiter that wants to wait in ``select``/``poll``/an asyncio loop instead of on its
POSIX semaphore (a :class:`~shmbus.Poller`, ``shmbus.asyncio``, a user's ``selectors``)
gets a named FIFO beside its semaphore: ``{ns}@locks/{ring}@c{slot}.wake`` for the
consumer of slot ``slot`` (``{ring}@p.wake`` for the producer), named like the
semaphore ``sem.{ns}.{ring}@c{slot}``, in the namespace's lock directory.  The wake-up
protocol itself (when the other side writes to it) is :mod:`shmbus.wakeup`'s.

**Decisions.**

* *Where*: in the lock directory, which is ours and checked (``0700``, or ``2770`` with
  the share group; see :mod:`shmbus.lockdir`): nobody else can add, remove or rename
  entries in it, so nobody else can plant a FIFO or a symlink there for us to open.
  Everything is done relative to the checked directory's descriptor (``mkfifo``,
  ``open`` with ``dir_fd``), never through its path.
* *Opening*: always ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` (a symlink is refused, a
  FIFO never blocks the opener), then ``fstat``-checked: a FIFO, ours (or the share
  group's), no permission bits for others, one name.  Anything else is
  :class:`PermissionDenied` for the waiter, and silently never written to by the waking
  side (whose waiter's sleeps are bounded: a refused wake-up delays, never hangs).
* *The waiter* creates it (mode ``0600``/``0660``, like everything else) and opens it
  ``O_RDWR``: it is then a reader for as long as it lives, so it never sees EOF, and
  the waking side's ``open(O_WRONLY | O_NONBLOCK)`` succeeds exactly while it lives.
  A stale FIFO of an earlier owner of the slot is replaced.  Creation, and removal by
  anyone but the waiter, happen under the ring's ``@slots`` lock, so ``gc`` never
  removes a FIFO between its creation and its opening.
* *The waking side* opens it ``O_WRONLY | O_NONBLOCK`` once and keeps the descriptor;
  a write that finds no reader (``EPIPE``: the waiter closed, the slot may have a new
  owner and a new FIFO) closes it and opens the name again.  ``EAGAIN`` (the FIFO is
  full) is success: it is readable already.  Python ignores ``SIGPIPE``; a program
  that restored its default action gets it blocked around the write, so a waiter
  that goes away never kills the waking process.
* *Removal*: by the waiter when it closes (if the name is still its FIFO); by
  ``shmbus gc`` and ``shmbus rm`` when no process has it open for reading (the kernel
  knows: ``open(O_WRONLY | O_NONBLOCK)`` fails with ``ENXIO``), so a FIFO of a live
  waiter is never removed and one of a dead waiter always can be.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat

from . import lockdir, naming
from .errors import PermissionDenied
from .lock import FileLock

__all__ = ["SUFFIX", "name_for", "ring_of", "create", "open_writer", "write", "drain",
           "remove", "collect", "remove_unused"]

SUFFIX = ".wake"
# ``{inbox}@inbox.wake``: the doorbell of an Inbox (shmbus.fanin), rung when a sender joins.
_PATTERN = re.compile(r"(?P<ring>[A-Za-z0-9._-]{1,100})@(?:c[0-9]{1,4}|p|inbox)\.wake")
_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_RETRIES = 5  # the lock directory removed under us (its last lock released): again


def name_for(sem_name: str) -> tuple[str, str]:
    """``(namespace, FIFO name in its lock directory)`` of the waiter whose semaphore
    is ``sem_name`` (``/{ns}.{ring}@c{slot}`` or ``/{ns}.{ring}@p``: a namespace has no
    dot, so the first one ends it)."""
    ns, _, tail = sem_name.lstrip("/").partition(".")
    return ns, tail + SUFFIX


def ring_of(name: str) -> str | None:
    """The ring of lock-directory entry ``name`` if it is named like a wake-up FIFO."""
    m = _PATTERN.fullmatch(name)
    return m["ring"] if m else None


def _slots_lock(ns: str, name: str) -> FileLock:
    ring = ring_of(name)
    assert ring is not None, name
    return FileLock(naming.ring_lock_name(ring, "slots"), namespace=ns, _internal=True)


def _check(st: os.stat_result, ns: str, name: str) -> None:
    lockdir.check(st, f"{naming.lock_dir(ns)}/{name}", "FIFO", naming.share_group())


def create(ns: str, name: str) -> int:
    """Create the waiter's FIFO ``name`` in namespace ``ns``'s lock directory
    (replacing a stale one of ours) and return a descriptor of it open for reading and
    writing, non-blocking.  Raises :class:`PermissionDenied` if the directory or an
    entry already there is not ours, ``ShmFull``, ``OSError``."""
    with _slots_lock(ns, name).acquire(10.0):
        for _ in range(_RETRIES):
            dir_fd = lockdir.open_dir(ns)
            try:
                return _create_in(dir_fd, ns, name)
            except FileNotFoundError:
                continue  # the directory was removed meanwhile: make it again
            finally:
                os.close(dir_fd)
    raise OSError(errno.ENOENT, f"could not create {naming.lock_dir(ns)}/{name}: the "
                  "lock directory keeps disappearing")


def _create_in(dir_fd: int, ns: str, name: str) -> int:
    try:
        old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        _check(old, ns, name)  # never remove what is not ours
        os.unlink(name, dir_fd=dir_fd)  # an earlier owner's: it waits on nothing now
    group = naming.share_group()
    try:
        os.mkfifo(name, 0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise lockdir.full_error(f"{naming.lock_dir(ns)}/{name}", e) from None
        raise
    fd = os.open(name, os.O_RDWR | _OPEN, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600 if group is None else 0o660)
        st = os.fstat(fd)
        _check(st, ns, name)
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            raise PermissionDenied(
                f"{naming.lock_dir(ns)}/{name} was replaced while it was being opened: "
                "another process races for the name; try again", path=name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_writer(ns: str, name: str) -> int | None:
    """A descriptor to write wake-ups to FIFO ``name``, or None if there is none or
    nobody reads it.  Raises :class:`PermissionDenied` if the entry (or the directory)
    is not ours: the caller then never writes to it."""
    try:
        dir_fd = lockdir.open_dir(ns, create=False)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(name, os.O_WRONLY | _OPEN, dir_fd=dir_fd)
    except (FileNotFoundError, OSError) as e:
        if isinstance(e, FileNotFoundError) or e.errno == errno.ENXIO:
            return None  # no FIFO, or no reader: no waiter to wake
        raise lockdir._refusal_of_path(f"{naming.lock_dir(ns)}/{name}", "FIFO", e,
                                       dir_fd=dir_fd, name=name) from None
    finally:
        os.close(dir_fd)
    try:
        _check(os.fstat(fd), ns, name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write(fd: int) -> bool:
    """Make FIFO ``fd`` readable: write one byte (a full FIFO is readable already).
    False if nobody reads it any more."""
    if signal.getsignal(signal.SIGPIPE) not in (signal.SIG_DFL, None):  # None: set in C
        return _write(fd)
    # SIGPIPE's default action would kill us when the reader has just gone: block it
    # for this write and take the one the write raised, if it did.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
    try:
        ok = _write(fd)
        if not ok:
            signal.sigtimedwait({signal.SIGPIPE}, 0)
        return ok
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _write(fd: int) -> bool:
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass
    except BrokenPipeError:
        return False
    return True


def drain(fd: int) -> None:
    """Read FIFO ``fd`` empty (it is non-blocking)."""
    try:
        while len(os.read(fd, 4096)) == 4096:
            pass
    except BlockingIOError:
        pass


def remove(ns: str, name: str, fd: int) -> None:
    """Close the waiter's FIFO ``fd`` and remove its name if that is still this FIFO
    (not the one of a later owner of the slot).  Never raises for a FIFO that is gone
    already; what it cannot remove (a busy slots lock) is left to ``shmbus gc``."""
    try:
        st = os.fstat(fd)
        with _slots_lock(ns, name).acquire(2.0):
            dir_fd = lockdir.open_dir(ns, create=False)
            try:
                now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                    os.unlink(name, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        try:
            os.rmdir(naming.lock_dir(ns))  # only if that left it empty
        except OSError:
            pass
    except (OSError, PermissionDenied):
        pass  # gone already, or not ours to look at: gc decides
    except Exception:  # a Timeout on the slots lock: gc removes it later
        pass
    finally:
        os.close(fd)


def collect(ns: str, dir_fd: int, name: str, *, dry_run: bool = False
            ) -> tuple[bool, str] | None:
    """For ``shmbus gc`` and ``rm``: remove wake-up FIFO ``name`` of the lock directory
    open as ``dir_fd`` if it is ours and nobody reads it (its waiter is dead or
    closed).  Returns ``(True, reason)`` if removed (with ``dry_run``: would be),
    ``(False, reason)`` if left alone for a reason the operator should know, None if in
    use (or gone)."""
    path = f"{naming.lock_dir(ns)}/{name}"
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        _check(st, ns, name)
    except FileNotFoundError:
        return None
    except PermissionDenied as e:
        return False, f"{e}: left alone"
    if not stat.S_ISFIFO(st.st_mode):  # pragma: no cover - _check refuses it
        return False, f"{path} is not a FIFO: left alone"
    with _slots_lock(ns, name).acquire(10.0):
        try:
            fd = os.open(name, os.O_WRONLY | _OPEN, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.ENXIO:
                return False, f"could not be checked: {e.strerror}: left alone"
        else:
            os.close(fd)
            return None  # its waiter lives
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            return None  # replaced meanwhile by a live waiter
        if not dry_run:
            os.unlink(name, dir_fd=dir_fd)
    return True, "wake-up FIFO nobody reads (its waiter is gone)"


def remove_unused(ns: str, name: str) -> bool:
    """For ``shmbus rm``: remove wake-up FIFO ``name`` of namespace ``ns`` if it is ours
    and nobody reads it (see :func:`collect`); return whether it was removed."""
    try:
        dir_fd = lockdir.open_dir(ns, create=False)
    except (FileNotFoundError, PermissionDenied):
        return False
    try:
        verdict = collect(ns, dir_fd, name)
    except Exception:  # a busy slots lock: gc removes it later
        return False
    finally:
        os.close(dir_fd)
    return verdict is not None and verdict[0]
