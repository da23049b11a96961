"""Room in the ring for the producer: the gate, the tail, waiting for consumers.

The producer may overwrite data only below the tail, and in ``block`` mode moves the
tail only up to the *gate*: the lowest read position of any slot in use, cached and
rescanned (under the scan epoch that tells joining consumers which data is protected)
only when the cache says the ring is full, as the Disruptor's gating-sequence cache.
A blocked producer sleeps like a consumer and reclaims slots of dead consumers.
"""

from __future__ import annotations

import time

from . import naming, ring
from .errors import MessageTooLarge, RingNotFound, Timeout
from .layout import (H_COUNT, H_GATE, H_GENERATION, H_SCAN, H_TAIL, RECORD_HEADER,
                     S_READ, S_SLEEP, slot_word)
from .wait import Waker, fence

__all__ = ["Room"]

_RECLAIM_EVERY = 0.05  # seconds between liveness checks while blocked
LINK_CHECK_EVERY = 0.5  # seconds between checks that the ring was not removed


class Room:
    """The producer's methods that make room (a mixin of :class:`Producer`, whose
    state they use)."""

    def _reserve(self, size: int, klen: int, n: int, timeout: float | None,
                 deadline: float | None) -> int:
        """Make room for a record of ``size`` bytes at the write position, padding to
        the end of the data area first if it would wrap; return where it goes.

        Every send that does not fit below the cursor's limit comes here, and so does
        every send of a closed producer (or one with a claim open, or a fork's copy):
        their cursor's limit is 0, so the hot paths need no check of their own.
        Raises :class:`Closed` if the producer is closed (meanwhile, from another
        thread too), :class:`RingNotFound` if the ring was removed under it."""
        cur = self._cur
        try:
            if self._unusable:
                self._check_usable()
            if size > self._max_record:
                raise MessageTooLarge(
                    f"message of {n} bytes (key {klen} bytes) does not fit ring "
                    f"{self.name!r} of capacity {self.capacity}: the largest payload is "
                    f"{self._max_record - RECORD_HEADER - klen} bytes with this key; "
                    "create the ring with a larger capacity or split the message",
                    name=self.name, size=n, limit=self._max_record - RECORD_HEADER - klen)
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            pos = cur.write
            pad = ring.padding_at(pos, self.capacity, size)
            end = pos + pad + size
            if end > cur.room:
                self._make_room(end, deadline, timeout)
            if pad:
                ring.write_padding(self._data, pos, self.capacity)
                pos += pad
                cur.write = pos
            cp_next = cur.cp_next
            if pos >= cp_next:
                cp_next = cur.cp_next = ring.checkpoint(self._words, self._shift, cp_next,
                                                        pos)
            room = cur.room
            cur.limit = room if room < cp_next else cp_next
            return pos
        except (ValueError, AttributeError) as e:  # a released view, a dropped field:
            raise self._closed_or(e) from None     # closed by another thread meanwhile?

    def _check_linked(self, now: float) -> None:
        """Raise :class:`RingNotFound` if the ring was removed (or replaced) under this
        producer: what it sent would reach nobody.  Checked at most every
        ``LINK_CHECK_EVERY`` seconds, when the producer makes room (every
        ``capacity/16`` bytes written) or waits for it."""
        self._link_checked = now
        if not self._seg.linked():
            raise RingNotFound(
                f"ring {self.name!r} was removed (or replaced) while this producer was "
                "writing to it (`shmbus rm --force`, `shmbus.unlink`?): nobody can receive "
                "what it sends; close it and open a new Producer", name=self.name)

    def _make_room(self, end: int, deadline: float | None, timeout) -> None:
        """Move the tail so that ``end`` fits: by a chunk at a time (so this runs once
        per ``capacity/16`` bytes), and in ``block`` mode never past the gate."""
        need = end - self.capacity
        target = min(need + self._chunk, self._cur.write)
        if not self._overwrite:
            if self._gate < need:
                self._rescan()
                if self._gate < need:
                    self._wait_for_room(need, deadline, timeout)
            target = max(need, min(target, self._gate))
        w = self._words
        cur = self._cur
        w[H_COUNT] = cur.seq  # lets a successor recover the seq once LAST is behind
        w[H_TAIL] = target
        self._tail = target
        cur.room = room = target + self.capacity
        if not self._unusable:
            cur.limit = min(room, cur.cp_next)
        now = time.monotonic()
        if now - self._link_checked >= LINK_CHECK_EVERY:
            self._check_linked(now)

    def _rescan(self) -> None:
        """Recompute the gate (lowest read position of any slot in use) under the scan
        epoch protocol that lets new consumers know which data is protected."""
        w = self._words
        w[H_SCAN] += 1
        fence()
        if w[H_GENERATION] != self._gen:
            self._refresh_wakers()
        gate = self._cur.write
        for r_word in self._read_words:
            r = w[r_word]
            if r < gate:
                gate = r
        w[H_GATE] = gate
        w[H_SCAN] += 1
        self._gate = gate

    def _wait_for_room(self, need: int, deadline: float | None, timeout) -> None:
        def ready() -> bool:
            self._rescan()
            return self._gate >= need

        while True:
            if self._closed:
                raise self._closed_error()
            now = time.monotonic()
            if now - self._last_reclaim >= _RECLAIM_EVERY:
                self._last_reclaim = now
                with self._slots.lock():
                    self._slots.reclaim_dead(below=need)
                if self._closed:  # while we waited for the slots lock
                    raise self._closed_error()
                if ready():
                    return
            step = now + _RECLAIM_EVERY
            if self._sleeper.wait(ready, step if deadline is None else min(deadline, step)):
                if self._closed:
                    raise self._closed_error()
                return
            self._check_linked(time.monotonic())
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(
                    f"ring {self.name!r} is full: no room within {timeout} s because "
                    f"{self._laggards(need)} not read far enough; consume faster, use a "
                    "larger capacity or on_full='overwrite'", name=self.name,
                    timeout=timeout)

    def _laggards(self, need: int) -> str:
        """Who holds the producer back, furthest behind first (bytes unread of what
        was written), so the first one named is the one to look at."""
        behind = sorted((info for info in map(self._slots.info, self._slots.in_use())
                         if info.read < need), key=lambda info: info.read)
        parts = []
        for info in behind[:3]:
            who = f"durable {info.durable!r}" if info.durable else "consumer"
            state = "detached" if not info.pid else f"pid {info.pid}"
            parts.append(f"{who} in slot {info.index} ({state}, "
                         f"{self._write - info.read} bytes behind)")
        if len(behind) > 3:
            parts.append(f"{len(behind) - 3} more")
        return ", ".join(parts) + (" has" if len(behind) == 1 else " have") \
            if parts else "consumers have"

    def _refresh_wakers(self) -> None:
        w = self._words
        self._gen = w[H_GENERATION]
        wake = []
        in_use = self._slots.in_use()
        self._read_words = tuple(slot_word(i) + S_READ for i in in_use)
        for i in in_use:
            waker = self._wakers.get(i)
            if waker is None:
                waker = self._wakers[i] = Waker(naming.consumer_semaphore_name(
                    self.namespace, self.name, i))
            wake.append((slot_word(i) + S_SLEEP, waker))
        self._wake = tuple(wake)
