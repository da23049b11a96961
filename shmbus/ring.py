"""Record framing on the byte ring: placing, padding, walking, checkpoints, recovery.

Positions are monotonically increasing byte offsets; the index into the data area is
``pos & (capacity - 1)``.  These helpers serve the slow paths (wrap-around, finding the
oldest intact record, recovery after a crash, inspection); the producer and consumer
inline the common case of their hot path with the same constants from
:mod:`shmbus.layout`.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

from .layout import CHECKPOINTS, H_CHECKPOINTS, RECORD, RECORD_HEADER, REC_PAD, record_size

__all__ = ["Record", "padding_at", "write_padding", "read", "walk", "seq_at", "checkpoint",
           "checkpoint_strided",
           "first_unwritten_checkpoint", "find_boundary", "next_seq_after"]

_unpack = RECORD.unpack_from
_pack = RECORD.pack_into
_CP_MASK = CHECKPOINTS - 1


class Record(NamedTuple):
    pos: int           # position of the record header
    length: int        # payload bytes
    key_length: int
    flags: int
    seq: int
    timestamp_ns: int
    size: int          # bytes the record occupies (padding: up to the end)


def padding_at(pos: int, capacity: int, size: int) -> int:
    """Bytes of padding needed before a record of ``size`` bytes written at ``pos`` so
    that it does not wrap (0 if it fits before the end)."""
    idx = pos & (capacity - 1)
    return capacity - idx if idx + size > capacity else 0


def write_padding(data: memoryview, pos: int, capacity: int) -> None:
    """Mark ``pos`` up to the end of the data area as padding."""
    idx = pos & (capacity - 1)
    if capacity - idx >= RECORD_HEADER:
        _pack(data, idx, capacity - idx - RECORD_HEADER, 0, REC_PAD, 0, 0)


def read(data: memoryview, pos: int, capacity: int) -> Record:
    """The record (or padding) at ``pos``."""
    idx = pos & (capacity - 1)
    rest = capacity - idx
    if rest < RECORD_HEADER:
        return Record(pos, 0, 0, REC_PAD, 0, 0, rest)
    length, klen, flags, seq, ts = _unpack(data, idx)
    if flags & REC_PAD:
        return Record(pos, 0, 0, REC_PAD, 0, 0, rest)
    return Record(pos, length, klen, flags, seq, ts, record_size(klen, length))


def walk(data: memoryview, capacity: int, pos: int, end: int) -> Iterator[Record]:
    """Every record (padding included) from ``pos`` up to ``end``; ValueError on a
    record whose size is impossible."""
    while pos < end:
        rec = read(data, pos, capacity)
        if rec.size <= 0 or rec.size > capacity or pos + rec.size > end:
            raise ValueError(f"corrupt record at position {pos}: size {rec.size}")
        yield rec
        pos += rec.size


def seq_at(data: memoryview, capacity: int, pos: int, write: int) -> int | None:
    """The seq of the first message at or after ``pos`` (skipping padding), None if
    none is published before ``write``."""
    while pos < write:
        rec = read(data, pos, capacity)
        if not rec.flags & REC_PAD:
            return rec.seq
        pos += rec.size
    return None


def checkpoint(words: memoryview, shift: int, cp_next: int, pos: int) -> int:
    """Record that a record starts at ``pos`` in every block from the one starting at
    ``cp_next`` up to ``pos``'s block; return the start of the next block."""
    block = pos >> shift
    for b in range(cp_next >> shift, block + 1):
        words[H_CHECKPOINTS + (b & _CP_MASK)] = pos
    return (block + 1) << shift


def checkpoint_strided(words: memoryview, shift: int, cp_next: int, pos: int, end: int,
                       stride: int) -> int:
    """:func:`checkpoint` for records of ``stride`` bytes each from ``pos`` to ``end``:
    every one that starts in a new block is recorded; return the new ``cp_next``."""
    while cp_next < end:
        record = pos + -(-(cp_next - pos) // stride) * stride  # first at or after it
        if record >= end:
            break
        cp_next = checkpoint(words, shift, cp_next, record)
    return cp_next


def first_unwritten_checkpoint(words: memoryview, shift: int, write: int) -> int:
    """Where a producer taking over at ``write`` must write its next checkpoint."""
    block = write >> shift
    entry = words[H_CHECKPOINTS + (block & _CP_MASK)]
    if block << shift <= entry <= write:
        return (block + 1) << shift
    return block << shift


def find_boundary(words: memoryview, shift: int, tail: int, write: int) -> int | None:
    """A record boundary at or after ``tail`` and before ``write`` from the checkpoint
    table (the first one of ``tail``'s block or of a later block), or None.  The caller
    must still check, after reading the record, that the tail has not passed it."""
    block, last = tail >> shift, write >> shift
    while block <= last:
        entry = words[H_CHECKPOINTS + (block & _CP_MASK)]
        if entry >= tail and entry >= block << shift and entry < write:
            return entry
        block += 1
    return None


def next_seq_after(data: memoryview, capacity: int, write: int, last: int, tail: int,
                   count: int) -> int:
    """The seq the next message must carry, after a producer stopped (or died) with
    ``write``, ``last`` (start of the last record it published, possibly one publish
    stale), ``tail`` and ``count`` (the next seq, stored before the tail moves) in the
    header."""
    if not tail <= last < write:
        return count
    seq = count
    for rec in walk(data, capacity, last, write):
        if not rec.flags & REC_PAD:
            seq = rec.seq + 1
    return seq
