"""Routing a run of input records to their keys' owners (consistent hashing), a run at
a time: which records go to which worker.

:func:`router` builds, from a :class:`~shmbus.balancer.policies.ConsistentHash`'s ring,
either the compiled ``shmbus._hotpath.KeyRouter`` (it reads each record's key in the
input ring itself, hashes it with a C ``hash64`` equal to ``policies.hash64`` and
caches key -> owner) or its pure-Python twin :class:`KeyRouter`, which takes the
keys from the run (``take_run(..., keys=True)``) and caches owners in a dict.  Both
answer ``route(run) -> (owners, picks)``: each record's owner index, and for each
owner index the list of its records' indexes, in order.  A router serves one
membership: build a new one when the ring changes (:meth:`Router.current`).
"""

from __future__ import annotations

import bisect
from itertools import compress
from typing import Sequence

from shmbus import hotpath
from shmbus.forward import Run

from .policies import ConsistentHash, hash64

__all__ = ["Router", "KeyRouter", "router"]

_CACHE = 1 << 16  # distinct keys cached by the pure router before it starts again


class KeyRouter:
    """The pure-Python twin of ``shmbus._hotpath.KeyRouter``: ``points`` (ascending)
    and the owner index of each."""

    def __init__(self, points: list[int], owners: list[int]) -> None:
        if not points or len(points) != len(owners):
            raise ValueError("points and owners: one owner per point, at least one point")
        self._points, self._owners = points, owners
        self._count = max(owners) + 1
        self._cache: dict[bytes | None, int] = {}

    def owner(self, key: bytes | None) -> int:
        i = bisect.bisect(self._points, hash64(bytes(key or b"")))
        return self._owners[i % len(self._owners)]

    def route_keys(self, keys: list) -> tuple[list[int], list[list[int]]]:
        cache = self._cache
        if len(cache) >= _CACHE:
            cache.clear()
        ids = list(map(cache.get, keys))
        if None in ids:
            for i, w in enumerate(ids):
                if w is None:
                    ids[i] = cache[keys[i]] = self.owner(keys[i])
        picks: list[list[int]] = [[] for _ in range(self._count)]
        everyone = range(len(ids))
        for w in set(ids):
            picks[w] = list(compress(everyone, map(w.__eq__, ids)))
        return ids, picks


class Router:
    """Routes runs by key over one membership of a consistent-hash ring; ``names[i]``
    is owner index i's worker."""

    def __init__(self, policy: ConsistentHash, native=hotpath.native) -> None:
        points, owners = policy.ring()
        self._points = points
        self.names: list[str] = sorted(set(owners))
        index = {name: i for i, name in enumerate(self.names)}
        ids = [index[o] for o in owners]
        self._native = native.KeyRouter(points, ids) if native is not None else None
        self._pure = None if native is not None else KeyRouter(points, ids)
        self.needs_keys = native is None  # the pure router takes keys from the run

    def current(self, policy: ConsistentHash) -> bool:
        """Whether this router still serves ``policy``'s ring (membership unchanged)."""
        return policy.ring()[0] is self._points

    def route(self, run: Run) -> tuple[Sequence[int], list[list[int]]]:
        if self._native is not None:
            owners, picks = self._native.route(run.data, run.bounds)
            return memoryview(owners).cast("H"), picks
        return self._pure.route_keys(run.keys)


def router(policy: ConsistentHash, native=hotpath.native) -> Router | None:
    """A router for ``policy``'s current ring (None while it has no workers): the
    compiled one if ``native`` (the compiled module) is given, else the pure one."""
    return Router(policy, native) if policy.ring()[0] else None
