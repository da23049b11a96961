"""``Worker``: one member of a balancer group, consumed like a ``shmbus.Consumer``."""

from __future__ import annotations

import shmbus
from shmbus import layout, naming
from shmbus.errors import RingBusy
from shmbus.lock import FileLock
from shmbus.segment import Segment

from . import membership

__all__ = ["Worker"]


class Worker(shmbus.Consumer):
    """Worker ``name`` of group ``group``: creates its ring (``capacity`` bytes) if
    needed, then registers; the group's balancer starts dispatching to it.  Receive
    with ``recv``/``recv_many``/iteration; a message is acknowledged when released
    (the next ``recv`` releases the previous one).  If the worker dies, whatever it had
    received but not released is dispatched again to the other workers.

    Raises :class:`shmbus.RingBusy` if a live worker with that name is registered.
    """

    def __init__(self, group: str, name: str, *, capacity: int = 1 << 20,
                 namespace: str | None = None, wait: str = "adaptive") -> None:
        membership.check_group(group)
        naming.check_name(name, "worker name")
        ns = naming.resolve_namespace(namespace)
        ring = membership.worker_ring(group, name)
        self.group, self.worker = group, name
        self._registration = FileLock(membership.registration_lock(group, name),
                                      namespace=ns, reentrant=False, _internal=True)
        if not self._registration.try_acquire():
            holders = [h.pid for h in self._registration.holders() if not h.waiting]
            raise RingBusy(f"worker {name!r} of group {group!r} is already live (pid "
                           f"{holders[0] if holders else '?'}): use another worker name",
                           name=name, pid=holders[0] if holders else None)
        try:
            Segment.open(ns, ring, capacity=layout.round_capacity(capacity),
                         create=True).close()
            super().__init__(ring, durable=membership.WORKER_DURABLE, start="earliest",
                             namespace=ns, wait=wait)
        except BaseException:
            self._registration.release()
            raise

    def close(self, *, release: bool = True) -> None:
        """Leave the group: unreleased messages (with ``release=False``, the last
        one received too) go to the other workers."""
        if self.closed:
            return
        try:
            super().close(release=release)
        finally:
            if self._registration.held:
                self._registration.release()

    def __repr__(self) -> str:
        return f"<Worker {self.worker!r} of group {self.group!r}>"
