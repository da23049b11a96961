"""``send_many``: several messages, one store of the write position.

The records of a batch are written one after another and published together (one
store of the write position, one look at the sleepers); where one needs the slow
path (:meth:`Room._reserve`: it would wrap, needs room, or starts a checkpoint block
the fast path does not record), what was written so far is published first, so a
consumer is never held back by a producer that waits.  Every message of a batch
carries the same ``timestamp_ns`` (the time of the call) unless the caller (the
balancer, forwarding messages) gives each its own.

Three writers, one ring: the compiled loop (``shmbus._hotpath.Sequencer.send_many``),
which hands any message it does not take (an unusual key or payload type) to the
pure-Python loop below at that index; the pure loop; and, on the pure path only,
:func:`shmbus.arrays.send_uniform` for batches of one record size (numpy).  All three
call the slow path for the same records with the same sizes, so they write the same
bytes and header words (tests/test_hotpath.py compares them).
"""

from __future__ import annotations

import time
from itertools import islice
from typing import TYPE_CHECKING, Iterable

from .arrays import send_uniform
from .layout import RECORD, RECORD_HEADER
from .payload import as_bytes_view, key_bytes
from .sequencer import Sequencer

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["send_many"]


def send_many(p: Producer, messages: Iterable, keys: Iterable | None,
              timeout: float | None, flags: int = 0,
              stamps: Iterable[int] | None = None) -> range:
    """See :meth:`Producer.send_many`; ``flags`` and ``stamps`` (one timestamp per
    message) serve :meth:`Producer._send_many`.  Raises ValueError for ``keys`` or
    ``stamps`` of another length than ``messages``, before anything is sent."""
    p._check_usable()
    cur = p._cur
    compiled = type(cur) is not Sequencer  # the compiled twin: its loop in C
    if compiled or keys is not None or stamps is not None:
        if type(messages) is not list and type(messages) is not tuple:
            messages = list(messages)
        keys = _one_each(messages, keys, "keys", "one key per message (None for no key)")
        stamps = _one_each(messages, stamps, "stamps", "one timestamp per message")
    first = cur.seq
    if not compiled and stamps is None and not flags:
        sent = send_uniform(p, messages, keys, timeout)  # one size: numpy writes
        if sent is not None:
            return sent
    deadline = None if timeout is None else time.monotonic() + timeout
    stamp = time.monotonic_ns()  # the batch is sent (and published) as one
    start = 0
    if compiled:
        start = cur.send_many(messages, keys, stamps, flags, stamp, deadline, 0)
        if start == len(messages):
            return range(first, cur.seq)
    _send_from(p, messages, keys, stamps, flags, stamp, deadline, start)
    return range(first, cur.seq)


def _one_each(messages, values, what: str, hint: str) -> list | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != len(messages):
        raise ValueError(f"send_many got {len(messages)} messages and {len(values)} "
                         f"{what}: pass {hint}, or none at all")
    return values


def _send_from(p: Producer, messages: Iterable, keys: list | None,
               stamps: list | None, flags: int, stamp: int, deadline: float | None,
               start: int) -> None:
    """The pure-Python loop: write ``messages[start:]``."""
    cur = p._cur
    key_iter = islice(keys, start, None) if keys is not None else None
    stamp_iter = islice(stamps, start, None) if stamps is not None else None
    if start:
        messages = islice(messages, start, None)
    last = -1
    data_area, mask, cap, max_record = p._data, p._mask, p.capacity, p._max_record
    pack, kb, klen = RECORD.pack_into, b"", 0
    seq, pos, limit = cur.seq, cur.write, cur.limit
    for data in messages:
        if type(data) is not bytes:
            data = as_bytes_view(data)
        if key_iter is not None:
            kb = key_bytes(next(key_iter))
            klen = len(kb)
        n = len(data)
        size = (RECORD_HEADER + klen + n + 7) & -8
        idx = pos & mask
        if idx + size > cap or pos + size > limit or size > max_record:
            cur.seq, cur.write = seq, pos
            if last >= 0:
                p._publish(pos, last)
                last = -1
            pos = p._reserve(size, klen, n, None, deadline)
            idx, limit = pos & mask, cur.limit
        if stamp_iter is not None:
            stamp = next(stamp_iter)
        pack(data_area, idx, n, klen, flags, seq, stamp)
        begin = idx + RECORD_HEADER
        if klen:
            data_area[begin:begin + klen] = kb
            begin += klen
        data_area[begin:begin + n] = data
        seq += 1
        last = pos
        pos += size
    cur.seq, cur.write = seq, pos
    if last >= 0:
        p._publish(pos, last)
