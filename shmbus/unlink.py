"""Removing rings and durable cursors."""

from __future__ import annotations

from . import naming
from .errors import DurableBusy, RingNotFound
from .lock import FileLock
from .segment import Segment
from .segment import unlink as _unlink_segment
from .slots import SlotTable

__all__ = ["unlink", "remove_durable"]


def unlink(name: str, namespace: str | None = None) -> bool:
    """Remove ring ``name`` with its semaphores and lock files; return whether it
    existed.  Processes that have it open keep their mapping until they close it, but
    new producers and consumers will not find it."""
    naming.check_name(name)
    return _unlink_segment(naming.resolve_namespace(namespace), name)


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
