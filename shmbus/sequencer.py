"""``Sequencer``: the producer's cursor (after the Disruptor's SingleProducerSequencer).

``write`` is where the next record goes (the end of the last one published), ``seq``
the seq it will carry, ``room`` how far records may end without making room (the
tail plus the capacity), ``cp_next`` the start of the next checkpoint block to record,
and ``limit`` how far records may be written without either: ``min(room, cp_next)``,
or 0 while every send must take the slow path (closed, claimed, forked).  The hot path
writes a record below ``limit`` that does not wrap and stores ``write``; everything
else goes to the slow path (:mod:`shmbus.room`), which updates this same object.  (The
compiled twin also records a checkpoint itself when one is due and there is room.)

This is the pure-Python twin of ``shmbus._hotpath.Sequencer`` (see
:mod:`shmbus.hotpath`): same fields, so the Python slow paths serve both.  The
compiled one also writes batches (``send_many``: :mod:`shmbus.bulk`) and forwards
records (``forward``: :mod:`shmbus.forward`) itself.  :func:`bind` builds a
producer's cursor, of the path that runs, with its pure-Python ``send``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from . import hotpath, layout
from .layout import H_LAST, H_SLEEPERS, H_WRITE, RECORD, RECORD_HEADER
from .payload import as_bytes_view, key_bytes

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["Sequencer", "bind"]


class Sequencer:
    __slots__ = ("write", "seq", "limit", "room", "cp_next")

    def __init__(self, write: int, seq: int, room: int, cp_next: int) -> None:
        self.write, self.seq, self.room, self.cp_next = write, seq, room, cp_next
        self.limit = min(room, cp_next)

    def release(self) -> None:
        """Nothing to let go of (the compiled twin holds the segment)."""

    def __repr__(self) -> str:
        return f"<Sequencer write={self.write} seq={self.seq} limit={self.limit}>"


def bind(p: Producer, write: int, seq: int, room: int, cp_next: int) -> tuple:
    """Build producer ``p``'s cursor and pure-Python ``send``: the hot path keeps
    what does not change in closure cells (each saves an attribute lookup per
    message) and leaves waiting, wrapping and wake-ups to methods.  With the
    compiled hot path the cursor is a ``shmbus._hotpath.Sequencer``, whose
    ``send`` hands every case it does not take to this one."""
    me = p
    data_area, words = p._data, p._words
    mask, cap, max_record = p._mask, p.capacity, p._max_record
    pack, now = RECORD.pack_into, time.monotonic_ns

    def send(data, key=None, *, timeout: float | None = None) -> int:
        if type(data) is not bytes:
            data = as_bytes_view(data)
        if key is None:
            kb, klen = b"", 0
        else:
            kb = key_bytes(key)
            klen = len(kb)
        n = len(data)
        size = (RECORD_HEADER + 7 + klen + n) & -8
        pos = cur.write
        idx = pos & mask
        # One test covers wrapping, a full ring, a checkpoint due, and a producer
        # that is closed, claimed or forked (its limit is 0): see Room._reserve.
        if idx + size > cap or pos + size > cur.limit or size > max_record:
            pos = me._reserve(size, klen, n, timeout, None)
            idx = pos & mask
        seq = cur.seq
        try:
            pack(data_area, idx, n, klen, 0, seq, now())
            start = idx + RECORD_HEADER
            if klen:
                data_area[start:start + klen] = kb
                start += klen
            data_area[start:start + n] = data
            cur.seq = seq + 1
            end = cur.write = pos + size
            words[H_WRITE] = end
            words[H_LAST] = pos
            sleepers = words[H_SLEEPERS]
        except ValueError as e:  # a released view: closed by another thread?
            raise me._closed_or(e) from None
        if sleepers:
            me._wake_sleepers()
        return seq

    if hotpath.compiled:
        cur = hotpath.native.Sequencer(
            segment=p._seg.buf, data_offset=p._seg.data_offset, capacity=cap,
            max_record=max_record, write_word=H_WRITE, last_word=H_LAST,
            sleepers_word=H_SLEEPERS, checkpoints_word=layout.H_CHECKPOINTS,
            shift=p._shift, write=write, seq=seq, limit=min(room, cp_next),
            room=room, cp_next=cp_next, fallback=send, wake=p._wake_sleepers,
            reserve=p._reserve)
    else:
        cur = Sequencer(write, seq, room, cp_next)
    return cur, send
