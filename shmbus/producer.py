"""``Producer``: the single writer of a ring.

One live producer per ring, enforced by the ring's ``@producer`` FileLock (released by
the kernel when the producer dies).  A new producer continues the sequence where the
last one stopped, even after kill -9: positions and the last record are recovered from
the header (see :func:`shmbus.ring.next_seq_after`).

Writing a record: make room (advance the tail over old records, which in ``block`` mode
needs every live consumer to have read them), write header, key and payload, then store
the write position: that one aligned 8-byte store publishes the record.  The producer
caches the lowest read position it must honour (the *gate*) and rescans the slot table
only when the cache says the ring is full (the Disruptor's gating-sequence cache; see
:mod:`shmbus.room`).
"""

from __future__ import annotations

import time
from operator import attrgetter
from typing import TYPE_CHECKING, Iterable

from . import hotpath, layout, liveness, naming, ring
from .arrays import send_array
from .bulk import send_many
from .claim import Claim
from .errors import LayoutMismatch, RingBusy, ShmbusError
from .handle import Handle
from .objects import ObjectSender
from .layout import (H_COUNT, H_GENERATION, H_LAST, H_PRODUCER_EPOCH, H_PRODUCER_PID,
                     H_PRODUCER_SINCE, H_PRODUCER_SLEEP, H_PRODUCER_START, H_SCAN,
                     H_SLEEPERS, H_TAIL, H_WRITE, S_READ, slot_word)
from .lock import FileLock
from .room import Room
from .sequencer import bind
from .segment import Segment
from .segment import unlink as _unlink_segment
from .slots import SlotTable
from .wait import Sleeper, Waker, strategy

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Buffer, Self
    from .choices import Payload

    from .choices import OnFull, WaitName
    from .wait import WaitStrategy

__all__ = ["Producer"]

_ON_FULL = ("block", "overwrite")


class Producer(ObjectSender, Room, Handle):
    """The single producer of ring ``name``; opens it, or creates it when
    ``capacity`` (bytes, rounded up to a power of two) is given.

    ``on_full="block"``: ``send`` waits (up to its ``timeout``) until every live
    consumer and durable cursor has read what would be overwritten.
    ``on_full="overwrite"``: never waits; lapped consumers lose the oldest messages.
    The mode is part of the ring (consumers hand out zero-copy data only in ``block``
    mode), so opening a ring with the other mode raises :class:`LayoutMismatch`.

    Raises :class:`RingBusy` when another live process is the ring's producer,
    :class:`RingNotFound` when ``create=False`` (or no capacity) and it does not exist.

    ``close()`` may be called from any thread: a ``send`` blocked on a full ring wakes
    and raises :class:`Closed`, as does every later call.  A producer belongs to the
    process that opened it: in a forked child it raises :class:`Closed` (a copy would
    send with the parent's seq over the parent's messages).
    """

    _kind = "producer"

    def __init__(self, name: str, *, capacity: int | None = None, create: bool = True,
                 on_full: OnFull = "block", namespace: str | None = None,
                 wait: WaitName | WaitStrategy = "adaptive",
                 max_consumers: int | None = None) -> None:
        self._closed = True
        naming.check_name(name)
        self.namespace = ns = naming.resolve_namespace(namespace)
        self.name = name
        if on_full not in _ON_FULL:
            raise ValueError(f"on_full must be one of {_ON_FULL}, got {on_full!r}")
        if max_consumers is not None and (
                isinstance(max_consumers, bool) or not isinstance(max_consumers, int)
                or not 1 <= max_consumers <= layout.MAX_SLOTS):
            raise ValueError(f"max_consumers must be 1..{layout.MAX_SLOTS}, "
                             f"got {max_consumers!r}")
        self.on_full = on_full
        how = strategy(wait)
        cap = layout.round_capacity(capacity) if capacity is not None else None
        flags = layout.FLAG_OVERWRITE if on_full == "overwrite" else 0
        self._lock = FileLock(naming.ring_lock_name(name, "producer"), namespace=ns,
                              reentrant=False, _internal=True)
        if not self._lock.try_acquire():
            holders = [h for h in self._lock.holders() if not h.waiting]
            pid = holders[0].pid if holders else None
            raise RingBusy(
                f"ring {name!r} already has a live producer (pid {pid}); a ring has one "
                "producer at a time: stop that process, or publish to another ring",
                name=name, pid=pid)
        try:
            self._seg = seg = Segment.open(
                ns, name, capacity=cap, flags=flags, create=create,
                slot_count=layout.DEFAULT_SLOTS if max_consumers is None else max_consumers)
            try:
                self._check_compatible(cap, flags, max_consumers)
                self._take_over(how)
            except BaseException:
                cur = getattr(self, "_cur", None)
                if cur is not None:
                    cur.release()  # the compiled cursor holds the mapping
                seg.close()
                raise
        except BaseException:
            self._lock.release()
            raise
        self._opened()

    def _check_compatible(self, cap: int | None, flags: int,
                          max_consumers: int | None) -> None:
        h = self._seg.header
        if max_consumers is not None and h["slot_count"] != max_consumers:
            raise LayoutMismatch(
                f"ring {self.name!r} exists with {h['slot_count']} consumer slots, not "
                f"max_consumers={max_consumers}: open it without max_consumers= (or with "
                f"{h['slot_count']}), or remove it first (`shmbus rm {self.name}`)",
                name=self.name, expected=max_consumers, found=h["slot_count"])
        if cap is not None and h["capacity"] != cap:
            raise LayoutMismatch(
                f"ring {self.name!r} exists with capacity {h['capacity']} bytes, not "
                f"{cap}: open it without capacity= (or with {h['capacity']}), or remove "
                f"it first (`shmbus rm {self.name}`)", name=self.name,
                expected=cap, found=h["capacity"])
        if (h["flags"] & layout.FLAG_OVERWRITE) != flags:
            have = "overwrite" if h["flags"] & layout.FLAG_OVERWRITE else "block"
            raise LayoutMismatch(
                f"ring {self.name!r} was created with on_full={have!r}, not "
                f"{self.on_full!r}: open it with on_full={have!r}, or remove it first",
                name=self.name, expected=self.on_full, found=have)

    def _take_over(self, how) -> None:
        seg = self._seg
        w = self._words = seg.words
        self._data = seg.data
        self.capacity = cap = seg.capacity
        self._mask = cap - 1
        self._shift = layout.block_shift(cap)
        self._max_record = layout.max_record(cap)
        self._chunk = max(cap >> 4, 8)
        self._overwrite = seg.overwrite
        self._slots = SlotTable(seg)
        write, tail = w[H_WRITE], w[H_TAIL]
        self._tail = tail
        seq = ring.next_seq_after(seg.data, cap, write, w[H_LAST], tail, w[H_COUNT])
        w[H_COUNT] = seq
        cp_next = ring.first_unwritten_checkpoint(w, self._shift, write)
        self._cur, self._pure_send = bind(self, write, seq, tail + cap, cp_next)
        if w[H_SCAN] & 1:  # the previous producer died while scanning
            w[H_SCAN] += 1
        me = liveness.current()
        w[H_PRODUCER_PID] = me.pid
        w[H_PRODUCER_START] = me.start_time
        w[layout.H_PRODUCER_PID_NS] = liveness.pid_namespace()
        w[H_PRODUCER_SINCE] = time.time_ns()
        w[H_PRODUCER_EPOCH] += 1
        self.epoch = w[H_PRODUCER_EPOCH]
        self._sleeper = Sleeper(w, H_PRODUCER_SLEEP,
                                naming.producer_semaphore_name(seg.namespace, seg.ring), how)
        self._gen = -1
        self._wake: tuple = ()
        self._read_words: tuple = ()
        self._wakers: dict[int, Waker] = {}
        self._claim_open = False
        self._last_reclaim = 0.0
        self._link_checked = time.monotonic()
        self._rescan()
        self._fast_send = self._cur.send if hotpath.compiled else self._pure_send
        self._unusable = False
        self.send = self._fast_send

    # The cursor's fields, for the slow paths (room, claim, arrays, forward).
    _write = property(attrgetter("_cur.write"),
                      lambda self, v: setattr(self._cur, "write", v))
    _seq = property(attrgetter("_cur.seq"), lambda self, v: setattr(self._cur, "seq", v))
    _limit = property(attrgetter("_cur.limit"),
                      lambda self, v: setattr(self._cur, "limit", v))
    _room = property(attrgetter("_cur.room"), lambda self, v: setattr(self._cur, "room", v))
    _cp_next = property(attrgetter("_cur.cp_next"),
                        lambda self, v: setattr(self._cur, "cp_next", v))

    def _set_unusable(self, unusable: bool) -> None:
        """While a claim is open (or once closed, or in a forked child), the cursor's
        limit is 0: every send, through whatever reference to it, reaches
        :meth:`_reserve`, which refuses it with a clear error; the hot paths never
        check."""
        self._unusable = unusable
        self._cur.limit = 0 if unusable else min(self._room, self._cp_next)

    # -- sending ----------------------------------------------------------------------

    def send(self, data: Payload, key: str | Buffer | None = None, *,
             timeout: float | None = None) -> int:
        """Publish one message (bytes or any contiguous buffer, e.g. a numpy array) with
        an optional key (str or bytes); return its seq.  In ``block`` mode waits up to
        ``timeout`` seconds (None: forever) for room, then raises :class:`Timeout`.
        Raises :class:`MessageTooLarge` for a message that can never fit."""
        # Each instance shadows this method with the send built by sequencer.bind.
        return self.__dict__["send"](data, key, timeout=timeout)

    def send_many(self, messages: Iterable[Payload], *,
                  keys: Iterable[str | Buffer | None] | None = None,
                  timeout: float | None = None) -> range:
        """Publish several messages (each bytes or any contiguous buffer) with one
        store of the write position (and one wake-up); return the range of their
        seqs.  ``keys``, if given, pairs one key (None, str or bytes) with each
        message.  They all carry the same ``timestamp_ns``, the time of the call.
        If the ring fills up midway, what was written so far is published before
        waiting for room (up to ``timeout`` seconds for the whole batch, then
        :class:`Timeout`, with the messages before it sent: ``seq`` says how many).
        A ``keys`` of another length than ``messages`` is a ValueError, before
        anything is sent."""
        return send_many(self, messages, keys, timeout)

    def _send_many(self, messages: Iterable, keys: Iterable | None = None,
                   timeout: float | None = None, flags: int = 0,
                   stamps: Iterable[int] | None = None) -> range:
        """:meth:`send_many` for relays (the balancer): each record gets ``flags``
        (e.g. a redelivery count) and, if ``stamps`` is given, its own timestamp (the
        original message's) instead of the time of the call."""
        return send_many(self, messages, keys, timeout, flags, stamps)

    def send_array(self, array: npt.ArrayLike, *, timeout: float | None = None) -> range:
        """Publish one message per element (along the first axis) of the numpy array
        ``array`` (e.g. a structured array of records): each carries that element's
        bytes, no key, and the call's timestamp.  Far cheaper per message than
        ``send_many`` (numpy writes the records of a batch at once); read them with
        :meth:`Consumer.recv_array`.  Waits for room like ``send_many``; returns the
        range of their seqs."""
        return send_array(self, array, timeout)

    def claim(self, size: int, key: str | Buffer | None = None, *,
              timeout: float | None = None) -> Claim:
        """Reserve room for a ``size``-byte message and return a context manager whose
        value is a writable memoryview of exactly ``size`` bytes inside the ring: fill
        it in place (zero copies); it is published when the ``with`` block exits without
        an exception, and abandoned (never seen by consumers) otherwise."""
        return Claim.open(self, size, key, timeout)

    def _publish(self, end: int, last: int) -> None:
        w = self._words
        w[H_WRITE] = end
        w[H_LAST] = last
        if w[H_SLEEPERS]:
            self._wake_sleepers()

    def _wake_sleepers(self) -> None:
        """Post the semaphore of every consumer that sleeps (the sleeper bytes said
        some may); re-read the slot table first if it changed.  Quiet if the producer
        was closed meanwhile (another thread): the message is published, and a send
        that raised now would be retried and sent twice."""
        try:
            w = self._words
            if w[H_GENERATION] != self._gen:
                self._refresh_wakers()
            for word, waker in self._wake:
                epoch = w[word]
                if epoch & 1:
                    waker.wake(epoch)
        except (ValueError, AttributeError):
            if not self._closed:
                raise

    # -- lifetime ---------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """The seq the next message will carry."""
        return self._seq

    @property
    def position(self) -> int:
        """The write position: the byte position just after the last message sent."""
        return self._write

    def read_position(self, slot: int) -> int:
        """Consumer slot ``slot``'s read position (what it has released), e.g. to count
        what a consumer still holds."""
        return self._words[slot_word(slot) + S_READ]

    def unreleased(self, slot: int) -> int:
        """How many messages sent so far consumer slot ``slot`` has not released."""
        seq = ring.seq_at(self._data, self.capacity, self.read_position(slot), self._write)
        return 0 if seq is None else self._seq - seq

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise self._closed_error()
        if self._claim_open:
            raise ShmbusError(
                f"a claim on ring {self.name!r} is open: finish its `with` block before "
                "sending again", name=self.name)

    def close(self) -> None:
        """Give up the ring (idempotent, from any thread: a ``send`` blocked on a full
        ring wakes with :class:`Closed`): it stays, with its messages, for consumers
        and the next producer."""
        if self.forked or not self._mark_closed():
            return  # a forked child never owned the parent's producer
        self._sever()
        try:
            self._sleeper.close()  # wakes a blocked send; freed once it has left
            self._words[H_COUNT] = self._seq
            self._words[H_PRODUCER_PID] = 0
            for waker in list(self._wakers.values()):  # a send may add one meanwhile
                waker.close()
        finally:
            self._cur.release()
            del self._words, self._data
            self._seg.close()
            self._lock.release()

    def _sever(self) -> None:
        self._set_unusable(True)
        self.send = self._refuse

    def unlink(self) -> None:
        """Close, then remove the ring, its semaphores and lock files."""
        self.close()
        _unlink_segment(self.namespace, self.name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"seq={self._seq}"
        return f"<Producer {self.name!r} ns={self.namespace!r} {self.on_full} {state}>"
