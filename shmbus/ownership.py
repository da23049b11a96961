"""What shmbus opens in ``/dev/shm`` must be ours: opening segments and semaphores safely.

``/dev/shm`` is writable by every user on the host (and by every container that shares
it), so any name we use may already be taken by someone else: a segment made first by
another user with mode 0666 (who then reads everything we send), a symbolic link to a
file of ours, a semaphore whose waits and posts another user controls, or whose file
they can truncate under our mapping (a SIGBUS).  Every object is therefore checked
once, right after it is opened (never per message), by :func:`check`:

* it is a regular file, reached without following a symbolic link, with no second
  name (a hard link would make it another ring's segment or semaphore too:
  ``/dev/shm`` is one filesystem, and ``fs.protected_hardlinks`` may be off);
* it has no permission bits for *other* users;
* it is ours (owner = our effective uid) without group permission bits, or, when the
  namespace is shared with a group (``$SHMBUS_GROUP``, see :func:`naming.share_group`),
  it belongs to that group, whoever of the group created it.

Anything else raises :class:`~shmbus.errors.PermissionDenied` (a ``ShmbusError`` and a
``PermissionError``) naming the path, its owner and what to do.  What we create gets
mode 0600, or 0660 and the share group when the namespace is shared, whatever the
umask.  The rule is the one :mod:`shmbus.lockdir` applies to lock files, so a namespace
is private or shared as a whole.

Segments.  On Linux a POSIX shared memory object is a file in ``/dev/shm``, and
``shm_open`` is ``open("/dev/shm/NAME")``; we call ``os.open`` ourselves with
``O_NOFOLLOW | O_CLOEXEC`` (and ``O_CREAT | O_EXCL`` to create), so the checks run on
the very descriptor we map (``fstat``), with no window between a check and the open.

Semaphores.  ``posix_ipc`` (``sem_open``) gives no descriptor, so the file
``/dev/shm/sem.NAME`` is checked with ``lstat`` before and after opening: it must be
the same inode both times (or absent before, when we create it), and pass the check.
Another user cannot replace a file of ours (``/dev/shm`` is sticky), so what we find
after opening is what we use.  glibc creates a semaphore under a temporary name and
links it to the real one, so for a moment it has two names; no waiting is needed for
that: a semaphore is created by its waiter alone, and the other side opens it only once
the waiter sleeps (a refused post costs a bounded wake-up, never a hang).
"""

from __future__ import annotations

import errno
import os
import stat

import posix_ipc

from . import naming
from .errors import PermissionDenied
from .naming import SHM_DIR

__all__ = ["check", "open_file", "open_semaphore", "semaphore_path", "is_ours",
           "creation_mode"]


def creation_mode(group: int | None) -> int:
    """The mode of what we create: 0600, or 0660 in a namespace shared with a group."""
    return 0o600 if group is None else 0o660


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def check(st: os.stat_result, path: str, what: str, group: int | None = None) -> None:
    """Raise :class:`PermissionDenied` unless ``st`` (of ``path``) is a regular file
    without permission bits for others that is ours without group bits, or belongs to
    the share ``group`` (None: the namespace is private)."""
    me, owner = os.geteuid(), st.st_uid
    bits = stat.S_IMODE(st.st_mode)
    fields = dict(path=path, owner=owner, found=bits)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionDenied(
            f"{what} {path} is a {_kind(st.st_mode)} (owner uid {owner}), not a regular "
            "file: shmbus never opens it; remove it (as its owner or root) if you trust "
            "its owner, or use another namespace", **dict(fields, found=_kind(st.st_mode)))
    if st.st_nlink > 1:  # (0: removed since it was opened, which callers handle)
        raise PermissionDenied(
            f"{what} {path} (owner uid {owner}) has {st.st_nlink} names (hard links): it "
            "is also some other file, perhaps another ring's segment or semaphore, and "
            "what shmbus wrote to it would reach that one; remove this name (as its "
            "owner or root) if you did not make it, or use another namespace",
            **dict(fields, found=f"{st.st_nlink} hard links"))
    if bits & 0o007:
        raise PermissionDenied(
            f"{what} {path} (owner uid {owner}) has permissions {bits:#o}: every user "
            "could read or write it; remove it (as its owner or root) if you trust it, "
            "or use another namespace", **fields)
    if group is not None and st.st_gid == group:
        return
    if owner != me:
        share = ("" if group is not None else
                 "; to share a namespace with other users on purpose, all of them set "
                 "$SHMBUS_GROUP to a group they belong to")
        raise PermissionDenied(
            f"{what} {path} belongs to uid {owner} (group {st.st_gid}), not to you (uid "
            f"{me}): another user made it, perhaps to read or disturb what you send; "
            f"remove it (as uid {owner} or root) if you trust it, or use another "
            f"namespace{share}", **dict(fields, expected=me))
    if bits & 0o070:
        raise PermissionDenied(
            f"{what} {path} is open to group {st.st_gid} (permissions {bits:#o}), but "
            + ("this namespace is private ($SHMBUS_GROUP is not set)" if group is None
               else f"this namespace is shared with group {group} ($SHMBUS_GROUP)")
            + f": remove it (rm {path}) if nobody needs it, or set $SHMBUS_GROUP to the "
            "group it is meant for", **fields)


def is_ours(path: str) -> bool:
    """Whether ``path`` is a regular file (not a symbolic link) owned by us: the only
    kind of entry shmbus removes."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def denied(path: str, what: str, err: OSError) -> PermissionDenied:
    """The PermissionDenied for an ``open`` of ``path`` that failed with ``err``
    (EACCES, EPERM, ELOOP...)."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None:
        try:
            check(st, path, what, naming.share_group())
        except PermissionDenied as e:
            return e
    owner = st.st_uid if st is not None else None
    return PermissionDenied(
        f"permission denied opening {what} {path} (owner uid {owner}, group "
        f"{st.st_gid if st else None}, mode {stat.S_IMODE(st.st_mode) if st else 0:#o}): "
        "the namespace is shared with a group you are not in, or $SHMBUS_GROUP differs "
        "between its users; join the group, or use another namespace",
        path=path, owner=owner)


def _share(fd: int, path: str, group: int | None) -> None:
    """Give the file we just created (``fd``) exactly the mode of what we create, and
    the share group."""
    if group is not None:
        try:
            os.fchown(fd, -1, group)
        except PermissionError:
            raise PermissionDenied(
                f"cannot give {path} to group {group} ($SHMBUS_GROUP): this user is not "
                "a member of it; join the group or change $SHMBUS_GROUP",
                path=path, owner=os.geteuid()) from None
    os.fchmod(fd, creation_mode(group))


def open_file(path: str, what: str, *, create: bool) -> int:
    """Open (or with ``create``, create exclusively) the regular file ``path`` for
    reading and writing, never through a symbolic link; return its descriptor after
    checking it (:func:`check`).  Raises FileNotFoundError (absent), FileExistsError
    (``create`` and it exists) or :class:`PermissionDenied`."""
    group = naming.share_group()
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR,
                       errno.ENXIO):
            raise denied(path, what, e) from None
        raise
    try:
        if create:
            _share(fd, path, group)
        check(os.fstat(fd), path, what, group)
    except BaseException:
        os.close(fd)
        if create:
            os.unlink(path)  # ours: created with O_EXCL, and nobody else can replace it
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


def open_semaphore(name: str, *, create: bool) -> posix_ipc.Semaphore | None:
    """Open POSIX semaphore ``name`` (with ``create``, create it at 0 if absent) after
    checking that its file may be trusted (:func:`check`); return None if it does not
    exist and ``create`` is false.  Raises :class:`PermissionDenied`."""
    group = naming.share_group()
    path = semaphore_path(name)
    what = "semaphore"
    before = _lstat(path)
    if before is not None:
        check(before, path, what, group)
    try:
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREAT if create else 0,
                                  creation_mode(group), 0)
    except posix_ipc.ExistentialError:
        return None
    except posix_ipc.PermissionsError as e:
        raise denied(path, what, PermissionError(errno.EACCES, str(e))) from None
    except OSError as e:
        raise denied(path, what, e) from None
    try:
        after = _lstat(path)
        if after is None or before is not None and \
                (after.st_ino, after.st_dev) != (before.st_ino, before.st_dev):
            raise PermissionDenied(
                f"{what} {path} was replaced while it was being opened: another process "
                "is racing for the name; try again, or use another namespace",
                path=path, owner=after.st_uid if after else None)
        if before is None and after.st_uid == os.geteuid():
            after = _share_semaphore(path, after, group)
        check(after, path, what, group)
    except BaseException:
        sem.close()
        raise
    return sem


def _share_semaphore(path: str, st: os.stat_result, group: int | None) -> os.stat_result:
    """Give the semaphore file we just created its mode and group (``sem_open`` applies
    the umask and our own group), through a descriptor of that very inode."""
    mode = creation_mode(group)
    if stat.S_IMODE(st.st_mode) == mode and (group is None or st.st_gid == group):
        return st
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        now = os.fstat(fd)
        if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
            _share(fd, path, group)
            now = os.fstat(fd)
        return now
    finally:
        os.close(fd)
