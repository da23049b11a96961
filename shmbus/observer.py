"""``Observer``: reads a ring without ever holding back its producer.

A :class:`~shmbus.Consumer` owns a slot, and in ``block`` mode the producer waits until
every live consumer has read what it would overwrite: a ``shmbus tail`` whose terminal
is not drained (or that was suspended with Ctrl-Z) would stop the producer.  An
observer takes no slot and writes nothing to the ring, so the producer never waits for
it; what it is too slow to read is overwritten, and it says so.

How it reads (the checked read of :mod:`shmbus.ring`): it loads the header's write
position, copies the record at its position, then loads the producer's tail again.
Data below the tail may be overwritten (``layout``: TAIL), so a copy whose start the
tail has passed is discarded, never shown (:func:`ring.read_checked`).  An observer
that finds its position below the tail was lapped: it jumps to the oldest intact record
(:func:`ring.oldest`, from the checkpoint table) and counts the messages it missed, by
seq, in ``skipped``.  Everything read is checked against the ring (lengths, positions,
padding, seqs one apart): a corrupt record raises :class:`CorruptRing`, never garbage,
and every call does a bounded amount of work, so a damaged ring never hangs it.

With no slot there is no wake-up semaphore either: :meth:`recv` polls the write
position, sleeping from 50 µs up to 5 ms between looks.  That suits inspection tools,
not a data path (use a Consumer there).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from . import layout, naming, ring
from .errors import Closed, RingNotFound, Timeout
from .layout import H_TAIL, H_WRITE, REC_PAD
from .segment import Segment

__all__ = ["Observer", "Observed"]

_STEPS = 64          # records (or jumps) looked at per try_recv: bounded work
_SLEEP_MIN = 50e-6
_SLEEP_MAX = 5e-3
_LINK_CHECK = 1.0    # how often a waiting observer checks that its ring still exists


@dataclass(frozen=True)
class Observed:
    """One message as an observer saw it: copies, valid for as long as you keep them.
    ``skipped`` is how many messages were overwritten, unseen, just before it."""

    seq: int
    key: bytes | None
    data: bytes
    timestamp_ns: int
    skipped: int = 0

    def __bytes__(self) -> bytes:
        return self.data


class Observer:
    """Reads ring ``name`` of ``namespace`` from the latest message (``start="latest"``)
    or the oldest one it still holds (``"earliest"``) without taking a consumer slot.

    ``try_recv()`` returns the next :class:`Observed` message or None, ``recv(timeout)``
    waits for one (raises :class:`Timeout`), iteration waits between messages.
    ``skipped`` counts messages the producer overwrote before they could be read.
    Raises :class:`RingNotFound`, :class:`CorruptRing`."""

    def __init__(self, name: str, *, start: str = "latest",
                 namespace: str | None = None) -> None:
        self._seg: Segment | None = None
        naming.check_name(name)
        if start not in ("latest", "earliest"):
            raise ValueError(f"start must be 'latest' or 'earliest', got {start!r}")
        self.name = name
        self.namespace = ns = naming.resolve_namespace(namespace)
        self._seg = seg = Segment.open(ns, name)
        self._words, self._data = seg.words, seg.data
        self.capacity = seg.capacity
        self._shift = layout.block_shift(seg.capacity)
        self.skipped = 0
        self._expect: int | None = None   # seq of the next record, once known
        self._lapped = False               # jumped over overwritten records
        try:
            self._pos = self._words[H_WRITE] if start == "latest" else self._oldest()
        except BaseException:
            self.close()
            raise

    # -- reading ------------------------------------------------------------------------

    def try_recv(self) -> Observed | None:
        """The next message if one is published, else None (also when the producer
        kept overwriting what this observer was about to read: call again)."""
        w, data, cap, name = self._live_words(), self._data, self.capacity, self.name
        for _ in range(_STEPS):
            pos, write = self._pos, w[H_WRITE]
            if pos >= write:
                if pos > write:
                    raise ring.corrupt(name, pos, "a read position at or before the "
                                       f"write position {write}", f"position {pos}",
                                       "read position")
                return None
            if pos < w[H_TAIL] or write - pos > cap:
                self._jump()
                continue
            got = ring.read_checked(w, data, cap, pos, write, name=name)
            if got is None:  # overwritten while we copied it
                self._jump()
                continue
            rec, key, payload = got
            self._pos = pos + rec.size
            if rec.flags & REC_PAD:
                continue
            missed = self._accept(rec)
            return Observed(rec.seq, key, payload, rec.timestamp_ns, missed)
        return None

    def recv(self, timeout: float | None = None) -> Observed:
        """The next message, waiting up to ``timeout`` seconds (None: forever).  Raises
        :class:`Timeout`, and :class:`RingNotFound` if the ring is removed meanwhile."""
        if timeout is not None and not (isinstance(timeout, (int, float))
                                        and math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f"timeout must be None or a finite number of seconds >= 0, "
                             f"got {timeout!r}")
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        next_check, delay = now + _LINK_CHECK, _SLEEP_MIN
        while True:
            msg = self.try_recv()
            if msg is not None:
                return msg
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise Timeout(f"no message on ring {self.name!r} within {timeout} s",
                              name=self.name, timeout=timeout)
            if self._words[H_WRITE] > self._pos:
                continue  # lapped again and again: keep reading, do not sleep
            if now >= next_check:
                self._check_linked()
                next_check = now + _LINK_CHECK
            pause = delay if deadline is None else min(delay, deadline - now)
            time.sleep(max(pause, 0.0))
            delay = min(delay * 2, _SLEEP_MAX)

    def __iter__(self):
        while True:
            yield self.recv()

    def _accept(self, rec: ring.Record) -> int:
        """Check ``rec``'s seq; return how many messages were skipped before it."""
        expect, missed = self._expect, 0
        if expect is None:
            ring.check_first_seq(self._words, self._data, self.capacity, rec,
                                 name=self.name)
        elif rec.seq != expect:
            if not (self._lapped and rec.seq > expect):
                ring.check_seq(rec, expect, name=self.name)  # raises
            missed = rec.seq - expect
            self.skipped += missed
        self._lapped = False
        self._expect = rec.seq + 1
        return missed

    def _jump(self) -> None:
        self._pos, self._lapped = self._oldest(), True

    def _oldest(self) -> int:
        return ring.oldest(self._words, self._data, self.capacity, self._shift,
                           name=self.name)

    def _live_words(self):
        if self._seg is None or self._seg.closed:
            raise Closed(f"observer of ring {self.name!r} is closed: open a new one",
                         name=self.name)
        return self._words

    def _check_linked(self) -> None:
        assert self._seg is not None
        if not self._seg.linked():
            raise RingNotFound(
                f"ring {self.name!r} was removed (or replaced) while it was observed: "
                "observe the new one", name=self.name, namespace=self.namespace)

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the ring (idempotent).  Observed messages are copies: they stay valid."""
        seg, self._seg = self._seg, None
        if seg is not None:
            self._words = self._data = None  # type: ignore[assignment]
            seg.close()

    def __enter__(self) -> "Observer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Observer {self.name!r} ns={self.namespace!r} position={self._pos} "
                f"skipped={self.skipped}>" if self._seg else f"<Observer {self.name!r} closed>")
