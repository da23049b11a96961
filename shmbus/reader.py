"""``Reader``: a consumer's read cursor (after the Disruptor's SequenceBarrier).

``pos`` is the position of the next message to receive, ``committed`` the read
position last stored in the consumer's slot (what it has released: the producer may
overwrite below it), ``wcache`` the producer's write position as last read, clipped to
the end of ``pos``'s lap of the data area (a record ending at or before it is
published and inside the ring), and ``expect`` the seq the next record must carry
(None until known).  The hot path reads a record that fits below ``wcache`` and
carries ``expect``; everything else goes to the consumer's slow path, which updates
this same object.

This is the pure-Python twin of ``shmbus._hotpath.Reader`` (see :mod:`shmbus.hotpath`):
same fields, so the Python slow paths serve both.
"""

from __future__ import annotations

__all__ = ["Reader"]


class Reader:
    __slots__ = ("pos", "committed", "wcache", "expect")

    def __init__(self, pos: int) -> None:
        self.pos = self.committed = pos
        self.wcache = 0
        self.expect: int | None = None

    def release(self) -> None:
        """Nothing to let go of (the compiled twin holds the segment)."""

    def __repr__(self) -> str:
        return (f"<Reader pos={self.pos} committed={self.committed} "
                f"wcache={self.wcache} expect={self.expect}>")
