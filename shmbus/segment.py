"""``Segment``: one ring's POSIX shared memory object, created, attached and removed.

Creation and attachment happen under the ring's ``@create`` lock (exclusive to create,
shared to attach), so nobody ever maps a half-made segment.  The creator opens with
``O_EXCL``, reserves every page with ``posix_fallocate`` (a full ``/dev/shm`` fails here
with :class:`ShmFull`, never with a SIGBUS later), writes the header and sets the magic
word last.  A segment whose header is all zero can only come from a creator that died
before finishing: whoever next holds the create lock exclusively replaces it.

Closing unmaps; it never unlinks (rings outlive processes).  :func:`unlink` removes the
segment with its semaphores and lock files.  We do not use
``multiprocessing.shared_memory``: its resource tracker unlinks segments a process
merely attached (gh-82300).
"""

from __future__ import annotations

import errno
import mmap
import os
import time

import posix_ipc

from . import layout, naming
from .errors import CorruptRing, RingNotFound, ShmbusError, ShmFull
from .lock import FileLock

__all__ = ["Segment", "unlink"]

_SEGMENT_MODE = 0o600


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
        (``capacity`` must then be given, already rounded)."""
        mode_shared = not create
        lock = FileLock(naming.ring_lock_name(ring, "create"), shared=mode_shared,
                        namespace=ns, _internal=True)
        with lock.acquire(lock_timeout):
            try:
                return cls._attach(ns, ring, repair=create)
            except RingNotFound:
                if not create:
                    raise
            if capacity is None:
                raise RingNotFound(
                    f"ring {ring!r} does not exist in namespace {ns!r}: pass capacity= "
                    "(bytes) to create it", name=ring, namespace=ns)
            return cls._create(ns, ring, capacity, flags, slot_count)

    @classmethod
    def _attach(cls, ns: str, ring: str, repair: bool) -> "Segment":
        shm_name = naming.segment_name(ns, ring)
        try:
            shm = posix_ipc.SharedMemory(shm_name)
        except posix_ipc.ExistentialError:
            raise RingNotFound(
                f"ring {ring!r} does not exist in namespace {ns!r} "
                f"({naming.segment_path(ns, ring)} is missing): start its producer first, "
                "or check the name and namespace", name=ring, namespace=ns) from None
        except posix_ipc.PermissionsError:
            raise _permission_error(ns, ring) from None
        try:
            size = shm.size
            if size < layout.HEADER_SIZE:
                raise CorruptRing(
                    f"segment {naming.segment_path(ns, ring)} is {size} bytes, too small "
                    f"for a shmbus ring (header {layout.HEADER_SIZE} bytes): remove it with "
                    f"`shmbus rm {ring}`", name=ring, found=size)
            mm = mmap.mmap(shm.fd, size)
            inode = os.fstat(shm.fd).st_ino
        finally:
            shm.close_fd()
        try:
            header = layout.check_header(mm, ring, size)
        except CorruptRing:
            if repair and not any(mm[:layout.HEADER_SIZE]):
                # A creator died before writing the header: nothing was ever published.
                mm.close()
                posix_ipc.unlink_shared_memory(shm_name)
                raise RingNotFound("half-made segment removed", name=ring) from None
            mm.close()
            raise
        except BaseException:
            mm.close()
            raise
        seg = cls(ns, ring, mm, header, created=False)
        seg.inode = inode
        return seg

    @classmethod
    def _create(cls, ns: str, ring: str, capacity: int, flags: int,
                slot_count: int) -> "Segment":
        size = layout.segment_size(capacity, slot_count)
        _check_free_space(ring, size)
        shm_name = naming.segment_name(ns, ring)
        try:
            shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=_SEGMENT_MODE)
        except posix_ipc.PermissionsError:
            raise _permission_error(ns, ring) from None
        try:
            try:
                os.posix_fallocate(shm.fd, 0, size)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise _full_error(ring, size) from None
                raise
            mm = mmap.mmap(shm.fd, size)
            inode = os.fstat(shm.fd).st_ino
        except BaseException:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(shm_name)
            raise
        shm.close_fd()
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
            return os.stat(naming.segment_path(self.namespace, self.ring)).st_ino == self.inode
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


def _permission_error(ns: str, ring: str) -> ShmbusError:
    path = naming.segment_path(ns, ring)
    owner = "another user"
    try:
        owner = f"uid {os.stat(path).st_uid}"
    except OSError:
        pass
    err = ShmbusError(
        f"permission denied on ring {ring!r} ({path} belongs to {owner}): run as that "
        "user, or use another namespace", name=ring, path=path)
    return err


def unlink(ns: str, ring: str, *, lock_timeout: float = 10.0) -> bool:
    """Remove ring ``ring``'s segment, semaphores and idle lock files.  Returns whether
    the segment existed.  Processes that have it mapped keep their mapping."""
    lock = FileLock(naming.ring_lock_name(ring, "create"), namespace=ns, _internal=True)
    with lock.acquire(lock_timeout):
        try:
            posix_ipc.unlink_shared_memory(naming.segment_name(ns, ring))
            existed = True
        except posix_ipc.ExistentialError:
            existed = False
        except posix_ipc.PermissionsError:
            raise _permission_error(ns, ring) from None
        remove_companions(ns, ring)
    return existed


def remove_companions(ns: str, ring: str) -> list[str]:
    """Remove the ring's semaphores and the lock files nobody holds; return what was
    removed (as ``/dev/shm`` paths)."""
    removed = []
    sem_prefix = f"sem.{ns}.{ring}@"
    try:
        entries = os.listdir(naming.SHM_DIR)
    except OSError:
        entries = []
    for entry in entries:
        if entry.startswith(sem_prefix):
            try:
                posix_ipc.unlink_semaphore("/" + entry[4:])
                removed.append(f"{naming.SHM_DIR}/{entry}")
            except posix_ipc.ExistentialError:
                pass
    lock_prefix = ring + "@"
    directory = naming.lock_dir(ns)
    try:
        lock_files = os.listdir(directory)
    except FileNotFoundError:
        lock_files = []
    for name in lock_files:
        if name.startswith(lock_prefix) and name != naming.ring_lock_name(ring, "create"):
            probe = FileLock(name, namespace=ns, _internal=True)
            if probe.try_acquire():  # releasing deletes the file nobody else holds
                probe.release()
                removed.append(probe.path)
    return removed
