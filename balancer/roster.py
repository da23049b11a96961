"""The leader's roster: which registered workers are members, which are waiting to
join, and which are gone and leave messages behind to dispatch again.

A mixin of :class:`balancer.Balancer` (it uses the balancer's policy, placing and
counters): every round the leader compares the worker rings in ``/dev/shm`` and their
registration locks with its members (:meth:`Roster._refresh_members`), and before any
new input moves it dispatches again what gone workers had not acknowledged
(:meth:`Roster._drain_gone`).
"""

from __future__ import annotations

from collections import Counter

import shmbus
from shmbus.errors import RingBusy, RingNotFound, ShmbusError, Timeout
from shmbus.lock import FileLock

from . import membership, worker

__all__ = ["Roster"]

_REDELIVERY_BATCH = 4096  # messages read back from a gone worker's ring at a time


class _Member:
    """The leader's view of one worker: its ring (as producer) and its slot there."""

    def __init__(self, name: str, producer: shmbus.Producer, slot: int) -> None:
        self.name, self.producer, self.slot = name, producer, slot
        self.dispatched = 0

    def in_flight(self) -> int:
        """Messages in the worker's ring that it has not acknowledged."""
        return self.producer.unreleased(self.slot)


class Roster:
    """Membership handling of the leader (see the module docstring)."""

    def _refresh_members(self) -> None:
        rings = membership.worker_rings(self.namespace, self.group)
        for name in list(self.members):
            if name not in rings or not membership.is_registered(self.namespace,
                                                                 self.group, name):
                self._drop(name)
        self._unjoined.clear()
        joined = False
        for name, ring in rings.items():
            if name in self.members:
                continue
            if membership.is_registered(self.namespace, self.group, name):
                self._gone.pop(name, None)  # back again: it finishes its own leftovers
                if not self._join(name, ring):
                    self._unjoined.add(name)
                joined = joined or name in self.members
            else:
                self._gone.setdefault(name, ring)  # left over from a worker that is gone
        if joined and self._hashing:  # keys moved to it from workers that hold some
            self._handoffs.scan(self.members, self.policy.owner)

    def _join(self, name: str, ring: str) -> bool:
        """Make a registered worker a member; False only if its ring may hold
        messages of its keys that it has not acknowledged and cannot be opened yet
        (a previous leader still lets go of it)."""
        try:
            info = shmbus.inspect(ring, namespace=self.namespace)
        except ShmbusError:
            return True
        slot = next((c["slot"] for c in info["consumers"]
                     if c["durable"] == membership.WORKER_DURABLE), None)
        if slot is None:
            return True  # a new worker registering: next round
        try:
            producer = shmbus.Producer(ring, namespace=self.namespace)
        except RingNotFound:
            return True
        except RingBusy:
            return False
        member = _Member(name, producer, slot)
        self.members[name] = member
        self.policy.add(name)
        self._owners.clear()
        return True

    def _drop(self, name: str) -> None:
        member = self.members.pop(name)
        self.policy.remove(name)
        self._owners.clear()
        self._gone[name] = member.producer.name
        member.producer.close()

    def _drain_gone(self) -> bool:
        """Dispatch again what gone workers had not acknowledged; True when nothing is
        left.  Until then no new input moves: a gone worker's keys must get their old
        messages before any newer one (per-key order).  The worker that left last goes
        first: what it holds of a key that an earlier one also left behind came from
        that one's (partly done) redelivery, so it is the older part."""
        for name, ring in reversed(list(self._gone.items())):
            try:
                leftovers = shmbus.Consumer(ring, durable=membership.WORKER_DURABLE,
                                            namespace=self.namespace)
            except RingNotFound:
                del self._gone[name]
                continue
            except ShmbusError:
                return False  # its previous user still lets go of it: next round
            try:
                if not self._redeliver(leftovers):
                    return False  # no room now: the rest waits in its ring
            finally:
                leftovers.close(release=False)
            # Remove the ring only while no worker of that name can be registering:
            # one that came back meanwhile keeps its ring.
            registration = FileLock(membership.registration_lock(self.group, name),
                                    namespace=self.namespace, reentrant=False,
                                    _internal=True)
            if registration.try_acquire():
                try:
                    shmbus.unlink(ring, namespace=self.namespace)
                finally:
                    registration.release()
            del self._gone[name]
        return True

    def _redeliver(self, leftovers: shmbus.Consumer) -> bool:
        """Dispatch every message of a gone worker's ring (releasing each one placed);
        True when none is left.  They move together, once there is room for all of
        them: a worker of that name coming back meanwhile then finds them all in its
        ring, instead of the later messages of a key while another worker holds the
        earlier ones.  (A gone worker held at most ``prefetch`` messages, so they all
        fit once their new owners have acknowledged what they hold.)"""
        # What the worker received counts as one delivery more; what it had not yet
        # received was never delivered and keeps its count.
        received = worker.received_position(leftovers)
        while True:
            try:
                msgs = leftovers.recv_many(_REDELIVERY_BATCH, timeout=0)
            except Timeout:
                return True
            delivered = [m.deliveries - (m._end > received) for m in msgs]
            if not self._room_for([m for m, d in zip(msgs, delivered)
                                   if d < self.max_deliveries]):
                return False
            unplaced = self._place(msgs, delivered)
            if unplaced:  # a worker ring was full: what follows its first waits
                first = msgs.index(unplaced[0])
                if first:
                    msgs[first - 1].release()
                return False
            msgs[-1].release()

    def _room_for(self, msgs: list) -> bool:
        """Whether the members can take all of ``msgs`` now (or every worker they need
        holds nothing: then as many as fit go, so that redelivery always moves on).
        ``msgs`` leaves out those bound for the dead-letter ring."""
        if not msgs:
            return True  # all of them go to the dead-letter ring
        room = {n: self.prefetch - m.in_flight() for n, m in self.members.items()}
        if not room:
            return False
        if not self._hashing:
            return sum(max(r, 0) for r in room.values()) >= len(msgs) or \
                all(r == self.prefetch for r in room.values())
        owners = [self.policy.owner(m.key) for m in msgs]
        if self._handoffs.held and any(map(self._handoffs.blocks,
                                           [m.key for m in msgs], owners)):
            return False
        return all(room[n] >= k or room[n] == self.prefetch
                   for n, k in Counter(owners).items())
