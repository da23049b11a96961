"""The consumer slot table: claiming, releasing and reclaiming slots.

Slots are claimed and freed under the ring's ``@slots`` lock, so the table's ``state``,
``pid`` and name fields have one writer at a time; each slot's read position and sleep
epoch have one writer: its consumer.  Every change of who uses which slot bumps the
header's generation word, which tells the producer to re-read the table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import layout, liveness, naming
from .errors import RingBusy
from .layout import (FLAGGED_SLOTS, H_GENERATION, S_ATTACHED, S_LOST, S_PID, S_PID_NS,
                     S_READ, S_START, S_STATE, SLEEPERS_OFFSET, SLOT_ACTIVE, SLOT_DURABLE,
                     SLOT_FREE, slot_word)
from .lock import FileLock
from .segment import Segment

__all__ = ["SlotTable", "SlotInfo"]


@dataclass(frozen=True)
class SlotInfo:
    index: int
    state: int
    pid: int
    start_time: int
    read: int
    lost: int
    durable: str | None
    pid_ns: int = 0

    def liveness(self) -> liveness.Liveness:
        """Whether the slot's process can still act (``DEAD`` if it has none)."""
        return liveness.liveness(self.pid, self.start_time, self.pid_ns)


class SlotTable:
    """Operations on one segment's slot table."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.words = seg.words
        self.count = seg.slot_count

    def lock(self, timeout: float = 10.0):
        lk = FileLock(naming.ring_lock_name(self.seg.ring, "slots"),
                      namespace=self.seg.namespace, _internal=True)
        return lk.acquire(timeout)

    def info(self, i: int) -> SlotInfo:
        w, base = self.words, slot_word(i)
        return SlotInfo(i, w[base + S_STATE], w[base + S_PID], w[base + S_START],
                        w[base + S_READ], w[base + S_LOST],
                        layout.slot_name(self.seg.buf, i), w[base + S_PID_NS])

    def in_use(self) -> list[int]:
        w = self.words
        return [i for i in range(self.count) if w[slot_word(i) + S_STATE] != SLOT_FREE]

    def find_durable(self, name: str) -> int | None:
        for i in self.in_use():
            if self.words[slot_word(i) + S_STATE] == SLOT_DURABLE and \
                    layout.slot_name(self.seg.buf, i) == name:
                return i
        return None

    def claim(self, read: int, durable: str | None) -> int:
        """Claim a free slot (caller holds the lock) for this process at ``read``;
        reclaims slots of dead anonymous consumers when none is free."""
        free = self._first_free()
        if free is None:
            self.reclaim_dead()
            free = self._first_free()
        if free is None:
            raise RingBusy(
                f"ring {self.seg.ring!r} has no free consumer slot (all {self.count} are "
                "held by live consumers or durable cursors): close consumers, remove "
                f"unused durable cursors (`shmbus rm {self.seg.ring} --durable NAME`), or "
                "recreate the ring with more slots", name=self.seg.ring)
        w, base, me = self.words, slot_word(free), liveness.current()
        w[base + S_READ] = read
        w[base + S_LOST] = 0
        w[base + S_PID] = me.pid
        w[base + S_START] = me.start_time
        w[base + S_PID_NS] = liveness.pid_namespace()
        w[base + S_ATTACHED] = time.time_ns()
        layout.write_slot_name(self.seg.buf, free, durable)
        w[base + S_STATE] = SLOT_DURABLE if durable else SLOT_ACTIVE
        self.bump()
        return free

    def attach_durable(self, i: int) -> None:
        """Make this process the owner of durable slot ``i`` (caller holds the lock and
        the durable name's lock)."""
        w, base, me = self.words, slot_word(i), liveness.current()
        w[base + S_PID] = me.pid
        w[base + S_START] = me.start_time
        w[base + S_PID_NS] = liveness.pid_namespace()
        w[base + S_ATTACHED] = time.time_ns()
        self.bump()

    def detach(self, i: int, *, keep: bool) -> None:
        """Leave slot ``i``: a durable one keeps its cursor (``keep``), an anonymous one
        is freed.  Caller holds the lock."""
        w, base = self.words, slot_word(i)
        w[base + S_PID] = 0
        w[base + S_START] = 0
        w[base + S_PID_NS] = 0
        if not keep:
            w[base + S_STATE] = SLOT_FREE
            layout.write_slot_name(self.seg.buf, i, None)
        self.bump()

    def free(self, i: int) -> None:
        """Free slot ``i`` whatever it holds (caller holds the lock)."""
        self.detach(i, keep=False)

    def reclaim_dead(self, below: int | None = None) -> list[int]:
        """Free the slots of anonymous consumers whose process is dead (only those whose
        read position is below ``below``, if given).  Caller holds the lock.  A consumer
        in another PID namespace (a container sharing ``/dev/shm``) is freed only on
        proof that it is gone (:func:`shmbus.liveness.liveness`), never by its pid."""
        freed = []
        w = self.words
        for i in self.in_use():
            base = slot_word(i)
            if w[base + S_STATE] != SLOT_ACTIVE:
                continue
            if below is not None and w[base + S_READ] >= below:
                continue
            if liveness.is_dead(w[base + S_PID], w[base + S_START], w[base + S_PID_NS]):
                self.free(i)
                freed.append(i)
        return freed

    def bump(self) -> None:
        """Tell the producer the table changed (caller holds the lock), and keep the
        "wide" sleeper byte right: set while any slot without its own byte is in use."""
        wide = any(i >= FLAGGED_SLOTS for i in self.in_use())
        self.seg.buf[SLEEPERS_OFFSET + FLAGGED_SLOTS] = 1 if wide else 0
        self.words[H_GENERATION] += 1

    def _first_free(self) -> int | None:
        w = self.words
        for i in range(self.count):
            if w[slot_word(i) + S_STATE] == SLOT_FREE:
                return i
        return None
