"""``Segment``: one ring's POSIX shared memory object, created, attached and removed.

Creation and attachment happen under the ring's ``@create`` lock (exclusive to create,
shared to attach), so nobody ever maps a half-made segment.  The creator opens with
``O_EXCL``, reserves every page with ``posix_fallocate`` (a full ``/dev/shm`` fails here
with :class:`ShmFull`, never with a SIGBUS later), writes the header and sets the magic
word last.  A segment whose header is all zero can only come from a creator that died
before finishing: whoever next holds the create lock exclusively replaces it.

Every segment is opened with ``os.open`` on its ``/dev/shm`` path (``O_NOFOLLOW``;
``O_CREAT | O_EXCL`` to create) rather than ``shm_open``, so that the descriptor we map
is the one we check: it must be ours, see :mod:`shmbus.ownership`.

Closing unmaps; it never unlinks (rings outlive processes).  :func:`unlink` removes the
segment with its semaphores and lock files.  We do not use
``multiprocessing.shared_memory``: its resource tracker unlinks segments a process
merely attached (gh-82300).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time

import posix_ipc

from . import layout, naming, ownership, wakefifo
from .errors import CorruptRing, PermissionDenied, RingNotFound, ShmFull
from .lock import FileLock

__all__ = ["Segment", "unlink"]

class Segment:
    """A mapped ring segment: ``buf`` (whole segment), ``words`` (header and slots as
    8-byte words), ``data`` (the data area) and the validated static ``header``."""

    def __init__(self, ns: str, ring: str, mm: mmap.mmap, header: dict,
                 created: bool) -> None:
        self.namespace = ns
        self.ring = ring
        self.created = created
        self._mmap = mm
        self.buf = memoryview(mm)
        self.header = header
        self.capacity = header["capacity"]
        self.slot_count = header["slot_count"]
        self.data_offset = off = header["data_offset"]
        self.words = self.buf[:off].cast("Q")
        self.data = self.buf[off:off + self.capacity]
        self.overwrite = bool(header["flags"] & layout.FLAG_OVERWRITE)
        self.inode = -1

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(cls, ns: str, ring: str, *, capacity: int | None = None, flags: int = 0,
             slot_count: int = layout.DEFAULT_SLOTS, create: bool = False,
             lock_timeout: float = 10.0) -> "Segment":
        """Attach to ring ``ring``; with ``create`` make it first if it does not exist
        (``capacity`` must then be given, already rounded).

        The segment must be ours (see :mod:`shmbus.ownership`): a regular file, not a
        symbolic link, owned by our effective uid with mode 0600, or, in a namespace
        shared with a group (``$SHMBUS_GROUP``), of that group; otherwise
        :class:`PermissionDenied`.  A segment we create gets mode 0600 (0660 and the
        group when shared).
        """
        mode_shared = not create
        lock = FileLock(naming.ring_lock_name(ring, "create"), shared=mode_shared,
                        namespace=ns, _internal=True)
        with lock.acquire(lock_timeout):
            for _ in range(2):
                try:
                    seg = cls._attach(ns, ring, repair=create)
                    break
                except RingNotFound:
                    if not create:
                        raise
                if capacity is None:
                    raise RingNotFound(
                        f"ring {ring!r} does not exist in namespace {ns!r}: pass "
                        "capacity= (bytes) to create it", name=ring, namespace=ns)
                try:
                    seg = cls._create(ns, ring, capacity, flags, slot_count)
                    break
                except FileExistsError:
                    continue  # someone made it meanwhile (not under our lock): check it
            else:
                raise PermissionDenied(
                    f"segment {naming.segment_path(ns, ring)} keeps appearing and "
                    f"vanishing while ring {ring!r} is opened: another process (maybe "
                    "another user) is racing for the name; use another namespace",
                    path=naming.segment_path(ns, ring), owner=None)
        return seg

    @classmethod
    def _attach(cls, ns: str, ring: str, repair: bool) -> "Segment":
        path = naming.segment_path(ns, ring)
        try:
            fd = ownership.open_file(path, f"segment of ring {ring!r}", create=False)
        except FileNotFoundError:
            raise RingNotFound(
                f"ring {ring!r} does not exist in namespace {ns!r} "
                f"({path} is missing): start its producer first, "
                "or check the name and namespace", name=ring, namespace=ns) from None
        try:
            st = os.fstat(fd)
            size = st.st_size
            if size < layout.HEADER_SIZE:
                raise CorruptRing(
                    f"segment {path} is {size} bytes, too small "
                    f"for a shmbus ring (header {layout.HEADER_SIZE} bytes): remove it with "
                    f"`shmbus rm {ring}`", name=ring, found=size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        try:
            header = layout.check_header(mm, ring, size)
        except CorruptRing:
            if repair and not any(mm[:layout.HEADER_SIZE]) and st.st_uid == os.geteuid():
                # A creator (one of ours) died before writing the header: nothing was
                # ever published.
                mm.close()
                _unlink_if_same(path, st)
                raise RingNotFound("half-made segment removed", name=ring) from None
            mm.close()
            raise
        except BaseException:
            mm.close()
            raise
        seg = cls(ns, ring, mm, header, created=False)
        seg.inode = st.st_ino
        return seg

    @classmethod
    def _create(cls, ns: str, ring: str, capacity: int, flags: int,
                slot_count: int) -> "Segment":
        """Create the segment; FileExistsError if its name is taken meanwhile."""
        size = layout.segment_size(capacity, slot_count)
        _check_free_space(ring, size)
        path = naming.segment_path(ns, ring)
        try:
            fd = ownership.open_file(path, f"segment of ring {ring!r}", create=True)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # no inode left in /dev/shm
                raise _full_error(ring, size) from None
            raise
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise _full_error(ring, size) from None
                raise
            mm = mmap.mmap(fd, size)
            inode = os.fstat(fd).st_ino
        except BaseException:
            os.close(fd)
            os.unlink(path)  # ours: created with O_EXCL, and others cannot replace it
            raise
        os.close(fd)
        layout.init_header(memoryview(mm), capacity=capacity, flags=flags,
                           slot_count=slot_count, created_at_ns=time.time_ns())
        header = layout.check_header(mm, ring, size)
        seg = cls(ns, ring, mm, header, created=True)
        seg.inode = inode
        return seg

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the segment (idempotent).  If the caller still holds memoryviews into
        it (a ``Message.data``), the mapping stays until they are released."""
        if self._mmap is None:
            return
        for view in (self.data, self.words, self.buf):
            try:
                view.release()
            except BufferError:
                pass
        mm, self._mmap = self._mmap, None
        try:
            mm.close()
        except BufferError:
            pass  # views exported to the caller keep it mapped; GC unmaps it later

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def linked(self) -> bool:
        """Whether the ring's name still refers to this segment (not unlinked, and not
        replaced by a new ring of the same name)."""
        try:
            return os.lstat(naming.segment_path(self.namespace, self.ring)).st_ino == self.inode
        except FileNotFoundError:
            return False


def _check_free_space(ring: str, size: int) -> None:
    st = os.statvfs(naming.SHM_DIR)
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise _full_error(ring, size, free)


def _full_error(ring: str, size: int, free: int | None = None) -> ShmFull:
    if free is None:
        st = os.statvfs(naming.SHM_DIR)
        free = st.f_bavail * st.f_frsize
    return ShmFull(
        f"cannot create ring {ring!r}: it needs {size} bytes in {naming.SHM_DIR}, which "
        f"has {free} bytes free; remove unused rings (`shmbus gc`), use a smaller "
        "capacity, or enlarge /dev/shm (in Docker: --shm-size)",
        name=ring, needed=size, free=free)


def _unlink_if_same(path: str, st: os.stat_result) -> None:
    """Remove ``path`` if it is still the file ``st`` describes."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
        os.unlink(path)


def unlink(ns: str, ring: str, *, lock_timeout: float = 10.0) -> bool:
    """Remove ring ``ring``'s segment, semaphores and idle lock files.  Returns whether
    the segment existed.  Processes that have it mapped keep their mapping.  Only what
    is ours is removed: a segment of another owner, or a symbolic link or other odd
    entry under the ring's name, raises :class:`PermissionDenied` (and a semaphore of
    another owner is left alone).  In a namespace shared with a group
    (``$SHMBUS_GROUP``), a segment of that group counts as ours."""
    path = naming.segment_path(ns, ring)
    lock = FileLock(naming.ring_lock_name(ring, "create"), namespace=ns, _internal=True)
    with lock.acquire(lock_timeout):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            existed = False
        else:
            _check_removable(st, path, ring)
            try:
                os.unlink(path)
                existed = True
            except FileNotFoundError:
                existed = False
            except PermissionError as e:
                raise ownership.denied(path, f"segment of ring {ring!r}", e) from None
        remove_companions(ns, ring)
    return existed


def _check_removable(st: os.stat_result, path: str, ring: str) -> None:
    """Raise :class:`PermissionDenied` unless ``st`` is a segment we may remove: a
    regular file of ours (whatever its mode: a damaged ring of ours must be removable),
    or of the share group."""
    group = naming.share_group()
    if stat.S_ISREG(st.st_mode) and (st.st_uid == os.geteuid() or st.st_gid == group):
        return
    ownership.check(st, path, f"segment of ring {ring!r}", group)  # says why not
    raise PermissionDenied(  # pragma: no cover - check() refuses whatever got here
        f"segment {path} is not ours to remove", path=path, owner=st.st_uid)


def remove_companions(ns: str, ring: str) -> list[str]:
    """Remove the ring's semaphores (those that are ours) and the lock files nobody
    holds; return what was removed (as ``/dev/shm`` paths)."""
    removed = []
    sem_prefix = f"sem.{ns}.{ring}@"
    try:
        entries = os.listdir(naming.SHM_DIR)
    except OSError:
        entries = []
    for entry in entries:
        if entry.startswith(sem_prefix):
            path = f"{naming.SHM_DIR}/{entry}"
            if not ownership.is_ours(path):
                continue  # not ours to remove (and sem_unlink would fail or follow it)
            try:
                posix_ipc.unlink_semaphore("/" + entry[4:])
                removed.append(path)
            except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
                pass
    lock_prefix = ring + "@"
    directory = naming.lock_dir(ns)
    try:
        lock_files = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        lock_files = []
    for name in lock_files:
        if wakefifo.ring_of(name) == ring:  # a waiter's FIFO: goes once nobody reads it
            if wakefifo.remove_unused(ns, name):
                removed.append(f"{directory}/{name}")
            continue
        if name.startswith(lock_prefix) and name != naming.ring_lock_name(ring, "create"):
            probe = FileLock(name, namespace=ns, _internal=True)
            if probe.try_acquire():  # releasing deletes the file nobody else holds
                probe.release()
                removed.append(probe.path)
    return removed
