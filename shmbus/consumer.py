"""``Consumer`` and ``Message``: reading a ring, each consumer at its own pace.

A consumer owns one slot of the ring's table; its read position there is the end of
what it has *released* (acknowledged): ``recv()`` releases the previous message before
returning the next, ``recv_many()`` the previous batch, and ``Message.release()`` /
``Consumer.release()`` do it explicitly.  In ``block`` mode the producer never
overwrites what a consumer has not released, so ``Message.data`` is a zero-copy view
into the ring, valid until it is released; after that ``msg.data`` and ``bytes(msg)``
raise :class:`~shmbus.Released`, and the views handed out before are released (see
:mod:`shmbus.message`).

The receive calls are the compiled reader's (``shmbus/csrc/reader.c``) or their
pure-Python twins (:mod:`shmbus.reader`); both hand every unusual case to the slow
path (:mod:`shmbus.slowpath`).

Data the producer may overwrite while we read it is *checked*: copied, then the tail is
re-read, and if the producer had already moved past the record we count it lost and
move on; a torn read is never returned.  That is every record of an ``overwrite`` ring,
and, on a ``block`` ring, the records a ``start="earliest"`` consumer finds below the
producer's gate at the moment it joined (the producer honours the new slot only from
its next scan of the table; see :meth:`Consumer._join`).
"""

from __future__ import annotations

import os
import time
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from . import hotpath, layout, liveness, naming, ring
from .errors import DurableBusy
from .handle import Handle
from .objects import ObjectReceiver
from .introspect import messages_from
from .layout import (FLAGGED_SLOTS, H_GATE, H_PRODUCER_PID, H_PRODUCER_SLEEP,
                     H_SCAN, H_TAIL, H_WRITE, RECORD_HEADER, S_LOST, S_NEXT_SEQ,
                     S_READ, S_SLEEP, SLEEPERS_OFFSET, slot_word)
from .arrays import recv_array
from .lock import FileLock
from . import reader
from .message import Message, PyMessage
from .reader import Reader
from .segment import Segment
from .slots import SlotTable
from .slowpath import SlowPath
from .wait import Sleeper, Waker, fence, strategy

if TYPE_CHECKING:
    import numpy.typing as npt
    from typing_extensions import Self

    from .choices import Start, WaitName
    from .wait import WaitStrategy

__all__ = ["Consumer", "Message"]

_NEVER = (1 << 64) - 1  # a position no ring reaches
_STARTS = ("latest", "earliest")


class Consumer(SlowPath, ObjectReceiver, Handle):
    """A reader of ring ``name`` that receives every message, in order.

    ``durable=NAME`` keeps the read position in the ring after this process exits or
    dies; the next ``Consumer(name, durable=NAME)`` resumes there (one live process per
    durable name: :class:`DurableBusy` otherwise).  A new consumer starts at
    ``start="latest"`` (only messages sent from now on) or ``"earliest"`` (the oldest
    message the ring still holds).  ``wait`` is the wait strategy (see
    :mod:`shmbus.wait`).  Raises :class:`RingNotFound` if the ring does not exist.

    ``close()`` may be called from any thread: a thread blocked in ``recv``,
    ``recv_many``, ``recv_array`` or iteration wakes and gets :class:`Closed`, as does
    every later call.  A consumer belongs to the process that opened it: in a forked
    child it raises :class:`Closed` (open a new one there).
    """

    _kind = "consumer"
    sender: str | None = None  # what msg.sender says (an Inbox names its senders)
    _resumed = False  # attached to an existing durable cursor

    def __init__(self, name: str, *, durable: str | None = None, start: Start = "latest",
                 namespace: str | None = None,
                 wait: WaitName | WaitStrategy = "adaptive") -> None:
        self._closed = True
        naming.check_name(name)
        if durable is not None:
            naming.check_name(durable, "durable name")
        if start not in _STARTS:
            raise ValueError(f"start must be one of {_STARTS}, got {start!r}")
        self.name, self.durable = name, durable
        self.namespace = ns = naming.resolve_namespace(namespace)
        how = strategy(wait)
        self._seg = seg = Segment.open(ns, name)
        self._durable_lock = None
        try:
            if durable is not None:
                self._durable_lock = self._lock_durable(durable)
            self._slots = SlotTable(seg)
            with self._slots.lock():
                self.slot, pos = self._attach(start)
            self._setup(how, pos)
        except BaseException:
            if hasattr(self, "slot"):  # give the slot back (a durable one keeps its cursor)
                with self._slots.lock():
                    self._slots.detach(self.slot, keep=durable is not None)
            if self._durable_lock is not None:
                self._durable_lock.release()
            cur = getattr(self, "_cur", None)
            if cur is not None:
                cur.release()  # the compiled cursor holds the mapping
            seg.close()
            raise
        self._opened()

    def _lock_durable(self, durable: str) -> FileLock:
        lock = FileLock(naming.ring_lock_name(self.name, "durable." + durable),
                        namespace=self.namespace, reentrant=False, _internal=True)
        if not lock.try_acquire():
            holders = [h for h in lock.holders() if not h.waiting]
            pid = holders[0].pid if holders else None
            raise DurableBusy(
                f"durable consumer {durable!r} of ring {self.name!r} is already attached "
                f"in pid {pid}: one process per durable name; stop it, or use another "
                "durable name (for a work queue use a balancer)",
                name=self.name, durable=durable, pid=pid)
        return lock

    def _attach(self, start: str) -> tuple[int, int]:
        w, slots = self._seg.words, self._slots
        if self.durable is not None:
            i = slots.find_durable(self.durable)
            if i is not None:
                slots.attach_durable(i)
                self._resumed = True
                return i, w[slot_word(i) + S_READ]
        if start == "latest":
            pos = w[H_WRITE]
        else:
            write = w[H_WRITE]
            pos = ring.find_boundary(w, layout.block_shift(self._seg.capacity), w[H_TAIL],
                                     write)
            pos = write if pos is None else pos
        return slots.claim(pos, self.durable), pos

    def _setup(self, how, pos: int) -> None:
        seg = self._seg
        self._words = w = seg.words
        self._data = seg.data
        self.capacity = cap = seg.capacity
        self._mask = cap - 1
        self._shift = layout.block_shift(cap)
        self._pad_limit = layout.pad_limit(cap)
        self._max_record = layout.max_record(cap)
        base = slot_word(self.slot)
        self._read_word = base + S_READ
        self._lost_word = base + S_LOST
        self.lost = w[self._lost_word]
        self._next_word = base + S_NEXT_SEQ if seg.overwrite else 0
        self._producer_waker = Waker(naming.producer_semaphore_name(self.namespace,
                                                                    self.name))
        self._cur = Reader(pos, w, self._read_word, self._next_word,
                           self._producer_waker.wake)
        # The seq the next record must carry (None: not known yet; see _check_seq).
        self._expect: int | None = None if seg.overwrite else self._seq_at(pos)
        self._lapped = False         # a jump the tail proved: a higher seq is a loss
        self._loose = self._resumed  # a stored next seq may be ahead of the cursor
        if seg.overwrite:
            # A durable cursor lapped while nobody was attached: the seq it stored at
            # its last release tells how many messages went by unseen.
            stored = w[self._next_word] if self._resumed else 0
            self._expect = stored - 1 if stored else self._seq_at(pos)
            w[self._next_word] = stored
        flag = (seg.buf, SLEEPERS_OFFSET + self.slot) if self.slot < FLAGGED_SLOTS else None
        self._sleeper = Sleeper(w, base + S_SLEEP, naming.consumer_semaphore_name(
            self.namespace, self.name, self.slot), how, flag)
        self._safe_from = _NEVER if seg.overwrite else self._join(pos)
        self._bind_recv()

    def _join(self, pos: int) -> int:
        """Return the position from which the producer is sure to honour our slot.

        The producer publishes the gate it uses with a scan epoch that is odd while it
        reads the slot table.  We have stored our slot; after a fence, an even epoch
        means that every later scan sees our slot, and that the producer only relies on
        the gate we read until then: data at or above it is protected.
        """
        w = self._words
        fence()
        deadline = time.monotonic() + 0.05
        give_up = deadline + 1.0
        while True:
            epoch = w[H_SCAN]
            gate = w[H_GATE]
            if not epoch & 1:
                if w[H_SCAN] == epoch:
                    return max(pos, gate)
            elif time.monotonic() > deadline:
                pid = w[H_PRODUCER_PID]
                if not pid or liveness.is_dead(pid, 0, w[layout.H_PRODUCER_PID_NS]):
                    return max(pos, gate)  # it died mid-scan; its successor rescans
                if time.monotonic() > give_up:
                    # A live producer stuck mid-scan (stopped?): never hang, never trust
                    # zero-copy: check (copy, then validate) every read from now on.
                    return _NEVER
                deadline = time.monotonic() + 0.05
            os.sched_yield()

    # -- receiving --------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message:
        """Release the previous message and return the next one, waiting up to
        ``timeout`` seconds (None: forever); raises :class:`Timeout`.  Raises
        :class:`CorruptRing`, without moving past it, at a record that breaks the
        ring's rules (its size, the write position, a seq out of turn)."""
        # Each instance shadows this method with the closure built by _bind_recv.
        return self.__dict__["recv"](timeout)

    def recv_many(self, max_messages: int, timeout: float | None = None) -> list[Message]:
        """Release the previous batch; wait up to ``timeout`` for at least one message,
        then return every message available now, at most ``max_messages``.  Raises
        :class:`Timeout` only if none arrived.  A batch stops before a corrupt record;
        the next call raises :class:`CorruptRing` there."""
        return self.__dict__["recv_many"](max_messages, timeout)

    def try_recv(self) -> Message | None:
        """Like :meth:`recv` but never waits: None when no message is there."""
        return self.__dict__["try_recv"]()

    def _bind_recv(self) -> None:
        """Build this consumer's ``recv``, ``recv_many`` and ``try_recv``: the
        compiled reader's (:mod:`shmbus.hotpath`), or their pure-Python twins
        (:func:`shmbus.reader.bind`); both leave every unusual case to :meth:`_take`."""
        if not hotpath.compiled:
            self._message = PyMessage
            self.recv, self.recv_many, self.try_recv = reader.bind(self)
            return
        seg, cur = self._seg, self._cur
        self._cur = fast = hotpath.native.Reader(
            segment=seg.buf, data_view=self._data, data_offset=seg.data_offset,
            capacity=self.capacity, pad_limit=self._pad_limit, write_word=H_WRITE,
            tail_word=H_TAIL, producer_sleep_word=H_PRODUCER_SLEEP,
            read_word=self._read_word, next_word=self._next_word,
            safe_from=self._safe_from, pos=cur.pos, committed=cur.committed,
            expect=cur.expect, owner=self, take=self._take, take_next=self._take_next,
            try_take=self._try_take, wake=self._producer_waker.wake,
            spins=min(self._sleeper.how.spin, 1 << 30))
        fast.lapped, fast.loose = cur.lapped, cur.loose
        self._message = hotpath.native.Message
        self.recv, self.recv_many, self.try_recv = fast.recv, fast.recv_many, fast.try_recv

    def recv_array(self, dtype: npt.DTypeLike, max_messages: int,
                   timeout: float | None = None) -> npt.NDArray[Any]:
        """Release the previous batch; wait up to ``timeout`` for a message, then return
        up to ``max_messages`` messages of ``dtype``'s size (without a key) as one
        read-only numpy array of ``dtype`` that views the ring (zero copies; valid until
        the next receive).  A batch stops at a message of another size, at a key, and
        at the end of the ring's data area.  Raises :class:`Timeout`, and ValueError
        if the next message does not fit ``dtype`` (receive it with :meth:`recv`),
        :class:`CorruptRing` like :meth:`recv`.  On ``overwrite`` rings each call
        returns one message, copied."""
        return recv_array(self, dtype, max_messages, timeout)

    def release(self) -> None:
        """Acknowledge every message received so far."""
        self._commit_to(self._pos, self._expect)

    def _commit_to(self, end: int, next_seq: int | None = None) -> None:
        if not self._closed:
            self._store_read(end, next_seq)

    def _store_read(self, end: int, next_seq: int | None) -> None:
        """Release up to ``end`` (see :meth:`Reader.commit`); ``next_seq`` is the seq
        of the message after it, if known."""
        self._cur.commit(end, next_seq)

    # -- waiting in a selector, a Poller or an event loop (see shmbus.wakeup) -----------

    def fileno(self) -> int:
        """A descriptor that becomes readable when a message arrives while this
        consumer is armed (:meth:`arm`): for ``selectors``, :class:`shmbus.Poller`,
        event loops.  Its wake-up FIFO is created on first use, removed on close."""
        if self._closed:
            raise self._closed_error()
        return self._sleeper.fileno()

    def arm(self) -> bool:
        """Ask to be woken through :meth:`fileno`; True (and not armed) if a receive
        would find something now.  Then watch the descriptor with a timeout of at most
        10 ms, 0.5 s once 10 ms have passed (:mod:`shmbus.wakeup` says why), and call
        :meth:`disarm` before receiving."""
        return self._sleeper.arm(self.ready)

    def disarm(self) -> None:
        """Stop being woken through :meth:`fileno` (reads it empty)."""
        self._sleeper.disarm()

    def ready(self) -> bool:
        """Whether a receive would not wait now (a message, or the consumer closed)."""
        try:
            return self._closed or self._words[H_WRITE] > self._cur.pos
        except AttributeError:  # closed by another thread meanwhile
            return True

    # -- iteration and lifetime ---------------------------------------------------------

    def __iter__(self) -> "Consumer":
        return self

    def __next__(self) -> Message:
        return self.recv()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def position(self) -> int:
        """Byte position of the next message to receive."""
        return self._pos

    @property
    def lag(self) -> int:
        """Bytes published but not yet received."""
        return max(0, self._words[H_WRITE] - self._pos)

    @property
    def pending(self) -> int:
        """Messages published but not yet received (:attr:`lag` counts them in bytes),
        counted by seq: a snapshot, more may arrive meanwhile.  On an ``overwrite``
        ring, messages the producer overwrote before they were received are not
        counted (they are :attr:`lost`).  Reads a few records: not for every message.
        Raises :class:`Closed` on a closed consumer."""
        if self._closed:
            raise self._closed_error()
        w, cap = self._words, self.capacity
        n = messages_from(w, self._data, cap, self._pos, self._expect, name=self.name)
        # None: a producer too fast to look at consistently; the smallest record size
        # bounds the count from above.
        return n if n is not None else max(0, w[H_WRITE] - self._pos) // RECORD_HEADER

    def __len__(self) -> int:
        """``len(sub)`` is :attr:`pending`: messages waiting to be received."""
        return self.pending

    def __bool__(self) -> bool:
        """Always true, like an open file: an open consumer with nothing waiting
        (``len(sub) == 0``) is not false."""
        return True

    def close(self, *, release: bool = True) -> None:
        """Leave the ring (idempotent, from any thread: a thread blocked in a receive
        wakes with :class:`Closed`).  With ``release`` (the default) every message
        received so far counts as acknowledged; a durable consumer keeps its cursor in
        the ring for the next process with its name."""
        if self.forked or not self._mark_closed():
            return
        if release:
            self._store_read(self._pos, self._expect)
        self._sever()
        try:
            with self._slots.lock():
                self._slots.detach(self.slot, keep=self.durable is not None)
        finally:
            self._sleeper.close()  # wakes blocked threads; freed when they have left
            self._producer_waker.close()
            if self._durable_lock is not None:
                self._durable_lock.release()
            self._cur.release()
            del self._words, self._data
            self._seg.close()

    # The cursor's fields, for the slow paths (arrays, forward, worker, release).
    _pos = property(attrgetter("_cur.pos"), lambda self, v: setattr(self._cur, "pos", v))
    _committed = property(attrgetter("_cur.committed"),
                          lambda self, v: setattr(self._cur, "committed", v))
    _wcache = property(attrgetter("_cur.wcache"),
                       lambda self, v: setattr(self._cur, "wcache", v))
    _expect = property(attrgetter("_cur.expect"),
                       lambda self, v: setattr(self._cur, "expect", v))
    # A jump the tail proved (a higher seq is a loss); a resumed cursor whose stored
    # next seq may be ahead of it.  Both make the next seq the slow path's to judge.
    _lapped = property(attrgetter("_cur.lapped"),
                       lambda self, v: setattr(self._cur, "lapped", v))
    _loose = property(attrgetter("_cur.loose"),
                      lambda self, v: setattr(self._cur, "loose", v))

    def _sever(self) -> None:
        # Calls go to the refusal; a recv closure someone kept finds nothing to read
        # (positions at the end of time) and falls through to _take, which refuses.
        self.recv = self.recv_many = self.try_recv = self._refuse
        self._pos = self._committed = _NEVER

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Leaving on an exception: the message being processed is not acknowledged.
        self.close(release=exc_type is None)

    def __repr__(self) -> str:
        who = f"durable={self.durable!r}" if self.durable else "anonymous"
        return f"<Consumer {self.name!r} ns={self.namespace!r} {who} slot={self.slot}>"


