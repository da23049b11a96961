"""Dispatch policies: which worker gets a message.  Pure classes, usable without
processes (by the balancer, and by a producer that partitions by key itself).

``RoundRobin``: each message to the next worker in turn, skipping workers the caller
says are full or dead.

``ConsistentHash``: the same key always goes to the same worker while membership is
stable (so per-key order holds), and a join or leave moves only the keys of that worker.
A hash ring with many virtual nodes per worker (default 1000): with that many, the
largest share is within a few percent of the mean (a ring with 40-160 virtual nodes is
off by 25-45%), while a lookup stays one hash and one binary search (``bisect``, in C),
about a microsecond, where rendezvous hashing costs one hash per worker.  Weights scale
a worker's virtual nodes.  With ``load_factor=eps`` it is *consistent hashing with
bounded loads* (Mirrokni, Thorup and Zadimoghaddam, 2018): given current loads, no
worker gets more than ``ceil((1 + eps) * mean)``; a key whose owner is at that bound
goes to the next worker along the ring that is not.

Keys are bytes or str (hashed with BLAKE2b, the same in every process; Python's
``hash`` is salted per process and would not be).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Any, Callable, Iterable, Mapping

__all__ = ["Policy", "RoundRobin", "ConsistentHash", "hash64", "policy"]

Skip = Callable[[str], bool]


def hash64(data: bytes) -> int:
    """A stable 64-bit hash of ``data``."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _key_bytes(key: bytes | str | None) -> bytes:
    if key is None:
        return b""
    return key.encode() if isinstance(key, str) else bytes(key)


class Policy:
    """What every policy offers: membership and ``pick``."""

    name = "?"

    def add(self, worker: str, weight: float = 1.0) -> None:
        raise NotImplementedError

    def remove(self, worker: str) -> None:
        raise NotImplementedError

    @property
    def workers(self) -> list[str]:
        raise NotImplementedError

    def pick(self, key: bytes | str | None = None, *, loads: Mapping[str, int] | None = None,
             skip: Skip | None = None) -> str | None:
        """The worker for a message with ``key``; None if every worker is skipped."""
        raise NotImplementedError


class RoundRobin(Policy):
    """Each message to the next worker in turn; ``skip(worker)`` true passes it over
    (full, dead) without losing its turn order for the others."""

    name = "round-robin"

    def __init__(self, workers: Iterable[str] = ()) -> None:
        self._workers: list[str] = []
        self._next = 0
        for w in workers:
            self.add(w)

    @property
    def workers(self) -> list[str]:
        return list(self._workers)

    def add(self, worker: str, weight: float = 1.0) -> None:
        if worker in self._workers:
            raise ValueError(f"worker {worker!r} is already a member")
        self._workers.append(worker)

    def remove(self, worker: str) -> None:
        i = self._workers.index(worker)
        del self._workers[i]
        if i < self._next:
            self._next -= 1
        if self._next >= len(self._workers):
            self._next = 0

    def pick(self, key: bytes | str | None = None, *, loads: Mapping[str, int] | None = None,
             skip: Skip | None = None) -> str | None:
        n = len(self._workers)
        for _ in range(n):
            worker = self._workers[self._next]
            self._next = (self._next + 1) % n
            if skip is None or not skip(worker):
                return worker
        return None

    def share(self, count: int, room: Mapping[str, int]) -> list[tuple[str, int]]:
        """Split ``count`` consecutive messages into one share per worker, exactly as
        dealing them one at a time in turn would (a worker whose ``room``, how many
        more it may take, is used up drops out of the deal; 0 or less skips it): the
        shares differ by at most one, the extra messages of a batch go to the first
        workers in turn, and the turn moves past the last worker dealt to, so over
        many batches every worker gets as many as the others, give or take one.  What
        fits nowhere is left out (the shares may add up to less than ``count``)."""
        n = len(self._workers)
        order = [self._workers[(self._next + i) % n] for i in range(n)]
        takes = {w: 0 for w in order if room.get(w, 0) > 0}
        dealing = list(takes)  # in turn order, those with room left
        last = None
        while count and dealing:
            rounds = min(count // len(dealing), min(room[w] - takes[w] for w in dealing))
            if not rounds:  # fewer left than workers: one more each, in turn
                for w in dealing[:count]:
                    takes[w] += 1
                last, count = dealing[count - 1], 0
                break
            for w in dealing:
                takes[w] += rounds
            last, count = dealing[-1], count - rounds * len(dealing)
            dealing = [w for w in dealing if takes[w] < room[w]]
        if last is not None:
            self._next = (self._workers.index(last) + 1) % n
        return [(w, k) for w, k in takes.items() if k > 0]


class ConsistentHash(Policy):
    """Keys to workers on a hash ring of ``vnodes`` points per unit of weight;
    ``load_factor`` (eps > 0) bounds any worker's load to ``ceil((1 + eps) * mean)``
    when ``pick`` is given the current loads."""

    name = "consistent-hash"

    def __init__(self, workers: Iterable[str] = (), *, vnodes: int = 1000,
                 weights: Mapping[str, float] | None = None,
                 load_factor: float | None = None) -> None:
        if not isinstance(vnodes, int) or vnodes < 1:
            raise ValueError(f"vnodes must be an int >= 1, got {vnodes!r}")
        if load_factor is not None and not load_factor > 0:
            raise ValueError(f"load_factor must be > 0 (e.g. 0.25), got {load_factor!r}")
        self.vnodes = vnodes
        self.load_factor = load_factor
        self._weights: dict[str, float] = {}
        self._points: list[int] = []
        self._owners: list[str] = []
        weights = weights or {}
        for w in workers:
            self._weights[w] = self._check_weight(w, weights.get(w, 1.0))
        self._rebuild()

    @staticmethod
    def _check_weight(worker: str, weight: float) -> float:
        if not weight > 0:
            raise ValueError(f"weight of worker {worker!r} must be > 0, got {weight!r}")
        return float(weight)

    @property
    def workers(self) -> list[str]:
        return sorted(self._weights)

    def add(self, worker: str, weight: float = 1.0) -> None:
        if worker in self._weights:
            raise ValueError(f"worker {worker!r} is already a member")
        self._weights[worker] = self._check_weight(worker, weight)
        self._rebuild()

    def remove(self, worker: str) -> None:
        del self._weights[worker]
        self._rebuild()

    def _rebuild(self) -> None:
        points = []
        for worker, weight in self._weights.items():
            base = worker.encode() + b"#"
            for i in range(max(1, round(self.vnodes * weight))):
                points.append((hash64(base + str(i).encode()), worker))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [w for _, w in points]

    def ring(self) -> tuple[list[int], list[str]]:
        """The hash ring: its points (ascending) and the worker owning each; a key is
        owned by the first point above ``hash64`` of it (wrapping around).  A new pair
        of lists after every change of membership (never changed in place)."""
        return self._points, self._owners

    def owner(self, key: bytes | str | None) -> str | None:
        """The worker owning ``key`` on the ring (ignoring loads and skips)."""
        if not self._points:
            return None
        i = bisect.bisect(self._points, hash64(_key_bytes(key)))
        return self._owners[i % len(self._owners)]

    def pick(self, key: bytes | str | None = None, *, loads: Mapping[str, int] | None = None,
             skip: Skip | None = None) -> str | None:
        if not self._points:
            return None
        owners = self._owners
        i = bisect.bisect(self._points, hash64(_key_bytes(key)))
        n = len(owners)
        first = owners[i % n]
        bound = self._bound(loads)
        if (skip is None or not skip(first)) and (bound is None or loads.get(first, 0) < bound):
            return first
        seen = {first}
        for j in range(i + 1, i + n):  # walk on to the next acceptable worker
            worker = owners[j % n]
            if worker in seen:
                continue
            seen.add(worker)
            if (skip is None or not skip(worker)) and \
                    (bound is None or loads.get(worker, 0) < bound):
                return worker
            if len(seen) == len(self._weights):
                break
        return None

    def _bound(self, loads: Mapping[str, int] | None) -> int | None:
        if self.load_factor is None or loads is None:
            return None
        total = sum(loads.get(w, 0) for w in self._weights) + 1  # counting this one
        return math.ceil((1 + self.load_factor) * total / len(self._weights))


def policy(name: str, **options: Any) -> Policy:
    """A policy by its CLI name: ``round-robin`` or ``consistent-hash``."""
    if name == RoundRobin.name:
        return RoundRobin(**options)
    if name == ConsistentHash.name:
        return ConsistentHash(**options)
    raise ValueError(f"unknown policy {name!r}: expected 'round-robin' or "
                     "'consistent-hash'")
