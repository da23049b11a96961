"""Forwarding whole records from one ring to another, without building messages.

A relay such as the balancer moves every message of an input ring into some output
ring.  Going through ``recv_many`` and ``send_many`` costs a ``Message`` and a few
slices per message on each side; forwarding copies the records themselves: a run of
records that sit one after another in the input's data area is taken in one walk over
their headers (:func:`take_run`), and the records chosen for one output ring are copied
with one ``memcpy`` per contiguous stretch, then get the output ring's seq (and the
given flags) written into their headers (:func:`forward`).  Payload, key and the
original ``timestamp_ns`` are kept.

With the compiled hot path, the walk over a run's headers
(``shmbus._hotpath.scan_records``) and the copy, stamping, checkpointing and
publishing of the records (``Sequencer.forward``) run in C; numpy and the Python loops
here are their pure-Python twins, which write the same bytes (tests/test_forward.py).

Both functions work on the private state of :class:`~shmbus.Consumer` and
:class:`~shmbus.Producer` and follow their rules: the consumer releases the previous
run only when it takes the next one (so what was taken stays protected until the
caller has placed it), and the producer makes room, pads, checkpoints and publishes
exactly as ``send_many`` does.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import NamedTuple

import numpy as np

from . import hotpath, layout, ring
from .arrays import BULK
from .consumer import Consumer
from .errors import Timeout
from .layout import (H_WRITE, RECORD, RECORD_HEAD, RECORD_HEADER, RECORD_RESTAMP,
                     RECORD_RESTAMP_OFFSET, REC_PAD)
from .message import Message
from .producer import Producer
from .ring import checkpoint, checkpoint_strided
from .sequencer import Sequencer

__all__ = ["Run", "take_run", "give_back", "forward", "run_message"]

_head = RECORD_HEAD.unpack_from
_unpack = RECORD.unpack_from
_restamp = RECORD_RESTAMP.pack_into


class Run(NamedTuple):
    """Records taken from a consumer's ring: record i occupies
    ``data[bounds[i]:bounds[i + 1]]`` (indexes into the data area), and starts at ring
    position ``pos + bounds[i] - bounds[0]``; ``keys`` are their keys (None where a
    record has none), if asked for.  Records of one size (``stride``) are copied and
    stamped with numpy, a batch at a time."""

    data: memoryview
    pos: int
    bounds: list[int]
    keys: list[bytes | None] | None
    stride: int = 0  # the size of every record, when they all have the same; else 0

    def position(self, i: int) -> int:
        """The ring position of record ``i``."""
        return self.pos + self.bounds[i] - self.bounds[0]

    def key(self, i: int) -> bytes | None:
        """Record ``i``'s key (None if it has none)."""
        if self.keys is not None:
            return self.keys[i]
        start = self.bounds[i] + RECORD_HEADER
        klen = _head(self.data, self.bounds[i])[1]
        return self.data[start:start + klen].tobytes() if klen else None


def take_run(consumer: Consumer, max_records: int, keys: bool = False) -> Run | None | bool:
    """Release what ``consumer`` received so far, then take up to ``max_records``
    records that follow one another in its data area (skipping padding; a run stops
    at the end of the data area).  Returns the :class:`Run`; ``False`` if no message
    is there now; ``None`` if the records need checked reads (an ``overwrite`` ring,
    or data the producer did not yet protect when this consumer joined) or the
    consumer does not know the seq to expect yet (its first record after joining):
    use ``recv_many`` for those.  Raises :class:`CorruptRing` on an impossible record
    (framing, or a seq that is not one more than the record before it)."""
    try:
        return _take_run(consumer, max_records, keys)
    except (ValueError, AttributeError):
        if consumer._closed:  # closed by another thread while we read
            return None       # (recv_many, the way for None, raises Closed)
        raise


def _take_run(c: Consumer, max_records: int, keys: bool) -> Run | None | bool:
    if c._closed:
        return None
    pos = c._pos
    if pos != c._committed:
        c._commit_to(pos, c._expect)
    write = c._words[H_WRITE]
    expect = c._expect
    if pos == write:
        return False
    if pos < c._safe_from or expect is None or pos > write:
        return None  # recv_many reads them (or raises CorruptRing)
    data, mask, cap, pad_limit = c._data, c._mask, c.capacity, c._pad_limit
    idx = pos & mask
    if idx > pad_limit or _head(data, idx)[2] & REC_PAD:  # padding to the end
        pos += ring.read(data, pos, cap, write, name=c.name).size
        if pos >= write:  # the record after it is not published yet
            c._pos = pos
            return False
        idx = pos & mask
    c._wcache = min(write, (pos | mask) + 1)  # wcache: see shmbus.reader
    first = idx
    limit = min(cap, first + write - pos)
    stop = min(limit, pad_limit + 1)  # a header must fit before the end
    if not keys and hotpath.native is not None:  # the walk below, in C
        bounds, stride, expect = hotpath.native.scan_records(
            data, idx, limit, stop, max_records, c._expect, c._max_record, REC_PAD)
        if len(bounds) > 1:
            c._pos, c._expect = pos + bounds[-1] - first, expect
            return Run(data, pos, bounds, None, stride)
    run = _take_uniform(c, pos, idx, limit, max_records, keys)
    if run is not None:
        return run
    bounds: list[int] = []
    klens: list[int] = []
    max_record = c._max_record
    append, append_klen = bounds.append, klens.append
    stride = -1
    for _ in range(max_records):
        if idx >= stop:
            break
        plen, klen, flags, seq, _ts = _unpack(data, idx)
        size = (RECORD_HEADER + 7 + klen + plen) & -8
        if flags & REC_PAD or size > max_record or idx + size > limit or seq != expect:
            if not bounds:  # padding was skipped above: this one is corrupt
                ring.check_seq(ring.read(data, pos, cap, write, name=c.name), expect,
                               name=c.name)  # raises (a guard after it: never empty)
                raise ring.corrupt(c.name, pos, "a record", "padding")
            break  # the next run starts with it (and raises if it is corrupt)
        append(idx)
        if keys:
            append_klen(klen)
        if size != stride:
            stride = size if stride < 0 else 0
        idx += size
        expect += 1
    key_list = None
    if keys:  # sliced from the mapping itself: bytes at once, no view in between
        mm, at = c._seg._mmap, c._seg.data_offset + RECORD_HEADER
        key_list = [mm[at + s:at + s + k] if k else None for s, k in zip(bounds, klens)]
    bounds.append(idx)
    c._pos, c._expect = pos + idx - first, expect
    return Run(data, pos, bounds, key_list, max(stride, 0))


def _take_uniform(c: Consumer, pos: int, idx: int, limit: int, max_records: int,
                  keys: bool) -> Run | None:
    """The run from ``idx`` if at least BULK records of the first one's size (and the
    seqs the consumer expects) follow, found with one numpy read of their headers;
    else None (walk them one by one)."""
    data = c._data
    plen, klen, flags = _head(data, idx)
    stride = layout.record_size(klen, plen)
    count = min(max_records, (limit - idx) // stride)
    if count < BULK or flags & REC_PAD or stride > c._max_record:
        return None
    n, headers = layout.uniform_prefix(data, idx, count, stride, REC_PAD, c._expect)
    if n < BULK:
        return None
    bounds = list(range(idx, idx + (n + 1) * stride, stride))
    key_list = None
    if keys:
        mm, at = c._seg._mmap, c._seg.data_offset + RECORD_HEADER
        key_list = [mm[at + s:at + s + k] if k else None
                    for s, k in zip(bounds, headers["key_length"].tolist())]
    c._pos, c._expect = pos + n * stride, c._expect + n
    return Run(data, pos, bounds, key_list, stride)


def give_back(consumer: Consumer, run: Run, i: int) -> None:
    """Records ``i`` onwards of ``consumer``'s last run are not taken after all: its
    next :func:`take_run` (or ``recv``) starts with record ``i``."""
    if i < len(run.bounds) - 1:
        consumer._pos = run.position(i)
        consumer._expect = RECORD.unpack_from(run.data, run.bounds[i])[3]


def run_message(consumer: Consumer, run: Run, i: int) -> Message:
    """Record ``i`` of ``run`` as a :class:`Message` (a zero-copy view, valid until
    the consumer takes its next run)."""
    data, start = run.data, run.bounds[i]
    plen, klen, flags, seq, ts = RECORD.unpack_from(data, start)
    body = start + RECORD_HEADER + klen
    key = data[start + RECORD_HEADER:body].tobytes() if klen else None
    return consumer._message(data[body:body + plen], key, seq, ts, consumer,
                             run.position(i + 1), flags)


def forward(producer: Producer, run: Run, indexes: range | list[int],
            flags: int = 0) -> int:
    """Append records ``indexes`` (ascending) of ``run`` to ``producer``'s ring without
    waiting for room, giving each the ring's next seq and ``flags``; return how many
    were written: all, or a prefix (maybe none) when the ring has no room for all."""
    p = producer
    p._check_usable()
    cur = p._cur
    native = type(cur) is not Sequencer  # the compiled cursor: copies in C
    bounds, count = run.bounds, _fitting(run.bounds, indexes, p._max_record)
    if native and count == len(indexes):
        sent = cur.forward(run.data, bounds, indexes, flags)
        if sent is not None:
            return sent
    while count:
        indexes = indexes[:count]
        if type(indexes) is range:
            total = bounds[indexes.stop] - bounds[indexes.start]
        else:
            total = sum([bounds[i + 1] - bounds[i] for i in indexes])
        pos = p._write
        if (pos & p._mask) + total <= p.capacity and pos + total <= p._limit:
            break
        try:
            pos = p._reserve(total, 0, total, 0, None)
            break
        except Timeout:
            count //= 2
    if not count:
        return 0
    if native:  # room made: it fits now, unless closed meanwhile
        sent = cur.forward(run.data, bounds, indexes, flags)
        if sent is None:
            p._check_usable()
            raise RuntimeError("Sequencer.forward refused records after _reserve")
        return sent
    base = pos & p._mask
    if type(indexes) is range:  # records adjacent in the source: one copy
        p._data[base:base + total] = run.data[bounds[indexes.start]:bounds[indexes.stop]]
    if run.stride:
        seq = _copy_uniform(p, run, indexes, count, pos, flags)
    else:
        seq = _copy_each(p, run, indexes, count, pos, total, flags)
    end = pos + total
    p._seq, p._write = seq, end
    p._publish(end, end - (bounds[indexes[-1] + 1] - bounds[indexes[-1]]))
    return count


def _copy_each(p: Producer, run: Run, indexes, count: int, pos: int, total: int,
               flags: int) -> int:
    """Copy records of mixed sizes (unless ``indexes`` is a range: copied already; else
    one copy per stretch adjacent in the source), then stamp each; return the next
    seq."""
    bounds = run.bounds
    src, data, base = run.data, p._data, pos & p._mask
    if type(indexes) is not range:
        out, s, e = base, bounds[indexes[0]], bounds[indexes[0]]
        for i in indexes:
            start = bounds[i]
            if start != e:
                data[out:out + e - s] = src[s:e]
                out += e - s
                s = start
            e = bounds[i + 1]
        data[out:out + e - s] = src[s:e]
    seq, at, end = p._seq, base + RECORD_RESTAMP_OFFSET, pos + total
    if end <= p._cp_next:
        for i in indexes:
            _restamp(data, at, flags, seq)
            seq += 1
            at += bounds[i + 1] - bounds[i]
    else:  # records that start in a new block of the ring are checkpointed
        cp_next, words, shift = p._cp_next, p._words, p._shift
        for i in indexes:
            _restamp(data, at, flags, seq)
            record = pos + at - base - RECORD_RESTAMP_OFFSET
            if record >= cp_next:
                cp_next = checkpoint(words, shift, cp_next, record)
            seq += 1
            at += bounds[i + 1] - bounds[i]
        p._cp_next = cp_next
        p._limit = min(p._room, cp_next)
    return seq


def _copy_uniform(p: Producer, run: Run, indexes, count: int, pos: int,
                  flags: int) -> int:
    """Copy records that all have ``run.stride`` bytes (unless ``indexes`` is a range:
    copied already) with numpy, rows gathered in one call, and stamp them with one
    assignment per field; return the next seq."""
    stride, bounds, data, base = run.stride, run.bounds, p._data, pos & p._mask
    if type(indexes) is not range:
        rows = layout.record_rows(run.data, bounds[0], len(bounds) - 1, stride)
        np.take(rows, indexes, axis=0, out=layout.record_rows(data, base, count, stride))
    headers = layout.record_headers(data, base, count, stride)
    headers["flags"] = flags
    headers["seq"] = np.arange(p._seq, p._seq + count, dtype=np.uint64)
    cp_next = checkpoint_strided(p._words, p._shift, p._cp_next, pos, pos + count * stride,
                                 stride)
    p._cp_next, p._limit = cp_next, min(p._room, cp_next)
    return p._seq + count


def _fitting(bounds: list[int], indexes: range | list[int], limit: int) -> int:
    """How many of ``indexes`` (a prefix) add up to at most ``limit`` bytes."""
    if not indexes:
        return 0
    if bounds[indexes[-1] + 1] - bounds[indexes[0]] <= limit:
        return len(indexes)  # even the whole stretch they span fits
    if type(indexes) is range:
        start = indexes.start
        return bisect_right(bounds, bounds[start] + limit, start, indexes.stop + 1) - 1 - start
    total = 0
    for count, i in enumerate(indexes):
        total += bounds[i + 1] - bounds[i]
        if total > limit:
            return count
    return len(indexes)
