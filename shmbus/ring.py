"""Record framing on the byte ring: placing, padding, checked reads, walks, checkpoints.

Positions are monotonically increasing byte offsets; the index into the data area is
``pos & (capacity - 1)``.  These helpers serve the slow paths (wrap-around, finding the
oldest intact record, recovery after a crash, inspection); the producer and consumer
inline the common case of their hot path with the same rules from :mod:`shmbus.layout`.

Reading is *checked*: shared memory can be scribbled on by a bug or a foreign process,
so nothing read from it is believed until it agrees with the ring.  A record lies
inside the data area, is at most :func:`~shmbus.layout.max_record` bytes, and ends at
or before the write position; padding says exactly the rest of the data area and is
never at index 0; successive records carry successive seqs.  Anything else raises :class:`CorruptRing` (:func:`corrupt` words it), and every
walk is bounded by the distance it covers (a record is at least 8 bytes), never by
what a header claims.

A reader below the producer's tail may see a record being overwritten while it reads
it: a check that fails there proves nothing until the tail is read again.  If
``words[H_TAIL] > pos`` afterwards, the record was overwritten (the reader was lapped),
not corrupt: :func:`read_checked` does exactly this.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

from .errors import CorruptRing
from .layout import (ALIGN, CHECKPOINTS, H_CHECKPOINTS, H_LAST, H_TAIL, H_WRITE, RECORD,
                     RECORD_HEADER, REC_PAD, max_record, padding_before, padding_length,
                     record_size)

__all__ = ["Record", "corrupt", "padding_at", "write_padding", "read", "read_checked",
           "walk", "seq_at", "last_record", "check_seq", "check_first_seq", "checkpoint",
           "checkpoint_strided", "first_unwritten_checkpoint", "find_boundary", "oldest",
           "next_seq_after"]

_unpack = RECORD.unpack_from
_pack = RECORD.pack_into
_CP_MASK = CHECKPOINTS - 1
_TRIES = 100  # consistent snapshots of a header a live producer is changing


class Record(NamedTuple):
    pos: int           # position of the record header
    length: int        # payload bytes
    key_length: int
    flags: int
    seq: int
    timestamp_ns: int
    size: int          # bytes the record occupies (padding: up to the end)


def corrupt(name: str, pos: int, expected: str, found: str,
            what: str = "record") -> CorruptRing:
    """The :class:`CorruptRing` for a ``what`` at ``pos`` that is not what the ring
    requires: says what was expected, what was found, and what to do."""
    ring = f"ring {name!r}" if name else "the ring"
    rm = f"`shmbus rm {name}`" if name else "`shmbus rm NAME`"
    return CorruptRing(
        f"{ring} has a corrupt {what} at position {pos}: expected {expected}, found "
        f"{found}; nothing after it can be trusted: remove the ring ({rm}) and create "
        "it again", name=name, pos=pos, expected=expected, found=found)


def padding_at(pos: int, capacity: int, size: int) -> int:
    """Bytes of padding needed before a record of ``size`` bytes written at ``pos`` so
    that it does not wrap (0 if it fits before the end)."""
    return padding_before(pos & (capacity - 1), capacity, size)


def write_padding(data: memoryview, pos: int, capacity: int) -> None:
    """Mark ``pos`` up to the end of the data area as padding."""
    idx = pos & (capacity - 1)
    length = padding_length(idx, capacity)
    if length is not None:
        _pack(data, idx, length, 0, REC_PAD, 0, 0)


def read(data: memoryview, pos: int, capacity: int, end: int | None = None, *,
         name: str = "") -> Record:
    """The record (or padding) at ``pos``, its framing checked against the data area
    and, if given, against ``end`` (the write position: the record or padding ends at
    or before it).  Raises :class:`CorruptRing`."""
    idx = pos & (capacity - 1)
    rest = capacity - idx
    if pos & (ALIGN - 1):
        raise corrupt(name, pos, f"a record start (a multiple of {ALIGN})",
                      f"position {pos}", "position")
    pad_length = padding_length(idx, capacity)
    if pad_length is None:
        rec = Record(pos, 0, 0, REC_PAD, 0, 0, rest)
    else:
        length, klen, flags, seq, ts = _unpack(data, idx)
        if flags & REC_PAD:
            if idx == 0 or length != pad_length or klen:
                raise corrupt(name, pos, f"padding of {rest} bytes to the end of the data "
                              f"area (payload length {pad_length}, no key; never at "
                              "index 0)", f"payload length {length}, key length {klen}, "
                              f"index {idx}")
            rec = Record(pos, 0, 0, REC_PAD, 0, 0, rest)
        else:
            size = record_size(klen, length)
            if size > max_record(capacity) or size > rest:
                raise corrupt(name, pos, f"a record of at most {max_record(capacity)} "
                              f"bytes inside the data area ({rest} bytes left)",
                              f"payload length {length}, key length {klen}")
            rec = Record(pos, length, klen, flags, seq, ts, size)
    if end is not None and pos + rec.size > end:
        what = "padding" if rec.flags & REC_PAD else "a record"
        raise corrupt(name, pos, f"{what} ending at or before the write position {end}",
                      f"{rec.size} bytes reaching {pos + rec.size}")
    return rec


def read_checked(words: memoryview, data: memoryview, capacity: int, pos: int, end: int,
                 *, name: str = "") -> tuple[Record, bytes | None, bytes] | None:
    """For a reader the producer does not wait for (data below its tail may be
    overwritten at any time): the record at ``pos`` with copies of its key and payload,
    or None if the producer's tail passed ``pos`` before the copy was complete (the
    record is gone: continue from :func:`oldest`).  Padding comes back as a record with
    flag ``PAD`` and no data.  Raises :class:`CorruptRing` only for a record that was
    intact and still impossible."""
    try:
        rec = read(data, pos, capacity, end, name=name)
    except CorruptRing:
        if words[H_TAIL] > pos:
            return None
        raise
    key, payload = None, b""
    if not rec.flags & REC_PAD:
        start = (pos & (capacity - 1)) + RECORD_HEADER
        if rec.key_length:
            key = bytes(data[start:start + rec.key_length])
        start += rec.key_length
        payload = bytes(data[start:start + rec.length])
    if words[H_TAIL] > pos:
        return None
    return rec, key, payload


def check_seq(rec: Record, expected: int, *, name: str = "") -> None:
    """Raise :class:`CorruptRing` unless record ``rec`` carries seq ``expected`` (one
    more than the record before it)."""
    if rec.seq != expected:
        raise corrupt(name, rec.pos, f"seq {expected} (one more than the record before "
                      "it)", f"seq {rec.seq}")


def walk(data: memoryview, capacity: int, pos: int, end: int, *, name: str = "",
         seq: int | None = None) -> Iterator[Record]:
    """Every record (padding included) from ``pos`` up to ``end``, each checked by
    :func:`read` against ``end``, and their seqs going up by one (from ``seq``, if
    given).  At most ``(end - pos) / 8`` steps; ``end - pos`` must be within a
    capacity (ValueError: the data before the tail is gone, start at or above it).
    Raises :class:`CorruptRing`."""
    if not 0 <= end - pos <= capacity:
        raise ValueError(f"cannot walk from position {pos} to {end}: expected at most "
                         f"the capacity ({capacity} bytes) apart, start at or above the "
                         "tail")
    while pos < end:
        rec = read(data, pos, capacity, end, name=name)
        if not rec.flags & REC_PAD:
            if seq is not None:
                check_seq(rec, seq, name=name)
            seq = rec.seq + 1
        yield rec
        pos += rec.size


def seq_at(data: memoryview, capacity: int, pos: int, write: int,
           tail: int | None = None, *, name: str = "") -> int | None:
    """The seq of the first message at or after ``pos`` (past at most one padding),
    None if none is published before ``write``, or if ``pos`` is below ``tail`` or a
    capacity or more before ``write`` (its data was overwritten).  Raises
    :class:`CorruptRing` (on a ring being written, see the module docstring)."""
    if pos >= write or write - pos > capacity or tail is not None and pos < tail:
        return None
    rec = read(data, pos, capacity, write, name=name)
    if rec.flags & REC_PAD:  # followed by a record (index 0: never padding)
        rec = read(data, pos + rec.size, capacity, write, name=name)
    return rec.seq


def last_record(words: memoryview, data: memoryview, capacity: int, *,
                name: str = "") -> Record | None:
    """The last published record (the one that ends at the write position), read
    consistently with a live producer; None if nothing was published yet, or if no
    consistent snapshot was found in a bounded number of tries (the producer kept
    publishing, or the header contradicts itself).  Raises :class:`CorruptRing` if the
    records from the header's last-record position to the write position are."""
    for _ in range(_TRIES):
        write, last = words[H_WRITE], words[H_LAST]
        if write == 0:
            return None
        tail = words[H_TAIL]
        if not tail <= last < write or write - last > capacity:
            continue  # a publish in between (or a damaged header: give up in time)
        found = None
        try:
            # LAST may be one publish stale (it is stored after WRITE): walk to WRITE.
            for rec in walk(data, capacity, last, write, name=name):
                found = rec
        except CorruptRing:
            if words[H_TAIL] > last:
                continue  # overwritten while we read it
            raise
        if words[H_TAIL] <= last and found is not None and not found.flags & REC_PAD:
            return found
    return None


def check_first_seq(words: memoryview, data: memoryview, capacity: int, rec: Record, *,
                    name: str = "") -> None:
    """For the first record a reader takes at a position it did not reach by reading
    (a checkpoint, a durable cursor): raise :class:`CorruptRing` unless ``rec`` can be
    a record of this ring: at or before the last published record, with a seq that
    many records (at least ``RECORD_HEADER`` bytes each) before the last one's, and
    followed (if anything follows) by a record with the next seq.  (Garbage that forges
    two records in a row can pass; the record after them then cannot.)  On a ring the
    producer may overwrite, re-check the tail when this raises."""
    last = last_record(words, data, capacity, name=name)
    if last is None:
        return  # nothing to compare with
    if rec.pos > last.pos:
        raise corrupt(name, rec.pos, f"a record at or before the last published one (at "
                      f"{last.pos})", f"a record after it", "record start")
    most = (last.pos - rec.pos) // RECORD_HEADER
    if not 0 <= last.seq - rec.seq <= most:
        raise corrupt(name, rec.pos, f"a seq from {last.seq - most} to {last.seq} (the "
                      f"last published record, at {last.pos}, has seq {last.seq})",
                      f"seq {rec.seq}")
    end, after = last.pos + last.size, rec.pos + rec.size
    if after < end:  # and the record after it must follow on
        nxt = read(data, after, capacity, end, name=name)
        if nxt.flags & REC_PAD:
            nxt = read(data, after + nxt.size, capacity, end, name=name)
        check_seq(nxt, rec.seq + 1, name=name)


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
    table (the first one of ``tail``'s block or of a later block), or None.  Looks at
    most at every block once.  The caller must still check the record there (see
    :func:`oldest`) and, after reading it, that the tail has not passed it."""
    block, last = tail >> shift, min(write >> shift, (tail >> shift) + CHECKPOINTS)
    while block <= last:
        entry = words[H_CHECKPOINTS + (block & _CP_MASK)]
        if tail <= entry < write and entry >= block << shift and not entry & (ALIGN - 1):
            return entry
        block += 1
    return None


def oldest(words: memoryview, data: memoryview, capacity: int, shift: int, *,
           name: str = "") -> int:
    """The position of the oldest record a reader can still start at (to within a
    checkpoint block), its header checked with :func:`read` and
    :func:`check_first_seq`; the write position if the ring holds nothing known.  For a
    reader the producer may overwrite, the tail may pass it at once: read it with
    :func:`read_checked`.  Raises :class:`CorruptRing`."""
    for _ in range(_TRIES):
        tail, write = words[H_TAIL], words[H_WRITE]
        pos = find_boundary(words, shift, tail, write)
        if pos is None:
            return write
        try:
            rec = read(data, pos, capacity, write, name=name)
            if rec.flags & REC_PAD:
                rec = read(data, pos + rec.size, capacity, write, name=name)
            check_first_seq(words, data, capacity, rec, name=name)
        except CorruptRing:
            if words[H_TAIL] > pos:
                continue  # overwritten while we read it: look again
            raise
        return pos
    return words[H_WRITE]


def next_seq_after(data: memoryview, capacity: int, write: int, last: int, tail: int,
                   count: int, *, name: str = "") -> int:
    """The seq the next message must carry, after a producer stopped (or died) with
    ``write``, ``last`` (start of the last record it published, possibly one publish
    stale), ``tail`` and ``count`` (the next seq, stored before the tail moves) in the
    header.  Raises :class:`CorruptRing` if the records from ``last`` to ``write`` are."""
    if not tail <= last < write or write - last > capacity:
        return count
    seq = count
    for rec in walk(data, capacity, last, write, name=name):
        if not rec.flags & REC_PAD:
            seq = rec.seq + 1
    return seq
