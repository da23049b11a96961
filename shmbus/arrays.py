"""Fixed-size messages in bulk, as numpy arrays: one record per array element.

Telemetry, market data and robot state are often a stream of structs of one size.
``Producer.send_array(a)`` writes one message per element of ``a`` (along its first
axis): the records of a batch are equally spaced, so their headers and payloads are
written with a few numpy assignments instead of a Python loop.
``Consumer.recv_array(dtype, n)`` hands out up to ``n`` such messages as one
read-only, strided numpy view into the ring (zero copies), valid until the next
receive, like ``Message.data``.  Messages sent with ``send``/``send_many`` of the same
size and without a key are read the same way; any other message stops a batch, and
``recv_array`` refuses one that is next (receive it with ``recv``).
"""

from __future__ import annotations

import time
from itertools import repeat
from operator import add
from typing import TYPE_CHECKING, Any

import numpy as np

from . import layout, ring
from .message import PyMessage
from .errors import MessageTooLarge
from .layout import H_WRITE, REC_PAD, RECORD_HEADER

if TYPE_CHECKING:
    import numpy.typing as npt

    from .consumer import Consumer
    from .producer import Producer

__all__ = ["send_array", "recv_array", "send_uniform", "take_uniform"]

BULK = 16  # fewer messages than this: numpy's fixed cost per call is not worth it
BULK_SIZE = 4096  # larger messages: send_many copies each once, as send does


def send_array(p: Producer, array: npt.ArrayLike, timeout: float | None) -> range:
    """See :meth:`Producer.send_array`."""
    p._check_usable()
    a = np.asarray(array)
    if a.ndim == 0:
        raise ValueError("send_array needs an array of messages (one per element along "
                         "its first axis), got a 0-d array: use send() for one message")
    if a.dtype.hasobject:
        raise ValueError(f"send_array sends the bytes of the array; dtype {a.dtype} holds "
                         "Python objects: use a numeric or structured dtype")
    a = np.ascontiguousarray(a)
    count = len(a)
    rows = a.reshape(count, -1).view(np.uint8) if count else a
    size = a.itemsize * (a.size // count if count else 0)
    stride = layout.record_size(0, size)
    if stride > p._max_record:
        limit = p._max_record - RECORD_HEADER
        raise MessageTooLarge(
            f"messages of {size} bytes do not fit ring {p.name!r} of capacity "
            f"{p.capacity}: the largest payload is {limit} bytes; create the ring with "
            "a larger capacity", name=p.name, size=size, limit=limit)
    def fill(headers: np.ndarray, idx: int, done: int, k: int) -> None:
        headers["length"] = size
        headers["key_length"] = 0
        layout.record_payloads(p._data, idx, k, stride, np.dtype((np.uint8, size)))[:] = \
            rows[done:done + k]
    return _send_records(p, count, stride, size, fill, timeout)


def _send_records(p: Producer, count: int, stride: int, size: int, fill,
                  timeout: float | None) -> range:
    """Write ``count`` records of ``stride`` bytes in chunks that fit below the
    cursor's limit and before the end of the data area: stamp seq, flags and time,
    let ``fill(headers, idx, done, k)`` write lengths, keys and payloads of messages
    done..done+k, and publish.  A record that fits no chunk goes through the slow path
    (:meth:`Room._reserve`) alone, after what was written is published, exactly as
    ``send_many``'s loop does: the same bytes and header words (room, padding,
    checkpoints) as sending them one by one."""
    deadline = None if timeout is None else time.monotonic() + timeout
    cur, cap, mask = p._cur, p.capacity, p._mask
    now, first, done = time.monotonic_ns(), cur.seq, 0
    unpublished = 0
    while done < count:
        pos = cur.write
        k = min(count - done, (cap - (pos & mask)) // stride,
                max(cur.limit - pos, 0) // stride)
        if not k:
            if unpublished:
                p._publish(pos, pos - stride)
                unpublished = 0
            pos, k = p._reserve(stride, 0, size, timeout, deadline), 1
        idx, end = pos & mask, pos + k * stride
        headers = layout.record_headers(p._data, idx, k, stride)
        headers["flags"] = 0
        headers["seq"] = np.arange(cur.seq, cur.seq + k, dtype=np.uint64)
        headers["timestamp_ns"] = now
        fill(headers, idx, done, k)
        cur.seq += k
        cur.write = end
        unpublished += k
        done += k
    if unpublished:
        p._publish(cur.write, cur.write - stride)
    return range(first, cur.seq)


def recv_array(c: Consumer, dtype: npt.DTypeLike, max_messages: int,
               timeout: float | None) -> npt.NDArray[Any]:
    """See :meth:`Consumer.recv_array`."""
    dtype = np.dtype(dtype)
    if dtype.hasobject or not dtype.itemsize:
        raise ValueError(f"recv_array needs a dtype of fixed-size bytes, got {dtype}")
    if max_messages < 1:
        raise ValueError(f"max_messages must be >= 1, got {max_messages!r}")
    c.release()  # the previous batch
    try:
        return _recv_array(c, dtype, max_messages, timeout)
    except (ValueError, AttributeError):
        if c._closed:  # closed by another thread while we read: its views are gone
            raise c._closed_error() from None
        raise


def _recv_array(c: Consumer, dtype: np.dtype, max_messages: int,
                timeout: float | None) -> np.ndarray:
    size = dtype.itemsize
    stride = layout.record_size(0, size)
    deadline = None if timeout is None else time.monotonic() + timeout
    cap, mask = c.capacity, c._mask
    while True:
        if c._closed:
            c._take(0)  # raises the closed error
        pos, data = c._pos, c._data
        write = c._words[H_WRITE]
        c._wcache = min(write, (pos | mask) + 1)  # wcache: see shmbus.reader
        if pos >= write:
            if pos > write:
                c._take(0)  # raises CorruptRing: the cursor is past the write position
            c._wait(pos, deadline, timeout)
            continue
        expect = c._expect
        if pos < c._safe_from or expect is None:  # checked reads, or the first message
            msg = c._take(timeout)                # after a jump: one, through _take
            try:
                _check(c, dtype, len(msg.data), 0 if msg.key is None else len(msg.key),
                       msg.seq)
            except ValueError:
                c._pos, c._expect = pos, expect  # not received: recv() gets it
                raise
            return np.frombuffer(msg.data, dtype)
        first = ring.read(data, pos, cap, write, name=c.name)  # checked framing
        if first.flags & REC_PAD:
            c._pos = pos + first.size
            continue
        ring.check_seq(first, expect, name=c.name)
        _check(c, dtype, first.length, first.key_length, first.seq)
        idx = pos & mask
        m = min(max_messages, (write - pos) // stride, (cap - idx) // stride)  # >= 1
        headers = layout.record_headers(data, idx, m, stride)
        fits = (headers["length"] == size) & (headers["key_length"] == 0) & \
            (headers["flags"] & REC_PAD == 0) & \
            (headers["seq"] == np.arange(expect, expect + m, dtype=np.uint64))
        n = m if fits.all() else int(fits.argmin())  # >= 1: the first one fits
        view = layout.record_payloads(data, idx, n, stride, dtype)
        view.flags.writeable = False  # other consumers read the same bytes
        c._pos, c._expect = pos + n * stride, expect + n
        return view


def _check(c: Consumer, dtype: np.dtype, length: int, key_length: int, seq: int) -> None:
    if length != dtype.itemsize or key_length:
        key = f" and a {key_length}-byte key" if key_length else ""
        raise ValueError(
            f"message seq {seq} on ring {c.name!r} has {length} bytes{key}, not the "
            f"{dtype.itemsize} of {dtype}: recv_array takes only messages of the "
            "dtype's size without a key; receive this one with recv()")


def send_uniform(p: Producer, messages, keys, timeout: float | None) -> range | None:
    """``send_many`` of a list of at least :data:`BULK` messages that are all buffers of
    one size, with no keys or a list of bytes keys that keep every record the same
    size: written a chunk at a time with numpy (None if they are not such lists)."""
    if type(messages) is not list or len(messages) < BULK:
        return None
    count = len(messages)
    size = len(messages[0]) if type(messages[0]) is bytes else 0
    # Large messages gain nothing (the per-message cost is the copy, and joining
    # would copy them twice); mixed sizes are turned away before any copy.
    if not 0 < size <= BULK_SIZE or len(messages[-1]) != size or \
            len(messages[count // 2]) != size:
        return None
    try:
        joined = b"".join(messages)
    except (TypeError, BufferError):
        return None
    # len() of a buffer counts elements, not bytes; the total tells whether every one
    # of them has exactly `size` bytes.
    if len(joined) != size * count:
        return None
    payloads = np.frombuffer(joined, np.uint8).reshape(count, size)
    if keys is None:
        return send_array(p, payloads, timeout)
    if type(keys) is not list or len(keys) != count or \
            not all(type(k) is bytes for k in keys):
        return None  # str keys, other lengths: the general path encodes and checks
    klens = list(map(len, keys))
    shortest, longest = min(klens), max(klens)
    stride = layout.record_size(longest, size)
    if longest > 0xFFFF or layout.record_size(shortest, size) != stride or \
            stride > p._max_record:
        return None
    data = p._data

    def fill(headers: np.ndarray, idx: int, done: int, k: int) -> None:
        headers["length"] = size
        headers["key_length"] = klens[done:done + k]
        rows = layout.record_rows(data, idx, k, stride)
        if shortest == longest:  # keys and payloads as two blocks
            rows[:, RECORD_HEADER:RECORD_HEADER + longest] = np.frombuffer(
                b"".join(keys[done:done + k]), np.uint8).reshape(k, longest)
            rows[:, RECORD_HEADER + longest:RECORD_HEADER + longest + size] = \
                payloads[done:done + k]
            return
        at, src = idx + RECORD_HEADER, memoryview(joined)
        for key, start in zip(keys[done:done + k], range(done * size, (done + k) * size,
                                                         size)):
            n = len(key)
            data[at:at + n] = key
            data[at + n:at + n + size] = src[start:start + size]
            at += stride
    return _send_records(p, count, stride, size, fill, timeout)


def take_uniform(c: Consumer, first: PyMessage, pos: int, limit: int) -> list[PyMessage]:
    """Up to ``limit`` messages from ``pos`` whose records have ``first``'s size (keys
    and payloads may split it differently), no flags and the seqs the consumer expects
    next, as (pure-Python) :class:`~shmbus.message.PyMessage` objects
    built from one numpy read of their headers; [] when fewer than :data:`BULK` such
    follow (the caller reads them one by one).  ``pos`` must be protected (at or above
    the consumer's ``safe_from``)."""
    stride = layout.record_size(0 if first[1] is None else len(first[1]), len(first[0]))
    write = c._words[H_WRITE]
    c._wcache = min(write, (pos | c._mask) + 1)  # wcache: see shmbus.reader
    idx = pos & c._mask
    count = min(limit, (write - pos) // stride, (c.capacity - idx) // stride)
    if count < BULK:
        return []
    expect = c._expect
    n, headers = layout.uniform_prefix(c._data, idx, count, stride, 0xFFFF, expect)
    if n < BULK:
        return []
    data, body = c._data, idx + RECORD_HEADER
    starts = range(body, body + n * stride, stride)
    klens_ = headers["key_length"].tolist()
    if any(klens_):
        mm, off = c._seg._mmap, c._seg.data_offset
        keys: object = [mm[off + s:off + s + k] if k else None
                        for s, k in zip(starts, klens_)]
        starts = map(add, starts, klens_)
    else:
        keys = repeat(None)
    views = [data[s:s + n_] for s, n_ in zip(starts, headers["length"].tolist())]
    messages = list(map(tuple.__new__, repeat(PyMessage), zip(
        views, keys, headers["seq"].tolist(), headers["timestamp_ns"].tolist(),
        repeat(c), range(pos + stride, pos + (n + 1) * stride, stride), repeat(0),
        repeat(c._cur))))
    c._pos, c._expect = pos + n * stride, expect + n
    return messages
