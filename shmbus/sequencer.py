"""``Sequencer``: the producer's cursor (after the Disruptor's SingleProducerSequencer).

``write`` is where the next record goes (the end of the last one published), ``seq``
the seq it will carry, and ``limit`` how far records may be written without making
room or writing a checkpoint: ``min(room, next checkpoint)``, kept by the producer's
slow path (:mod:`shmbus.room`).  The hot path writes a record below ``limit`` that
does not wrap and stores ``write``; everything else goes to the slow path, which
updates this same object.

This is the pure-Python twin of ``shmbus._hotpath.Sequencer`` (see
:mod:`shmbus.hotpath`): same fields, so the Python slow paths serve both.
"""

from __future__ import annotations

__all__ = ["Sequencer"]


class Sequencer:
    __slots__ = ("write", "seq", "limit")

    def __init__(self, write: int, seq: int, limit: int) -> None:
        self.write, self.seq, self.limit = write, seq, limit

    def release(self) -> None:
        """Nothing to let go of (the compiled twin holds the segment)."""

    def __repr__(self) -> str:
        return f"<Sequencer write={self.write} seq={self.seq} limit={self.limit}>"
