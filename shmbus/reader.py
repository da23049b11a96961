"""``Reader``: a consumer's read cursor (after the Disruptor's SequenceBarrier), and the
pure-Python receive calls built on it.

``pos`` is the position of the next message to receive, ``committed`` the read
position last stored in the consumer's slot (what it has released: the producer may
overwrite below it), ``wcache`` the producer's write position as last read, clipped to
the end of ``pos``'s lap of the data area (a record ending at or before it is
published and inside the ring), and ``expect`` the seq the next record must carry
(None until known); ``lapped`` and ``loose`` say that the consumer's slow path must
judge the next seq (see ``Consumer._check_seq``).  :meth:`Reader.commit` is the one
way to release: it stores the position (and, on ``overwrite`` rings, the next seq
before it), releases the data views of the messages released, and wakes a producer
that sleeps for room.

The hot path reads a record that fits below ``wcache`` and carries ``expect``;
everything else goes to the consumer's slow path (``Consumer._take``), which updates
this same object.  This module is the pure-Python twin of ``shmbus/csrc/reader.c``
(``shmbus._hotpath.Reader``): same fields, same ``commit``, and :func:`bind` builds the
same ``recv``, ``recv_many`` and ``try_recv``, so the Python slow paths serve both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, cast

from .arrays import BULK, take_uniform
from .errors import Timeout
from .layout import H_PRODUCER_SLEEP, H_WRITE, RECORD, RECORD_HEADER
from .message import PyMessage

if TYPE_CHECKING:
    from .consumer import Consumer

__all__ = ["Reader", "bind"]


class Reader:
    __slots__ = ("pos", "committed", "wcache", "expect", "lapped", "loose", "kept",
                 "_words", "_read_word", "_next_word", "_wake")

    def __init__(self, pos: int, words: Any, read_word: int, next_word: int,
                 wake: Callable[[int], object]) -> None:
        self.pos = self.committed = pos
        self.wcache = 0
        self.expect: int | None = None
        self.lapped = self.loose = False
        self.kept: list[PyMessage] = []  # messages whose data view was handed out
        self._words, self._read_word, self._next_word = words, read_word, next_word
        self._wake = wake

    def commit(self, end: int, next_seq: int | None = None) -> None:
        """Release every message that ends at or before ``end`` (nothing if ``end`` is
        not past ``committed``); ``next_seq`` is the seq of the message after it, if
        known (overwrite rings keep it: stored before the position, so a crash between
        the two stores under-counts a later loss rather than inventing one)."""
        if end <= self.committed:
            return
        w = self._words
        if self._next_word and next_seq is not None:
            w[self._next_word] = next_seq + 1
        w[self._read_word] = end
        self.committed = end
        if self.kept:
            self.release_kept(end)
        if w[H_PRODUCER_SLEEP] & 1:
            self._wake(w[H_PRODUCER_SLEEP])

    def release_kept(self, end: int) -> None:
        """Release (``memoryview.release()``) the data views handed out of messages
        that end at or before ``end``.  A view with exports of its own (a numpy array
        made from it) cannot be released: it stays the caller's to drop."""
        kept, stay = self.kept, []
        if end >= self.pos:  # all of them (recv, recv_many, close): no end to compare
            self.kept = stay
            try:
                for msg in kept:
                    msg[0].release()
            except BufferError:  # one is held by an export: release the others
                _release_each(kept)
            return
        for msg in kept:
            if msg[5] <= end:
                try:
                    msg[0].release()
                except BufferError:
                    pass
            else:
                stay.append(msg)
        self.kept = stay

    def release(self) -> None:
        """Release every data view handed out (the compiled twin also lets go of the
        segment)."""
        self.release_kept((1 << 64) - 1)

    def __repr__(self) -> str:
        return (f"<Reader pos={self.pos} committed={self.committed} "
                f"wcache={self.wcache} expect={self.expect}>")


def _release_each(kept: list[PyMessage]) -> None:
    for msg in kept:
        try:
            msg[0].release()
        except BufferError:
            pass


def bind(c: Consumer) -> tuple[Callable[..., Any], Callable[..., Any], Callable[[], Any]]:
    """The pure-Python ``recv``, ``recv_many`` and ``try_recv`` of consumer ``c``: the
    hot path keeps what does not change in closure cells and leaves every unusual case
    (waiting, padding, checked reads) to ``c._take``.  Every record of an overwrite
    ring is a checked read (``c._take``)."""
    me, cur = c, c._cur
    words, data = c._words, c._data
    mask, pad_limit, safe_from = c._mask, c._pad_limit, c._safe_from
    read_word, wake_producer = c._read_word, c._producer_waker.wake
    closed_or = c._closed_or
    # On the pure path the slow path hands out PyMessage too (c._message).
    take = cast("Callable[[float | None], PyMessage]", c._take)
    take_next = cast("Callable[[], PyMessage | None]", c._take_next)
    unpack = RECORD.unpack_from
    new = tuple.__new__

    def recv_checked(timeout: float | None = None) -> PyMessage:
        if cur.pos != cur.committed:
            cur.commit(cur.pos, cur.expect)
        return take(timeout)

    def recv(timeout: float | None = None) -> PyMessage:
        try:
            pos = cur.pos
            if pos != cur.committed:  # release the previous message (Reader.commit)
                words[read_word] = pos
                cur.committed = pos
                kept = cur.kept
                if kept:  # the previous message's data view (Reader.release_kept)
                    cur.kept = []
                    try:
                        for msg in kept:
                            msg[0].release()
                    except BufferError:  # held by an export: release the others
                        _release_each(kept)
                if words[H_PRODUCER_SLEEP] & 1:
                    wake_producer(words[H_PRODUCER_SLEEP])
            wcache = cur.wcache  # see the module docstring
            if pos >= wcache:
                write, lap_end = words[H_WRITE], (pos | mask) + 1
                wcache = cur.wcache = write if write < lap_end else lap_end
                if pos >= wcache:
                    return take(timeout)
            idx = pos & mask
            if pos < safe_from or idx > pad_limit:
                return take(timeout)
            plen, klen, flags, seq, ts = unpack(data, idx)
            end = pos + ((RECORD_HEADER + 7 + klen + plen) & -8)
            # Padding, flags, a size the ring cannot hold, a seq out of turn: _take
            # skips, checks, or raises CorruptRing.
            if flags or end > wcache or seq != cur.expect:
                return take(timeout)
            start = idx + RECORD_HEADER
            if klen:
                key = data[start:start + klen].tobytes()
                start += klen
            else:
                key = None
            cur.expect = seq + 1
            cur.pos = end
            return new(PyMessage, (data[start:start + plen], key, seq, ts, me, end, 0, cur))
        except ValueError as e:  # a released view: closed by another thread?
            raise closed_or(e) from None

    def recv_many(max_messages: int, timeout: float | None = None) -> list[PyMessage]:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages!r}")
        try:
            if cur.pos != cur.committed:
                cur.commit(cur.pos, cur.expect)
            batch = [take(timeout)]
            append = batch.append
            pos, wcache = cur.pos, cur.wcache
            if max_messages > BULK and pos >= safe_from and not batch[0][6]:
                more = take_uniform(me, batch[0], pos, max_messages - 1)
                if more:  # messages of the first one's size, read with numpy
                    batch += more
                    pos, wcache = cur.pos, cur.wcache
            expect = cur.expect
            for _ in range(max_messages - len(batch)):
                if pos >= wcache:  # see the module docstring
                    write, lap_end = words[H_WRITE], (pos | mask) + 1
                    wcache = cur.wcache = write if write < lap_end else lap_end
                    if pos >= wcache:
                        break
                idx = pos & mask
                if pos < safe_from or idx > pad_limit:
                    flags = 1
                else:
                    plen, klen, flags, seq, ts = unpack(data, idx)
                    size = (RECORD_HEADER + 7 + klen + plen) & -8
                    if pos + size > wcache or seq != expect:
                        flags = 1
                if flags:  # unusual (padding, checked read, corrupt): _take decides
                    cur.pos, cur.expect = pos, expect
                    msg = take_next()
                    pos, wcache, expect = cur.pos, cur.wcache, cur.expect
                    if msg is None:  # the next call waits, or raises
                        break
                    append(msg)
                    continue
                start = idx + RECORD_HEADER
                if klen:
                    key = data[start:start + klen].tobytes()
                    start += klen
                else:
                    key = None
                pos += size
                expect = seq + 1
                append(new(PyMessage,
                           (data[start:start + plen], key, seq, ts, me, pos, 0, cur)))
            cur.pos, cur.expect = pos, expect
            return batch
        except ValueError as e:  # a released view: closed by another thread?
            raise closed_or(e) from None

    receive = recv_checked if c._next_word else recv

    def try_recv() -> PyMessage | None:
        try:
            pos = cur.pos
            if pos == words[H_WRITE] and not me._closed:  # nothing published: no wait
                if pos != cur.committed:
                    cur.commit(pos, cur.expect)
                return None
            return receive(0)
        except Timeout:
            return None
        except ValueError as e:  # a released view: closed by another thread?
            raise closed_or(e) from None

    return receive, recv_many, try_recv
