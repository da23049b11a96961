"""``Claim``: room reserved in a ring for one message, written in place (zero-copy send)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .layout import RECORD_HEADER

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
            self.seq = p._publish_claim(self)
