"""What shmbus opens in ``/dev/shm`` must be ours: opening segments and semaphores safely.

``/dev/shm`` is writable by every user on the host (and by every container that shares
it), so any name we use may already be taken by someone else: a segment made first by
another user with mode 0666 (who then reads everything we send), a symbolic link to a
file of ours, a semaphore whose waits and posts another user controls, or whose file
they can truncate under our mapping (a SIGBUS).  Every object is therefore checked
once, right after it is opened (never per message):

* it is a regular file, reached without following a symbolic link;
* its owner is us (the effective uid), or a uid the caller trusts explicitly
  (``trust=``: sharing a ring with another user is a decision, never a default);
* its permission bits are within ``mode`` (default 0600: nobody else may read it).

Anything else raises :class:`~shmbus.errors.PermissionDenied` (a ``ShmbusError`` and a
``PermissionError``) naming the path, its owner and what to do.

Segments.  On Linux a POSIX shared memory object is a file in ``/dev/shm``, and
``shm_open`` is ``open("/dev/shm/NAME")``; we call ``os.open`` ourselves with
``O_NOFOLLOW | O_CLOEXEC`` (and ``O_CREAT | O_EXCL`` to create), so the checks run on
the very descriptor we map (``fstat``), with no window between a check and the open.

Semaphores.  ``posix_ipc`` (``sem_open``) gives no descriptor, so the file
``/dev/shm/sem.NAME`` is checked with ``lstat`` before and after opening: it must be
the same inode both times (or absent before, when we create it), a regular file, ours.
Another user cannot replace a file of ours (``/dev/shm`` is sticky), so what we find
after opening is what we use.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Iterable

import posix_ipc

from .errors import PermissionDenied
from .naming import SHM_DIR

__all__ = ["DEFAULT_MODE", "check_mode", "trusted", "check", "open_file",
           "open_semaphore", "semaphore_path", "is_ours"]

DEFAULT_MODE = 0o600


def check_mode(mode: object) -> int:
    """``mode`` if it is usable for a ring (owner read/write, nothing beyond
    read/write bits), else ValueError."""
    if isinstance(mode, bool) or not isinstance(mode, int) or mode & ~0o666 or \
            mode & 0o600 != 0o600:
        raise ValueError(
            f"mode must be an int of read/write permission bits including 0o600 (owner "
            f"read and write), e.g. 0o600 (private) or 0o660 (shared with the group); "
            f"got {mode!r}")
    return mode


def trusted(trust: int | Iterable[int] | None) -> frozenset[int]:
    """The uids (besides our own) whose objects the caller accepts: ``trust`` as a
    frozenset; TypeError/ValueError if it is not one uid or an iterable of uids."""
    if trust is None:
        return frozenset()
    items = [trust] if isinstance(trust, int) else list(trust)
    for uid in items:
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise TypeError(f"trust must be a uid (int >= 0) or an iterable of uids, "
                            f"got {trust!r}")
    return frozenset(items)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def check(st: os.stat_result, path: str, what: str, *, mode: int = DEFAULT_MODE,
          trust: frozenset[int] = frozenset()) -> None:
    """Raise :class:`PermissionDenied` unless ``st`` (of ``path``) is a regular file
    owned by us or a trusted uid, with no permission bits beyond ``mode``."""
    me = os.geteuid()
    owner = st.st_uid
    if not stat.S_ISREG(st.st_mode):
        raise PermissionDenied(
            f"{what} {path} is a {_kind(st.st_mode)} (owner uid {owner}), not a regular "
            "file: shmbus never opens it; remove it if you trust its owner, or use "
            "another namespace", path=path, owner=owner, found=_kind(st.st_mode))
    if owner != me and owner not in trust:
        raise PermissionDenied(
            f"{what} {path} belongs to uid {owner}, not to you (uid {me}): another user "
            f"made it, perhaps to read or disturb what you send; remove it if you trust "
            f"it (as uid {owner} or root: rm {path}), or use another namespace; to "
            f"share rings with uid {owner} on purpose, pass trust={owner}",
            path=path, owner=owner, expected=me)
    bits = stat.S_IMODE(st.st_mode)
    if bits & ~mode:
        raise PermissionDenied(
            f"{what} {path} has permissions {bits:#o}, more than the {mode:#o} expected: "
            "other users could read or write it; remove it if you trust it (rm "
            f"{path}), or, if it is shared on purpose, open it with mode={bits:#o}",
            path=path, owner=owner, expected=mode, found=bits)


def is_ours(path: str) -> bool:
    """Whether ``path`` is a regular file (not a symbolic link) owned by us: the only
    kind of entry shmbus removes."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def denied(path: str, what: str, err: OSError) -> PermissionDenied:
    """A PermissionDenied for an ``open`` that failed with EACCES/EPERM/ELOOP."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and (err.errno == errno.ELOOP or not stat.S_ISREG(st.st_mode)):
        try:
            check(st, path, what)
        except PermissionDenied as e:
            return e
    owner = st.st_uid if st is not None else None
    who = f"uid {owner}" if owner is not None else "another user"
    return PermissionDenied(
        f"permission denied opening {what} {path} (owned by {who}, mode "
        f"{stat.S_IMODE(st.st_mode) if st else 0:#o}): it is not yours; run as its owner, "
        "ask its owner to share it (mode=0o660 and trust=), or use another namespace",
        path=path, owner=owner)


def open_file(path: str, what: str, *, create: bool, mode: int = DEFAULT_MODE,
              trust: frozenset[int] = frozenset()) -> int:
    """Open (or with ``create``, create exclusively) the regular file ``path`` for
    reading and writing, never through a symbolic link; return its descriptor after
    checking it (:func:`check`).  A created file gets exactly ``mode`` (the umask does
    not narrow it).  Raises FileNotFoundError (absent), FileExistsError (``create`` and
    it exists) or :class:`PermissionDenied`."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, mode)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR,
                       errno.ENXIO):
            raise denied(path, what, e) from None
        raise
    try:
        if create:
            os.fchmod(fd, mode)
        check(os.fstat(fd), path, what, mode=mode, trust=trust)
    except BaseException:
        os.close(fd)
        raise
    return fd


def semaphore_path(name: str) -> str:
    """The file of POSIX semaphore ``name`` (``/NAME``) on Linux."""
    return f"{SHM_DIR}/sem.{name.lstrip('/')}"


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def open_semaphore(name: str, *, create: bool, mode: int = DEFAULT_MODE,
                   trust: frozenset[int] = frozenset()) -> posix_ipc.Semaphore | None:
    """Open POSIX semaphore ``name`` (with ``create``, create it at 0 if absent, with
    exactly ``mode``) after checking that its file is ours; return None if it does not
    exist and ``create`` is false.  Raises :class:`PermissionDenied`."""
    path = semaphore_path(name)
    what = "semaphore"
    before = _lstat(path)
    if before is not None:
        check(before, path, what, mode=mode, trust=trust)
    try:
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREAT if create else 0, mode, 0)
    except posix_ipc.ExistentialError:
        return None
    except (posix_ipc.PermissionsError, PermissionError) as e:
        raise denied(path, what, PermissionError(errno.EACCES, str(e))) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise denied(path, what, e) from None
        raise
    try:
        after = _lstat(path)
        if after is None or before is not None and \
                (after.st_ino, after.st_dev) != (before.st_ino, before.st_dev):
            raise PermissionDenied(
                f"{what} {path} was replaced while it was being opened: another process "
                "is racing for the name; try again, or use another namespace",
                path=path, owner=after.st_uid if after else None)
        if before is None and after.st_uid == os.geteuid() and \
                stat.S_IMODE(after.st_mode) != mode:
            after = _set_mode(path, after, mode)
        check(after, path, what, mode=mode, trust=trust)
    except BaseException:
        sem.close()
        raise
    return sem


def _set_mode(path: str, st: os.stat_result, mode: int) -> os.stat_result:
    """Give the semaphore file we just created exactly ``mode`` (sem_open applies the
    umask), through a descriptor of that very inode."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        now = os.fstat(fd)
        if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
            os.fchmod(fd, mode)
            now = os.fstat(fd)
        return now
    finally:
        os.close(fd)
