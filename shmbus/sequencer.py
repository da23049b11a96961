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
:mod:`shmbus.hotpath`): same fields, so the Python slow paths serve both.
"""

from __future__ import annotations

__all__ = ["Sequencer"]


class Sequencer:
    __slots__ = ("write", "seq", "limit", "room", "cp_next")

    def __init__(self, write: int, seq: int, room: int, cp_next: int) -> None:
        self.write, self.seq, self.room, self.cp_next = write, seq, room, cp_next
        self.limit = min(room, cp_next)

    def release(self) -> None:
        """Nothing to let go of (the compiled twin holds the segment)."""

    def __repr__(self) -> str:
        return f"<Sequencer write={self.write} seq={self.seq} limit={self.limit}>"
