"""Handoffs: keys whose older messages a worker other than their owner still holds.

With consistent hashing a key's messages go to its owner, so that the key's order
holds.  A membership change moves keys: when a worker leaves, what it held is read back
from its ring and dispatched to the new owners before anything newer (the balancer
does that).  When a worker *joins*, keys move to it from workers that are alive and may
still hold unacknowledged messages of those keys; and a new leader finds the worker
rings as the previous leader left them.  A newer message of such a key sent to its new
owner would overtake the older one (and if the old holder then died, its leftovers would
reach the new owner after the newer message).

So after every join the balancer scans what each worker holds (the records between its
read position and the write position of its ring: at most ``prefetch`` per worker) and
records, per worker, the keys it holds that another worker now owns, with the write
position of its ring at that moment (the barrier).  A message of such a key waits
until every holder has acknowledged up to its barrier (it then holds no older message
of the key: nothing of that key was sent to it since), or has left (what it held is
dispatched again first).  Keys nobody else holds flow as before; the wait lasts about
as long as the old owner takes to finish its prefetched messages.
"""

from __future__ import annotations

from typing import Callable, Iterable

from shmbus import ring
from shmbus.layout import RECORD_HEADER, REC_PAD

__all__ = ["Handoffs", "unacked_keys"]


class Handoffs:
    """The keys in handoff, and who holds them.  ``held`` maps each such key to the
    workers holding older messages of it (empty almost always: test it first)."""

    def __init__(self) -> None:
        self.held: dict[bytes | None, tuple[str, ...]] = {}
        self._holds: dict[str, tuple[int, set]] = {}  # worker -> (barrier, keys)

    def scan(self, members: dict, owner: Callable[[bytes | None], str | None]) -> None:
        """Record what each member (name -> ``_Member``) holds of keys that ``owner``
        gives to another worker (replacing earlier scans: a worker's ring is the truth
        about what it holds)."""
        holds = {}
        for name, member in members.items():
            producer = member.producer
            keys = {k for k in unacked_keys(producer, member.slot) if owner(k) != name}
            if keys:
                holds[name] = (producer.position, keys)
        self._holds = holds
        self._index()

    def settle(self, members: dict) -> None:
        """End the holds of workers that acknowledged up to their barrier or left."""
        done = [name for name, (barrier, _) in self._holds.items()
                if name not in members
                or members[name].producer.read_position(members[name].slot) >= barrier]
        if done:
            for name in done:
                del self._holds[name]
            self._index()

    def blocks(self, key: bytes | None, owner: str) -> bool:
        """Whether a message of ``key`` must not go to ``owner`` yet."""
        holders = self.held.get(key)
        return holders is not None and (len(holders) > 1 or holders[0] != owner)

    def clear(self) -> None:
        self._holds.clear()
        self.held.clear()

    def _index(self) -> None:
        held: dict[bytes | None, list[str]] = {}
        for name, (_, keys) in self._holds.items():
            for key in keys:
                held.setdefault(key, []).append(name)
        self.held = {k: tuple(v) for k, v in held.items()}


def unacked_keys(producer, slot: int) -> Iterable[bytes | None]:
    """The keys of the messages in ``producer``'s ring that consumer ``slot`` has not
    released.  Only the ring's producer may call this: it reads its own records, which
    nobody else writes and it does not overwrite meanwhile."""
    data, cap = producer._data, producer.capacity
    keys = []
    try:
        for rec in ring.walk(data, cap, producer.read_position(slot), producer.position):
            if rec.flags & REC_PAD:
                continue
            start = (rec.pos & (cap - 1)) + RECORD_HEADER
            keys.append(bytes(data[start:start + rec.key_length]) if rec.key_length
                        else None)
    except ValueError:  # a corrupt record: the worker's own read will report it
        pass
    return keys

