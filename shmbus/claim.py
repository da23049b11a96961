"""``Claim``: room reserved in a ring for one message, written in place (zero-copy send)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import time

from .layout import RECORD, RECORD_HEADER
from .payload import key_bytes

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["Claim"]


class Claim:
    """A reserved, not yet published record; see :meth:`Producer.claim`."""

    def __init__(self, producer: Producer, pos: int, total: int, key: bytes, size: int):
        self.producer, self.pos, self.total, self.key, self.size = producer, pos, total, key, size
        idx = pos & producer._mask
        start = idx + RECORD_HEADER + len(key)
        self.view = producer._data[start:start + size]
        self.seq: int | None = None
        producer._claim_open = True
        producer._set_unusable(True)

    @classmethod
    def open(cls, p: Producer, size: int, key, timeout: float | None) -> Claim:
        """Reserve room in ``p``'s ring for a ``size``-byte message with ``key``
        (waiting up to ``timeout`` like ``send``)."""
        p._check_usable()
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"claim size must be an int >= 0, got {size!r}")
        kb = key_bytes(key)
        total = (RECORD_HEADER + len(kb) + size + 7) & -8
        pos = p._write
        if (pos & p._mask) + total > p.capacity or pos + total > p._limit or \
                total > p._max_record:
            pos = p._reserve(total, len(kb), size, timeout, None)
        return cls(p, pos, total, kb, size)

    def __enter__(self) -> memoryview:
        return self.view

    def __exit__(self, exc_type, exc, tb) -> None:
        p = self.producer
        p._claim_open = False
        p._set_unusable(p._closed)  # closed meanwhile (another thread): stays so
        try:
            self.view.release()
        except BufferError:
            pass  # the caller still holds an export (e.g. numpy); harmless
        if exc_type is None:
            p._check_usable()
            self.seq = self._publish()

    def _publish(self) -> int:
        p, cur = self.producer, self.producer._cur
        idx, seq, klen = self.pos & p._mask, cur.seq, len(self.key)
        RECORD.pack_into(p._data, idx, self.size, klen, 0, seq, time.monotonic_ns())
        if klen:
            p._data[idx + RECORD_HEADER:idx + RECORD_HEADER + klen] = self.key
        cur.seq = seq + 1
        cur.write = end = self.pos + self.total
        p._publish(end, self.pos)
        return seq
