"""Fan-in: the names, the registry and the doorbell shared by an Inbox and its Outboxes.

An Inbox ``X`` receives from any number of Outboxes.  Each Outbox writes into a ring of
its own (a ring has one producer: that is what keeps it lock-free), named
``X.from.SENDER``; the Inbox reads every such ring as the durable consumer ``inbox``,
so what an Inbox had not released when it stopped (or crashed) waits in the rings for
the next Inbox of that name.  ``SENDER`` is the Outbox's sender id: by default
``PID.STARTTIME`` (the process's pid and start time in hundredths of a second, unique
across pid reuse; ``.N`` is appended for a second Outbox of the same name in one
process), or a name given to the Outbox.

The registry is a small segment ``/dev/shm/{ns}.X@inbox``::

    +0   magic       "SHMBFANI", written last by its creator
    +8   version     REGISTRY_VERSION
    +16  capacity    bytes of each sender ring an Outbox creates (0: no Inbox yet)
    +24  generation  bumped by an Outbox after it created its ring
    +32  inbox pid   of the Inbox that last opened it (for error messages)
    +64  bell        the Inbox's doorbell epoch: odd while it waits (see Waiting)
    +128 end

The Inbox loads ``generation`` once per receive round (no system call) and lists
``/dev/shm`` only when it changed, or once a second while it waits.  An Outbox bumps it
*after* creating its ring, and the Inbox loads it *before* listing, so a change it has
not seen always means a ring it may not have listed yet; a lost increment (two Outboxes
bumping at once) still changes the value.

**Waiting.**  Outboxes do nothing for the Inbox per message: they are ordinary
producers.  The Inbox waits in one ``epoll`` on the wake-up FIFOs of its consumers
(armed as :mod:`shmbus.wakeup` says: each sender's producer writes one byte there,
once per sleep, only while the Inbox is armed) and on its *doorbell*, the FIFO
``{ns}@locks/X@inbox.wake`` of a waiter whose sleep epoch is the registry's ``bell``
word: an Outbox that has registered a new ring wakes it there.  A wake-up missed while
arming delays the Inbox by at most :data:`MAX_SLEEP`, as for any waiter.

Locks (files in ``{ns}@locks``): ``X@inbox`` is held by the live Inbox (one per name);
``X@registry`` is held for the moment the registry is created, an Outbox registers, or
the registry is removed, so removal never races with a registration.  The registry
holds nothing that cannot be made again: the Inbox removes it when it closes and no
sender ring is left, ``shmbus gc`` when no Inbox is live and no sender ring is left
(:func:`collect`).  Sender rings are ordinary rings: ``shmbus ls`` shows them, and
``gc`` keeps one whose ``inbox`` cursor has not read everything.

An Inbox's name shares the namespace with ring names: do not also name a ring ``X``
(removing that ring would remove the Inbox's doorbell semaphore with its own).
"""

from __future__ import annotations

import mmap
import os

import posix_ipc  # type: ignore[import-not-found, unused-ignore]

from . import liveness, naming, ownership
from .errors import InvalidName, PermissionDenied, ShmbusError
from .lock import FileLock
from .wait import strategy
from .wakeup import LONG_SLEEP, MAX_SLEEP, Sleeper

__all__ = ["DURABLE", "Registry", "doorbell", "check_inbox_name", "sender_ring",
           "sender_rings", "exists", "remove_inbox", "collect", "MAX_SLEEP", "LONG_SLEEP"]

DURABLE = "inbox"  # the Inbox's durable name on every sender ring
_FROM = "from"  # never a component of a sender id (see sender_ring)
INBOX_NAME_MAX = 64  # "X.from." + a default sender id must fit a ring name
_MAGIC = int.from_bytes(b"SHMBFANI", "little")
REGISTRY_VERSION = 1
_SIZE = 128
W_MAGIC, W_VERSION, W_CAPACITY, W_GENERATION, W_PID, W_START = 0, 1, 2, 3, 4, 5
W_BELL = 8


def check_inbox_name(name: object) -> str:
    naming.check_name(name, "inbox name")
    assert isinstance(name, str)
    if len(name) > INBOX_NAME_MAX:
        raise InvalidName(
            f"invalid inbox name {name!r}: at most {INBOX_NAME_MAX} characters (its "
            "sender rings are named NAME.from.SENDER); shorten it", name=name)
    return name


def sender_ring(inbox: str, sender: str) -> str:
    """The ring sender ``sender`` of Inbox ``inbox`` writes into.  A sender id has no
    component ``from``, so that ``A.from.B.from.C`` is sender ``C`` of Inbox
    ``A.from.B``, never one of Inbox ``A``: each sender ring has one Inbox."""
    naming.check_name(sender, "sender id")
    if _FROM in sender.split("."):
        raise InvalidName(
            f"invalid sender id {sender!r}: it has a component {_FROM!r}, which would "
            "make its ring also a sender ring of another inbox (NAME.from.SENDER); "
            "choose another id", name=sender)
    ring = f"{inbox}.from.{sender}"
    if len(ring) > naming.NAME_MAX_LEN:
        raise InvalidName(
            f"sender id {sender!r} is too long for inbox {inbox!r}: inbox and sender "
            f"together must fit {naming.NAME_MAX_LEN - 6} characters", name=sender)
    return ring


def sender_rings(ns: str, inbox: str) -> dict[str, str]:
    """{sender id: ring name} of every sender ring of Inbox ``inbox`` in /dev/shm."""
    prefix = f"{inbox}.from."
    try:
        entries = os.listdir(naming.SHM_DIR)
    except OSError:
        return {}
    return {ring[len(prefix):]: ring for ring in naming.ring_names_in(ns, entries)
            if ring.startswith(prefix) and _FROM not in ring[len(prefix):].split(".")}


def registry_path(ns: str, inbox: str) -> str:
    return f"{naming.SHM_DIR}/{ns}.{inbox}@inbox"


def bell_semaphore(ns: str, inbox: str) -> str:
    return f"/{ns}.{inbox}@inbox"


def registry_lock(ns: str, inbox: str) -> FileLock:
    return FileLock(naming.ring_lock_name(inbox, "registry"), namespace=ns,
                    _internal=True)


def inbox_lock(ns: str, inbox: str) -> FileLock:
    return FileLock(naming.ring_lock_name(inbox, "inbox"), namespace=ns,
                    reentrant=False, _internal=True)


def exists(ns: str, inbox: str) -> bool:
    """Whether Inbox ``inbox`` has a registry or sender rings in ``/dev/shm``."""
    return os.path.lexists(registry_path(ns, inbox)) or bool(sender_rings(ns, inbox))


def remove_inbox(ns: str, inbox: str, *, force: bool = False) -> list[str]:
    """``shmbus rm INBOX``: remove Inbox ``inbox``'s sender rings, registry, doorbell
    and lock files; return the rings removed.  Refuses (:class:`RingBusy`, naming the
    pid) while an Inbox of that name is live, and leaves a sender ring that a live
    Outbox writes (:class:`RingBusy` from :func:`shmbus.unlink.remove`), unless
    ``force``.  Unread messages in the rings are discarded: that is what rm is for."""
    from .errors import RingBusy
    from .segment import remove_companions
    from .unlink import remove
    check_inbox_name(inbox)
    live = inbox_lock(ns, inbox)
    held = live.try_acquire()
    try:
        if not held and not force:
            pids = [h.pid for h in live.holders() if not h.waiting]
            raise RingBusy(
                f"inbox {inbox!r} is open (pid {pids[0] if pids else '?'}): close it first, "
                f"or remove it anyway with `shmbus rm {inbox} --force`", name=inbox,
                pid=pids[0] if pids else None)
        removed = []
        for ring in sender_rings(ns, inbox).values():
            remove(ring, ns, force=force)
            removed.append(ring)
        with registry_lock(ns, inbox).acquire(10.0):
            remove_registry(ns, inbox)
    finally:
        if held:
            live.release()
    remove_companions(ns, inbox)  # the doorbell FIFO, idle lock files
    return removed


class Registry:
    """A mapped registry segment: ``words`` (8-byte words, see the module docstring)."""

    def __init__(self, ns: str, inbox: str, mm: mmap.mmap) -> None:
        self.namespace, self.inbox = ns, inbox
        self._mmap: mmap.mmap | None = mm
        self.words = memoryview(mm).cast("Q")

    @classmethod
    def open(cls, ns: str, inbox: str, *, create: bool) -> "Registry | None":
        """Attach to the registry (with ``create``, make it if missing); None if it does
        not exist and ``create`` is false.  The caller holds :func:`registry_lock`, so a
        registry without its magic word was left by a creator that died: made again.
        Raises :class:`PermissionDenied` for one that is not ours."""
        path = registry_path(ns, inbox)
        what = f"registry of inbox {inbox!r}"
        for _ in range(2):
            try:
                fd = ownership.open_file(path, what, create=False)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    fd = ownership.open_file(path, what, create=True)
                except FileExistsError:
                    continue
                try:
                    os.posix_fallocate(fd, 0, _SIZE)
                    mm = mmap.mmap(fd, _SIZE)
                finally:
                    os.close(fd)
                reg = cls(ns, inbox, mm)
                reg.words[W_VERSION] = REGISTRY_VERSION
                reg.words[W_MAGIC] = _MAGIC  # last: the registry is ready
                return reg
            try:
                size = os.fstat(fd).st_size
                found = mmap.mmap(fd, _SIZE) if size == _SIZE else None
            finally:
                os.close(fd)
            if found is not None and found[:8] == _MAGIC.to_bytes(8, "little"):
                reg = cls(ns, inbox, found)
                if reg.words[W_VERSION] != REGISTRY_VERSION:
                    version = reg.words[W_VERSION]
                    reg.close()
                    raise ShmbusError(
                        f"registry {path} has version {version}, this shmbus expects "
                        f"{REGISTRY_VERSION}: stop its Inbox and Outboxes and remove it "
                        "(`shmbus gc`)", path=path, expected=REGISTRY_VERSION, found=version)
                return reg
            if found is not None:
                found.close()
            if size and any(open_head(path)):
                raise PermissionDenied(
                    f"{path} is not a registry of shmbus (no magic word): left alone; "
                    "remove it yourself if it is yours, or use another namespace",
                    path=path, owner=None)
            _unlink(path)  # half-made: its creator died holding the registry lock
        raise ShmbusError(f"registry {path} keeps vanishing: another process removes "
                          "it; try again", path=path)

    def close(self) -> None:
        if self._mmap is None:
            return
        self.words.release()
        mm, self._mmap = self._mmap, None
        mm.close()


def open_head(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, _SIZE, 0)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_registry(ns: str, inbox: str) -> list[str]:
    """Remove the registry and its doorbell semaphore, if ours (caller holds
    :func:`registry_lock` and knows that no Inbox is live and no sender ring is left);
    return the paths removed."""
    removed = []
    path = registry_path(ns, inbox)
    if ownership.is_ours(path):
        _unlink(path)
        removed.append(path)
    sem = bell_semaphore(ns, inbox)
    if ownership.is_ours(ownership.semaphore_path(sem)):
        try:
            posix_ipc.unlink_semaphore(sem)
            removed.append(ownership.semaphore_path(sem))
        except posix_ipc.ExistentialError:
            pass
    return removed


def collect(ns: str, dry_run: bool = False) -> list[dict[str, str]]:
    """``shmbus gc``'s part: remove the registry of every Inbox that is not live and has
    no sender ring left (run it after the rings' pass, which removes the drained rings
    of gone senders); return ``{"kind", "name", "reason"}`` dicts."""
    done: list[dict[str, str]] = []
    prefix, suffix = ns + ".", "@inbox"
    try:
        entries = os.listdir(naming.SHM_DIR)
    except OSError:
        return done
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(suffix)):
            continue
        inbox = entry[len(prefix):-len(suffix)]
        try:
            check_inbox_name(inbox)
        except InvalidName:
            continue
        live = inbox_lock(ns, inbox)
        if not live.try_acquire():
            continue  # a live Inbox
        try:
            reg_lock = registry_lock(ns, inbox)
            if not reg_lock.try_acquire():
                continue  # an Outbox registering
            try:
                if sender_rings(ns, inbox) or not ownership.is_ours(
                        f"{naming.SHM_DIR}/{entry}"):
                    continue
                if not dry_run:
                    remove_registry(ns, inbox)
                done.append({"kind": "inbox", "name": inbox,
                             "reason": "no live Inbox and no sender ring left"})
            finally:
                reg_lock.release()
        finally:
            live.release()
    return done


def doorbell(words: memoryview, ns: str, inbox: str) -> Sleeper:
    """The Inbox's side of the doorbell: a waiter on the registry's ``bell`` word whose
    wake-up FIFO is ``{ns}@locks/{inbox}@inbox.wake`` (see :mod:`shmbus.wakeup`)."""
    return Sleeper(words, W_BELL, bell_semaphore(ns, inbox), strategy("sleep"))


def current_sender_id() -> str:
    """``PID.STARTTIME`` of this process."""
    me = liveness.current()
    return f"{me.pid}.{me.start_time}"
