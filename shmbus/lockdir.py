"""The namespace's lock directory and the files in it: created ours, opened checked.

``/dev/shm`` is writable by every user of the host (and every container sharing it),
so any name in it may have been made by someone else first: a directory of theirs
(mode 0777) in which they can plant symlinks to our files, delete our lock files, or
forge lease records.  So:

* The directory ``/dev/shm/{ns}@locks`` is created ``0700`` (``2770`` with the group
  when the namespace is shared, see :func:`naming.share_group`), and opened with
  ``O_NOFOLLOW | O_DIRECTORY``, then checked with ``fstat`` before anything in it is
  used: owner us (or, shared, the share group), a directory, no permission bits for
  others (and none for the group unless shared).  Nobody else can then add, remove or
  rename entries in it (root aside).
* Its files are opened *relative to that checked descriptor* (``openat``), with
  ``O_NOFOLLOW`` and ``O_NONBLOCK`` (a FIFO never hangs the opener), created ``0600``
  (``0660`` shared), and checked the same way: a regular file, ours, no unexpected
  permission bits, no second name (a hard link would make it another file too).  A
  directory removed and re-made by someone else between the check and the open
  cannot catch us: ``openat`` in a removed directory fails and we retry.
* Anything else is refused with :class:`PermissionDenied` naming the path, its owner
  and what to do.

**Decision: the directory is still removed when its last lock is released.**  Keeping
it would leave an entry per namespace in ``/dev/shm`` forever, and the test suite
checks that a test leaves nothing behind.  Removal opens a window in which another user
can create the directory first; with the checks above that makes shmbus refuse the
namespace (``PermissionDenied``, naming the squatter's uid) but never use it: a denial
of service, the same as a squatter creating it before first use, not a breach.

All this happens when a lock, lease or stats file is opened, never per message.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

from . import naming
from .errors import PermissionDenied, ShmFull

__all__ = ["open_dir", "open_path", "open_file", "check", "describe_owner", "full_error"]

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FULL = (errno.ENOSPC, errno.EDQUOT)


def open_dir(ns: str, *, create: bool = True) -> int:
    """A descriptor of namespace ``ns``'s checked lock directory, created if missing
    (unless ``create`` is False: then ``FileNotFoundError``).  Raises
    :class:`PermissionDenied` if it is not ours, :class:`ShmFull` if it cannot be
    created for lack of room.  The caller closes the descriptor."""
    path = naming.lock_dir(ns)
    group = naming.share_group()
    while True:
        try:
            return open_path(path)
        except FileNotFoundError:
            if not create:
                raise
            _make_dir(path, group)


def open_path(path: str) -> int:
    """A descriptor of the existing lock directory ``path`` (``/dev/shm/{ns}@locks``),
    checked like :func:`open_dir`'s.  Work in it through this descriptor, never through
    the path: in a namespace shared with a group, the member who made the directory may
    rename it and put a symbolic link in its place at any moment.  Raises
    ``FileNotFoundError`` or :class:`PermissionDenied`."""
    try:
        fd = os.open(path, _OPEN_DIR)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _refusal_of_path(path, "directory", e) from None
    try:
        check(os.fstat(fd), path, "directory", naming.share_group())
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_dir(path: str, group: int | None) -> None:
    try:
        os.mkdir(path, 0o700 if group is None else 0o770)
    except FileExistsError:
        return  # made by another process meanwhile: the caller opens and checks it
    except OSError as e:
        if e.errno in _FULL:
            raise full_error(path, e) from None
        raise
    if group is not None:
        # Our own fresh directory (/dev/shm is sticky: nobody else can swap it), given
        # the group and the setgid bit so that its files belong to the group too.
        try:
            os.chown(path, -1, group)
        except PermissionError:
            os.rmdir(path)
            raise PermissionDenied(
                f"cannot give {path} to group {group} ($SHMBUS_GROUP): this user is not a "
                "member of it; join the group or change $SHMBUS_GROUP",
                path=path, owner=describe_owner(os.geteuid())) from None
        os.chmod(path, 0o2770)


def open_file(dir_fd: int, name: str, path: str, *, create: bool = True,
              exclusive: bool = False, write: bool = True) -> int:
    """Open (creating it if ``create``; failing if it exists when ``exclusive``) the
    regular file ``name`` of the checked lock directory ``dir_fd``; ``path`` is its full
    path for messages.  Never follows a symlink, never blocks on a FIFO.  Raises
    :class:`PermissionDenied` if the entry is not one of our regular files, ``ShmFull``
    if it cannot be created for lack of room, ``FileNotFoundError`` if it (or the
    directory, removed meanwhile) does not exist."""
    group = naming.share_group()
    flags = _OPEN_FILE | (os.O_RDWR if write else os.O_RDONLY)
    if create:
        flags |= os.O_CREAT | (os.O_EXCL if exclusive else 0)
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as e:
        if e.errno in _FULL:
            raise full_error(path, e) from None
        raise _refusal_of_path(path, "regular file", e, dir_fd=dir_fd, name=name) from None
    try:
        st = os.fstat(fd)
        if group is not None and st.st_gid == group and st.st_uid == os.geteuid() and \
                stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode):
            os.fchmod(fd, 0o660)  # ours, in the group's (setgid) directory: share it
            st = os.fstat(fd)
        check(st, path, "regular file", group)
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_file(ns: str, name: str, *, rmdir: bool = False) -> None:
    """Remove file ``name`` of namespace ``ns``'s lock directory if it is ours (through
    the checked directory's descriptor, never its path); with ``rmdir``, then the
    directory too if that left it empty.  Raises :class:`PermissionDenied` for a file
    that is not ours."""
    try:
        dir_fd = open_dir(ns, create=False)
    except FileNotFoundError:
        return
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        check(st, f"{naming.lock_dir(ns)}/{name}", "regular file", naming.share_group())
        os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if rmdir:
        try:
            os.rmdir(naming.lock_dir(ns))  # only if that left it empty
        except OSError:
            pass


def check(st: os.stat_result, path: str, kind: str, group: int | None = None) -> None:
    """Raise :class:`PermissionDenied` unless ``st`` describes a ``kind`` ("directory",
    "regular file" or "FIFO") we may trust: owned by us without group or other
    permission bits, or, when the namespace is shared with ``group``, of that group
    without other permission bits."""
    is_kind = {"directory": stat.S_ISDIR, "FIFO": stat.S_ISFIFO}.get(kind, stat.S_ISREG)
    mode = stat.S_IMODE(st.st_mode)
    me = os.geteuid()
    if not is_kind(st.st_mode):
        found = _type_name(st.st_mode)
    elif mode & 0o007:
        found = f"a {kind} open to every user (mode {mode:04o})"
    elif kind != "directory" and st.st_nlink > 1:  # (0: removed since opened)
        found = (f"a {kind} with {st.st_nlink} names (hard links: it is also another "
                 "file, whose content shmbus would overwrite)")
    elif st.st_uid == me and (not mode & 0o070 or st.st_gid == group):
        return
    elif group is not None and st.st_gid == group:
        return
    elif st.st_uid != me:
        found = f"another user's {kind}"
    else:
        found = (f"a {kind} open to group {st.st_gid} (mode {mode:04o}), which is not "
                 "$SHMBUS_GROUP")
    raise PermissionDenied(
        f"refusing {path}: expected a {kind} of our own ({describe_owner(me)}), found "
        f"{found}, owned by {describe_owner(st.st_uid)}; shmbus uses nothing in /dev/shm "
        "that another user could have made or can change: remove it (as its owner or "
        "root) if nobody needs it, or use another namespace ($SHMBUS_NAMESPACE); to "
        "share a namespace with a group, set $SHMBUS_GROUP",
        path=path, owner=describe_owner(st.st_uid))


def describe_owner(uid: int) -> str:
    """``uid 1001 (alice)``, or ``uid 1001`` when the user has no name."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def full_error(path: str, e: OSError) -> ShmFull:
    """The :class:`ShmFull` for an ``ENOSPC``/``EDQUOT`` met while making ``path``."""
    return ShmFull(
        f"cannot create {path}: {naming.SHM_DIR} is full ({e.strerror}); free space "
        "(`shmbus gc`, remove unused rings) or enlarge /dev/shm", path=path)


def _refusal_of_path(path: str, kind: str, e: OSError, *, dir_fd: int | None = None,
                     name: str | None = None) -> OSError:
    """The error for an open that failed on something that is there but is not what we
    expect (a symlink: ELOOP; a file where a directory should be: ENOTDIR) or that we
    may not open (EACCES)."""
    try:
        st = os.stat(name if dir_fd is not None else path, dir_fd=dir_fd,
                     follow_symlinks=False)
    except OSError:
        return e
    try:
        check(st, path, kind, naming.share_group())
    except PermissionDenied as refused:
        return refused
    return PermissionDenied(
        f"cannot open {path}: {e.strerror}; it is {_type_name(st.st_mode)} owned by "
        f"{describe_owner(st.st_uid)}: remove it (as its owner or root) or use another "
        "namespace", path=path, owner=describe_owner(st.st_uid))


def _type_name(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "something unknown"
