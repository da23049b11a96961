"""``Worker``: one member of a balancer group, consumed like a ``shmbus.Consumer``.

A worker publishes what it has *received* (the end of the last message a receive
returned to it) in the spare word of its slot (:data:`shmbus.layout.S_RECEIVED`), next
to what it has *released* (its read position).  When it dies, the balancer reads both:
messages below the received position were delivered to it and count one delivery
more when they are dispatched again; the others it never saw and keep their count.
Only the worker's own consumer writes that word; one store per receive call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import shmbus
from shmbus import layout, liveness, naming
from shmbus.consumer import Consumer
from shmbus.errors import RingBusy, Timeout
from shmbus.layout import (H_PRODUCER_PID, H_PRODUCER_PID_NS, H_PRODUCER_START, H_WRITE,
                           S_READ, S_RECEIVED, slot_word)
from shmbus.lock import FileLock
from shmbus.segment import Segment

from . import membership

if TYPE_CHECKING:
    import numpy.typing as npt

    from shmbus.choices import WaitName
    from shmbus.wait import WaitStrategy

__all__ = ["Worker", "received_position"]


class Worker(shmbus.Consumer):
    """Worker ``name`` of group ``group``: creates its ring (``capacity`` bytes) if
    needed, then registers; the group's balancer starts dispatching to it.  Receive
    with ``recv``/``recv_many``/iteration; a message is acknowledged when released
    (the next ``recv`` releases the previous one).  If the worker dies or leaves,
    whatever it had not released is dispatched again to the other workers: a message
    it had received counts one delivery more (``msg.deliveries``), one still waiting in
    its ring keeps its count.

    Raises :class:`shmbus.RingBusy` if a live worker with that name is registered.
    A receive that times out while no live balancer of the group writes into this
    worker's ring raises a :class:`shmbus.Timeout` that says so (its ``balancer``
    field is False).  ``len(worker)`` / ``worker.pending``: messages waiting in its
    ring (dispatched to it, not yet received).
    """

    def __init__(self, group: str, name: str, *, capacity: int = 1 << 20,
                 namespace: str | None = None,
                 wait: WaitName | WaitStrategy = "adaptive") -> None:
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

    def _bind_recv(self) -> None:
        """The consumer's receive calls, each followed by one store of the position
        received up to into the slot's received word.  What a previous worker of this
        name received and left unreleased counts as received until passed."""
        super()._bind_recv()
        words, word, me = self._words, slot_word(self.slot) + S_RECEIVED, self
        floor = received_position(self)
        words[word] = floor
        recv, recv_many, try_recv = self.recv, self.recv_many, self.try_recv

        def worker_recv(timeout: float | None = None):
            try:
                msg = recv(timeout)
            except Timeout as e:
                raise me._timeout(e) from None
            pos = me._pos
            words[word] = pos if pos > floor else floor
            return msg

        def worker_recv_many(max_messages: int, timeout: float | None = None):
            try:
                batch = recv_many(max_messages, timeout)
            except Timeout as e:
                raise me._timeout(e) from None
            pos = me._pos
            words[word] = pos if pos > floor else floor
            return batch

        def worker_try_recv():
            msg = try_recv()
            pos = me._pos
            words[word] = pos if pos > floor else floor
            return msg

        self.recv, self.recv_many, self.try_recv = worker_recv, worker_recv_many, \
            worker_try_recv
        self._received_floor = floor

    def _timeout(self, error: Timeout) -> Timeout:
        """``error``, or when no live balancer produces into this worker's ring (none
        of the group leads, or the leader has not taken this worker on yet), a
        :class:`Timeout` that says so: waiting longer would not help."""
        if self._balancer_attached():
            return error
        ring = membership.worker_ring(self.group, self.worker)
        return Timeout(
            f"{error}: no balancer of group {self.group!r} has taken this worker on (no "
            f"live process writes into its ring {ring!r}, namespace {self.namespace!r}): "
            f"start one, e.g. `shmbus balancer run INPUT --group {self.group}`, in the "
            "same namespace", **error.fields, group=self.group, balancer=False)

    def _balancer_attached(self) -> bool:
        """Whether a live process (the group's leader) produces into our ring."""
        w = self._words
        pid = w[H_PRODUCER_PID]
        return bool(pid) and not liveness.is_dead(pid, w[H_PRODUCER_START],
                                                  w[H_PRODUCER_PID_NS])

    def recv_array(self, dtype: npt.DTypeLike, max_messages: int,
                   timeout: float | None = None) -> npt.NDArray[Any]:
        try:
            array = super().recv_array(dtype, max_messages, timeout)
        except Timeout as e:
            raise self._timeout(e) from None
        self._words[slot_word(self.slot) + S_RECEIVED] = max(self._pos,
                                                             self._received_floor)
        return array

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


def received_position(consumer: Consumer) -> int:
    """The end of what the worker on ``consumer``'s slot (a consumer of a worker ring
    with the worker's durable name) has received: between its read position and the
    write position (the read position where the word holds nothing sensible, such as
    a slot no worker has written to yet)."""
    words, base = consumer._words, slot_word(consumer.slot)
    read, received = words[base + S_READ], words[base + S_RECEIVED]
    return received if read <= received <= words[H_WRITE] else read
