"""Removing rings and durable cursors."""

from __future__ import annotations

from . import naming
from .errors import CorruptRing, DurableBusy, LayoutMismatch, RingBusy, RingNotFound
from .introspect import inspect
from .lock import FileLock
from .segment import Segment
from .segment import unlink as _unlink_segment
from .slots import SlotTable

__all__ = ["unlink", "remove", "remove_durable"]


def unlink(name: str, namespace: str | None = None) -> bool:
    """Remove ring ``name`` with its semaphores and lock files; return whether it
    existed.  Processes that have it open keep their mapping until they close it, but
    new producers and consumers will not find it."""
    naming.check_name(name)
    return _unlink_segment(naming.resolve_namespace(namespace), name)


def remove(name: str, namespace: str | None = None, *, force: bool = False) -> bool:
    """Remove ring ``name`` as :func:`unlink` does, but refuse while a live process uses
    it: raises :class:`RingBusy` naming its live producer and consumers (pids), unless
    ``force``.  Removing a live ring leaves its producer writing into a segment nobody
    can open any more, so it is the operator's explicit choice.  The check and the
    removal happen while holding the ring's producer lock (when it is free), so a
    producer that starts meanwhile waits for neither and is never removed under it.
    Raises :class:`RingNotFound` if there is no such ring."""
    naming.check_name(name)
    ns = naming.resolve_namespace(namespace)
    lock = FileLock(naming.ring_lock_name(name, "producer"), namespace=ns,
                    reentrant=False, _internal=True)
    held = lock.try_acquire()
    try:
        if not force:
            users = _live_users(name, ns, [] if held else
                                [h.pid for h in lock.holders() if not h.waiting])
            if users:
                raise RingBusy(
                    f"ring {name!r} is in use by {', '.join(users)}: stop them first, "
                    f"or remove it anyway with `shmbus rm {name} --force` (they keep "
                    "using the removed ring until they close it)", name=name,
                    users=users)
        if not _unlink_segment(ns, name):
            raise RingNotFound(f"ring {name!r} does not exist in namespace {ns!r}: "
                               "check the name and namespace (`shmbus ls`)",
                               name=name, namespace=ns)
        return True
    finally:
        if held:
            lock.release()


def _live_users(name: str, ns: str, lock_pids: list[int]) -> list[str]:
    """Who uses ring ``name``: its producer and consumers that are not known dead."""
    users = [f"producer pid {pid}" for pid in lock_pids]
    try:
        info = inspect(name, namespace=ns)
    except (CorruptRing, LayoutMismatch):
        return users  # nobody can use a ring we cannot read; rm is how it is removed
    p = info["producer"]
    if p is not None and p["alive"] != "dead" and p["pid"] not in lock_pids:
        users.append(f"producer pid {p['pid']}")
    for c in info["consumers"]:
        if c["pid"] and c["alive"] != "dead":
            who = f"durable {c['durable']!r}" if c["durable"] else "anonymous"
            users.append(f"consumer pid {c['pid']} ({who}, slot {c['slot']})")
    return users


def remove_durable(name: str, durable: str, namespace: str | None = None) -> None:
    """Remove durable cursor ``durable`` of ring ``name`` (its retained messages are
    released).  Raises :class:`DurableBusy` if a live consumer uses it and
    :class:`RingNotFound` if there is no such cursor."""
    naming.check_name(name)
    naming.check_name(durable, "durable name")
    ns = naming.resolve_namespace(namespace)
    lock = FileLock(naming.ring_lock_name(name, "durable." + durable), namespace=ns,
                    reentrant=False, _internal=True)
    if not lock.try_acquire():
        raise DurableBusy(f"durable consumer {durable!r} of ring {name!r} is attached: "
                          "stop it first", name=name, durable=durable)
    try:
        seg = Segment.open(ns, name)
        try:
            table = SlotTable(seg)
            with table.lock():
                i = table.find_durable(durable)
                if i is None:
                    raise RingNotFound(f"ring {name!r} has no durable consumer "
                                       f"{durable!r}", name=name, durable=durable)
                table.free(i)
        finally:
            seg.close()
    finally:
        lock.release()
