"""The consumer's slow path of reading: everything its hot path (the compiled
``shmbus._hotpath.Reader`` or its pure twin, :mod:`shmbus.reader`) hands over.

That is waiting for a message, padding, the first record after joining or resuming
(whose seq must be judged), records of an ``overwrite`` ring after a lap (jump to the
oldest intact record and count what was lost), checked reads the producer overwrote
while they were copied, and corruption (:class:`CorruptRing`, from :mod:`shmbus.ring`'s
checks).  Both hot paths share the cursor (``self._cur``) with it, so whichever path
took the previous message, this one continues where it stopped.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import hotpath, ring
from .errors import CorruptRing, RingNotFound, Timeout
from .layout import H_TAIL, H_WRITE, RECORD, RECORD_HEADER, REC_PAD

if TYPE_CHECKING:
    from .message import Message

__all__ = ["SlowPath"]

_LINK_CHECK = 1.0  # seconds of waiting between checks that the ring still exists
_unpack = RECORD.unpack_from


class SlowPath:
    """The slow path of :class:`~shmbus.Consumer` (a mixin: it works on the
    consumer's own fields)."""

    _cur: Any
    _message: Any

    def _take_next(self) -> Message | None:
        """The next message now, or None if there is none or it is corrupt (the next
        receive waits for it, or raises): a batch's unusual record."""
        try:
            return self._take(0)
        except (Timeout, CorruptRing):
            return None

    def _try_take(self) -> Message | None:
        try:
            return self._take(0)
        except Timeout:
            return None

    def _take(self, timeout: float | None) -> Message:
        """The next message (not releasing anything), in every case: waiting, padding,
        checked reads."""
        if self._closed:
            raise self._closed_error()
        try:
            w, data, name, cur = self._words, self._data, self.name, self._cur
            deadline = None
            while True:
                if self._closed:
                    raise self._closed_error()
                pos = cur.pos
                write = w[H_WRITE]
                lap_end = (pos | self._mask) + 1  # wcache: see shmbus.reader
                limit = cur.wcache = write if write < lap_end else lap_end
                if pos >= write:
                    if pos > write and not self._closed:  # never wait for it: it cannot come
                        raise ring.corrupt(name, pos, "a read position at or before the "
                                           f"write position {write}", f"position {pos}",
                                           "read position")
                    if deadline is None and timeout is not None:
                        deadline = time.monotonic() + timeout
                    self._wait(pos, deadline, timeout)
                    continue
                checked = pos < self._safe_from  # the producer may overwrite it now
                if checked and pos < w[H_TAIL]:  # lapped: to the oldest intact record
                    cur.pos, self._lapped = self._oldest(), True
                    continue
                idx = pos & self._mask
                if idx <= self._pad_limit:  # the usual record: checked as in recv
                    plen, klen, flags, seq, ts = _unpack(data, idx)
                    end = pos + ((RECORD_HEADER + 7 + klen + plen) & -8)
                    if not flags & REC_PAD and end <= limit and seq == cur.expect and \
                            not (self._lapped or self._loose):
                        start = idx + RECORD_HEADER
                        key = data[start:start + klen].tobytes() if klen else None
                        payload = data[start + klen:start + klen + plen]
                        if checked:
                            payload = memoryview(bytes(payload))
                            if w[H_TAIL] > pos:
                                continue  # overwritten while we copied it: tail
                        cur.expect, cur.pos = seq + 1, end
                        return self._message(payload, key, seq, ts, self, end, flags)
                msg = self._take_unusual(pos, write, checked)
                if msg is not None:
                    return msg
        except (ValueError, AttributeError) as e:  # a released view, a dropped field:
            raise self._closed_or(e) from None     # closed by another thread meanwhile?

    def _take_unusual(self, pos: int, write: int, checked: bool) -> Message | None:
        """The record at ``pos`` when it is not simply the next one: padding (skipped),
        a seq to judge (:meth:`_check_seq`), or corruption (:class:`CorruptRing`, from
        :mod:`shmbus.ring`'s checks).  None: look again (padding skipped, or a checked
        read that the producer overwrote meanwhile)."""
        cur = self._cur
        w, data, cap, name = self._words, self._data, self.capacity, self.name
        key = payload = None
        if checked:
            got = ring.read_checked(w, data, cap, pos, write, name=name)
            if got is None:
                return None  # overwritten while we copied it: try again from the tail
            rec, key, copy = got
            payload = memoryview(copy)
        else:
            rec = ring.read(data, pos, cap, write, name=name)
        if rec.flags & REC_PAD:
            cur.pos = pos + rec.size
            return None
        try:
            self._check_seq(rec)
        except CorruptRing:
            if checked and w[H_TAIL] > pos:
                return None  # what it compared with was overwritten meanwhile
            raise
        if payload is None:
            start = (pos & self._mask) + RECORD_HEADER
            klen = rec.key_length
            key = data[start:start + klen].tobytes() if klen else None
            payload = data[start + klen:start + klen + rec.length]
        end = cur.pos = pos + rec.size
        return self._message(payload, key, rec.seq, rec.timestamp_ns, self, end,
                             rec.flags)

    def _check_seq(self, rec: ring.Record) -> None:
        """Accept ``rec``'s seq and expect the next one, or raise :class:`CorruptRing`.

        A record carries one more than the one before it.  Exceptions: after a jump
        the tail proved (this consumer was lapped), a higher seq is a loss, counted in
        ``lost``; a first record whose seq nobody knows (after ``start="earliest"`` or
        resuming a cursor) must be plausible (:func:`ring.check_first_seq`).  The
        next seq a resumed cursor of an overwrite ring stored counts losses after a
        lap, but is no proof otherwise (the process may have died between storing it
        and its position)."""
        expect, seq = self._expect, rec.seq
        if expect is None or (self._loose and not self._lapped):
            ring.check_first_seq(self._words, self._data, self.capacity, rec,
                                 name=self.name)
        elif seq != expect:
            if not (self._lapped and seq > expect):
                ring.check_seq(rec, expect, name=self.name)  # raises
            self.lost += seq - expect
            self._words[self._lost_word] = self.lost
        self._lapped = self._loose = False
        self._expect = seq + 1

    def _seq_at(self, pos: int) -> int | None:
        """The seq of the message that will be published at ``pos`` if ``pos`` is the
        write position (so that losses before our first message are counted too, and
        the first one is checked); None if unknown (a corrupt ring is then reported by
        the first receive, not by the constructor)."""
        if pos == 0:
            return 0 if self._words[H_WRITE] == 0 else None
        try:
            rec = ring.last_record(self._words, self._data, self.capacity, name=self.name)
        except CorruptRing:
            return None
        return rec.seq + 1 if rec is not None and rec.pos + rec.size == pos else None

    def _oldest(self) -> int:
        """The oldest record boundary known, checked (the write position if none is
        known: then everything before it is gone).  Raises :class:`CorruptRing`."""
        return ring.oldest(self._words, self._data, self.capacity, self._shift,
                           name=self.name)

    def _wait(self, pos: int, deadline: float | None, timeout: float | None) -> None:
        w = self._words

        def ready() -> bool:
            return w[H_WRITE] > pos

        above = (self._seg.buf, H_WRITE, pos) if hotpath.compiled else None
        while True:
            step = time.monotonic() + _LINK_CHECK
            if self._sleeper.wait(ready, step if deadline is None else min(deadline, step),
                                  above):
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout(f"no message on ring {self.name!r} within {timeout} s",
                              name=self.name, timeout=timeout)
            if not self._seg.linked():  # waiting on a removed ring would never end
                raise RingNotFound(
                    f"ring {self.name!r} was removed (or replaced) while this consumer "
                    "waited on it; every message it held was received: open a new "
                    "Consumer if the ring is created again", name=self.name)
