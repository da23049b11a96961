"""The plain data the introspection functions return, as ``TypedDict``\\ s a type
checker knows: :func:`shmbus.list_rings` (:class:`RingSummary`), :func:`shmbus.inspect`
(:class:`RingInfo`), :func:`shmbus.list_locks` (:class:`LockInfo`),
:func:`shmbus.list_leases` (:class:`LeaseEntry`) and ``Lease.holder()``
(:class:`LeaseHolder`).  At run time they are plain dicts (JSON-ready)."""

from __future__ import annotations

from typing import Literal, TypedDict

__all__ = ["Alive", "RingSummary", "RingInfo", "ProducerInfo", "ConsumerInfo",
           "LockInfo", "LockHolderInfo", "LeaseHolder", "LeaseEntry"]

Alive = Literal["alive", "dead", "unknown"]  # shmbus.liveness.Liveness values


class _Named(TypedDict):
    name: str
    namespace: str


class RingSummary(_Named, total=False):
    """One ring of :func:`shmbus.list_rings`.  A ring that could not be read has only
    ``name``, ``namespace`` and ``error`` (one line); any other has every other key."""

    capacity: int
    on_full: Literal["block", "overwrite"]
    fill: float            # 0.0 .. 1.0
    messages: int          # messages ever published
    producer: ProducerInfo | None
    consumers: int         # slots with a process attached
    durable: int           # durable cursors
    max_lag_bytes: int
    error: str


class ProducerInfo(TypedDict):
    """The producer of a ring: its process, whether it lives, its epoch."""

    pid: int
    start_time: int
    alive: Alive
    epoch: int
    since_ns: int


class ConsumerInfo(TypedDict):
    """One consumer slot in use."""

    slot: int
    durable: str | None    # the durable name; None for an anonymous consumer
    pid: int               # 0: no process attached (a durable cursor at rest)
    alive: Alive | None    # None when no process is attached
    position: int          # its read position (bytes)
    lag_bytes: int
    next_seq: int | None   # None: unknown (nothing published there, or overwritten)
    lost: int
    lag_messages: int | None


class RingInfo(_Named):
    """Everything :func:`shmbus.inspect` says about a ring."""

    layout_version: int
    capacity: int
    on_full: Literal["block", "overwrite"]
    slot_count: int
    segment_size: int
    created_at_ns: int
    write: int
    tail: int
    fill: float
    messages: int
    oldest_seq: int | None
    producer: ProducerInfo | None
    consumers: list[ConsumerInfo]
    producer_waiting: bool  # the producer sleeps for room: a consumer holds it back


class LockHolderInfo(TypedDict):
    """A process holding (or waiting for) a lock."""

    pid: int
    mode: Literal["exclusive", "shared"]
    since: float | None     # time.time() when it took the lock, if recorded
    start_time: int | None
    waiting: bool


class _LockBase(TypedDict):
    name: str
    path: str
    holders: list[LockHolderInfo]


class LockInfo(_LockBase, total=False):
    """One lock file of :func:`shmbus.list_locks`; ``error`` (and no holders) for an
    entry that is not a lock file of ours."""

    error: str


class LeaseHolder(TypedDict):
    """A lease's record: its last token and holder (``Lease.holder()``)."""

    token: int
    pid: int
    start_time: int
    expires_ns: int        # CLOCK_MONOTONIC nanoseconds
    acquired_wall_ns: int
    ttl_ns: int
    pid_ns: int
    expires_in: float | None  # seconds; None when nobody holds it
    alive: Alive | None


class LeaseEntry(LeaseHolder):
    """One lease of :func:`shmbus.list_leases`."""

    name: str
