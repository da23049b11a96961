"""``Inbox``: one receiver for many senders (:class:`~shmbus.outbox.Outbox`).

A ring has one producer; an Inbox reads the rings of all its Outboxes
(``NAME.from.SENDER``, see :mod:`shmbus.fanin`), each as the durable consumer
``inbox``, and hands out their messages as one stream:

* **Fair**: round-robin over the sender rings.  ``recv`` takes up to :data:`QUANTUM`
  messages from one sender while it has some, then moves to the next one that has any;
  ``recv_many`` starts each batch at the next sender and fills it from each in turn.
  No sender, however busy, keeps another waiting for more than that.
* **In order per sender**: each sender's messages arrive in the order it sent them;
  ``msg.sender`` (the consumer's ``sender``: ``PID.STARTTIME`` or the name the Outbox
  was given) says whose a message is.  Messages of different senders have no order.
* **As a Consumer**: ``recv(timeout)`` releases the previous message (on whichever
  ring) and returns the next; ``try_recv``, ``recv_many``, iteration, ``release``,
  ``recv_obj``, ``close(release=)`` and ``with`` behave the same.
* **New senders without system calls**: the Inbox loads the registry's generation word
  once per round; it lists ``/dev/shm`` only when an Outbox registered, and once a
  second (also to find senders that are gone).
* **Nothing sent is lost**: a sender that dies or closes leaves its ring; the Inbox
  receives everything in it, then (its producer lock free: the sender is gone, the
  kernel released it) removes the ring.  An Inbox that stops or crashes leaves its
  cursors in the rings: the next ``Inbox(name)`` resumes where it stopped (the message
  it held unreleased at a crash comes again, as with a durable Consumer).
* **Waiting sleeps**: with nothing to receive, the Inbox looks a few times, yields for
  a moment, then arms every sender's consumer and its doorbell and sleeps in ``epoll``
  on their wake-up FIFOs (see :mod:`shmbus.fanin`); Outboxes do nothing extra per
  message.  ``fileno``/``arm``/``disarm``/``ready`` make an Inbox
  :class:`~shmbus.poller.Waitable`: a :class:`shmbus.Poller` (or a selector, an event
  loop) waits on it like on a Consumer.
* **Only our rings**: a ring that is not ours (another user's) is never opened, as for
  any Consumer (:class:`PermissionDenied`); the Inbox skips it.

One Inbox per name at a time (:class:`RingBusy` otherwise).
"""

from __future__ import annotations

import os
import select
import time
from typing import Any, Callable, Iterator

from . import fanin, layout, liveness, naming, wakefifo
from .consumer import Consumer
from .errors import (CorruptRing, DurableBusy, LayoutMismatch, PermissionDenied, RingBusy,
                     RingNotFound, ShmbusError, Timeout)
from .fanin import W_CAPACITY, W_GENERATION, W_PID, W_START
from .handle import Handle
from .introspect import inspect
from .lock import FileLock
from .message import Message
from .objects import ObjectReceiver
from .unlink import unlink
from .wakeup import LONG_SLEEP, MAX_SLEEP, Sleeper

__all__ = ["Inbox", "QUANTUM", "DEFAULT_CAPACITY"]

QUANTUM = 256  # messages recv takes from one sender in a row while it has some
DEFAULT_CAPACITY = 1 << 20  # bytes per sender ring when no Inbox ever said
_MAINTAIN_EVERY = 1.0  # seconds between lists of /dev/shm and looks for gone senders
_SPINS = 200  # looks at the rings before yielding
_YIELD_FOR = 0.0002  # seconds of sched_yield before sleeping


def _no_sender() -> Message | None:
    raise AssertionError("Inbox.recv used a sender it had not chosen")  # pragma: no cover


class _Sender:
    __slots__ = ("sender", "ring", "consumer")

    def __init__(self, sender: str, ring: str, consumer: Consumer) -> None:
        self.sender, self.ring, self.consumer = sender, ring, consumer


def _unread_by_others(ring: str, ns: str) -> bool:
    """Whether a durable consumer other than the Inbox has not read all of ``ring``
    (a ring of ours named like a sender ring, made for other readers too)."""
    try:
        info = inspect(ring, namespace=ns)
    except ShmbusError:
        return False
    return any(c["durable"] not in (None, "", fanin.DURABLE) and c["lag_bytes"] > 0
               for c in info["consumers"])


def _identity(path: str) -> tuple[int, int, int] | None:
    """Which file ``path`` is now (inode, device, change time), None if none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_ctime_ns


class Inbox(ObjectReceiver, Handle):
    """The receiver of Inbox ``name`` (see the module docstring).

    ``capacity``: bytes of each sender ring the Outboxes create from now on (rounded
    up to a power of two); default: what the last Inbox of that name said, else
    :data:`DEFAULT_CAPACITY`.  Rings that exist keep theirs.

    ``close()`` may be called from any thread: a thread blocked in ``recv`` wakes with
    :class:`Closed`.  An Inbox belongs to the process that opened it.
    """

    _kind = "inbox"

    def __init__(self, name: str, *, capacity: int | None = None,
                 namespace: str | None = None) -> None:
        self._closed = True
        self.name = fanin.check_inbox_name(name)
        self.namespace = ns = naming.resolve_namespace(namespace)
        cap = layout.round_capacity(capacity) if capacity is not None else None
        self._live = fanin.inbox_lock(ns, name)
        if not self._live.try_acquire():
            holders = [h.pid for h in self._live.holders() if not h.waiting]
            pid = holders[0] if holders else None
            raise RingBusy(f"inbox {name!r} is already open (pid {pid}): one Inbox per "
                           "name at a time; close that one, or use another name",
                           name=name, pid=pid)
        self._reg: fanin.Registry | None = None
        self._bell: Sleeper | None = None
        self._senders: list[_Sender] = []
        self._epoll: select.epoll | None = None  # made on the first wait
        try:
            with fanin.registry_lock(ns, name).acquire(10.0):
                reg = fanin.Registry.open(ns, name, create=True)
            assert reg is not None  # made if missing
            self._reg = reg
            w = self._words = reg.words
            me = liveness.current()
            w[W_PID], w[W_START] = me.pid, me.start_time
            w[W_CAPACITY] = cap or w[W_CAPACITY] or DEFAULT_CAPACITY
            self.capacity = w[W_CAPACITY]
            # A doorbell FIFO left by an Inbox that crashed waiting: nobody reads it.
            wakefifo.remove_unused(ns, f"{name}@inbox{wakefifo.SUFFIX}")
            self._bell = fanin.doorbell(w, ns, name)
            self._armed: list[Consumer] = []
            self._next = 0  # the sender the next round starts at
            self._gen = -1
            self._due = 0.0  # time.monotonic() of the next maintenance
            self._held: dict[int, Consumer] = {}  # consumers holding unreleased messages
            self.refused: dict[str, str] = {}  # ring -> why it was not opened
            self._refused_ids: dict[str, tuple[int, int, int] | None] = {}
            self._maintain()
            self._bind()
        except BaseException:
            self._let_go(release=False)
            raise
        self._opened()

    # -- the sender rings -------------------------------------------------------------

    @property
    def senders(self) -> list[str]:
        """The sender ids whose rings this Inbox reads now."""
        return [s.sender for s in self._senders]

    def _rescan(self) -> None:
        """Open the sender rings that appeared (the generation is loaded first: an
        Outbox bumps it after making its ring).  An entry refused as not ours is not
        opened again while it is the same file: another user who plants thousands of
        names would otherwise cost every rescan (once a second) an open of each."""
        gen = self._words[W_GENERATION]
        known = {s.ring for s in self._senders}
        listed = fanin.sender_rings(self.namespace, self.name)
        for ring in set(self.refused) - set(listed.values()):  # gone: forget it
            del self.refused[ring]
            self._refused_ids.pop(ring, None)
        for sender, ring in sorted(listed.items()):
            if ring in known:
                continue
            seen = _identity(naming.segment_path(self.namespace, ring))
            if seen is not None and self._refused_ids.get(ring) == seen:
                continue  # refused, and still that very file
            try:
                consumer = Consumer(ring, durable=fanin.DURABLE, start="earliest",
                                    namespace=self.namespace)
            except (RingNotFound, DurableBusy):
                continue  # removed meanwhile, or its Outbox is making the cursor: it
                # bumps the generation after that, so the next round opens it
            except (PermissionDenied, CorruptRing, LayoutMismatch) as e:
                self.refused[ring] = str(e)  # never read: not ours, or not readable
                if isinstance(e, PermissionDenied):
                    self._refused_ids[ring] = seen
                continue
            consumer.sender = sender  # msg.sender
            self.refused.pop(ring, None)
            self._senders.append(_Sender(sender, ring, consumer))
            if self._epoll is not None:
                self._epoll.register(consumer.fileno(), select.EPOLLIN)
        self._gen = gen

    def _maintain(self) -> None:
        """List /dev/shm for new rings, and remove the drained rings of gone senders."""
        self._rescan()
        for s in list(self._senders):
            if not s.consumer.ready():
                self._remove_if_gone(s)
        self._due = time.monotonic() + _MAINTAIN_EVERY

    def _remove_if_gone(self, s: _Sender) -> None:
        """Remove sender ``s``'s ring if its producer is gone (its lock is free: the
        kernel releases it when the process dies) and everything in it was received.
        Holding the lock, no producer can start meanwhile."""
        lock = FileLock(naming.ring_lock_name(s.ring, "producer"),
                        namespace=self.namespace, reentrant=False, _internal=True)
        if not lock.try_acquire():
            return  # alive (or, in this process, open)
        try:
            if s.consumer.ready():
                return  # it sent more before it stopped: receive that first
            if _unread_by_others(s.ring, self.namespace):
                return  # as gc: a durable cursor of another consumer is behind
            self._held.pop(id(s.consumer), None)
            s.consumer.close()
            self._senders.remove(s)
            try:
                unlink(s.ring, namespace=self.namespace)
            except ShmbusError:
                pass  # not ours to remove any more (replaced?): gc says why
        finally:
            lock.release()

    # -- receiving ----------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message:
        """Release the previous message and return the next one from any sender, waiting
        up to ``timeout`` seconds (None: forever); raises :class:`Timeout`."""
        msg: Message = self.__dict__["recv"](timeout)
        return msg

    def recv_many(self, max_messages: int, timeout: float | None = None) -> list[Message]:
        """Release the previous batch; wait up to ``timeout`` for a message, then return
        every message there is now, at most ``max_messages``, taken from the senders in
        turn (each batch starts at the next sender).  Raises :class:`Timeout` only if
        none arrived."""
        batch: list[Message] = self.__dict__["recv_many"](max_messages, timeout)
        return batch

    def _bind(self) -> None:
        """Build ``recv`` and ``recv_many``.  ``recv``'s hot path is one call of the
        current sender's own (compiled) ``try_recv``, which answers None for a ring
        gone empty without an exception; rounds, waiting and maintenance are in
        ``take``."""
        me = self
        words, senders, held = self._words, self._senders, self._held
        left = 0  # messages recv may still take from the current sender
        # The current sender's try_recv (None when its ring is empty: no exception).
        cur_try: Callable[[], Message | None] = _no_sender  # used only while left

        def recv(timeout: float | None = None) -> Message:
            nonlocal left
            if left:
                left -= 1
                msg = cur_try()
                if msg is not None:
                    return msg
            return take(timeout)

        def take(timeout: float | None) -> Message:
            nonlocal left, cur_try
            left, cur_try = 0, _no_sender
            deadline = None
            try:
                me._release_held()
                while True:
                    if words[W_GENERATION] != me._gen or time.monotonic() >= me._due:
                        me._maintain()
                    n = len(senders)
                    start = me._next
                    for k in range(n):
                        i = (start + k) % n
                        c = senders[i].consumer
                        msg = c.try_recv()
                        if msg is not None:
                            me._next = (i + 1) % n
                            held[id(c)] = c
                            cur_try, left = c.try_recv, QUANTUM - 1
                            return msg
                    if deadline is None and timeout is not None:
                        deadline = time.monotonic() + timeout
                    me._wait(deadline, timeout)
            except ValueError as e:  # a released view: closed by another thread?
                raise me._closed_or(e) from None

        def recv_many(max_messages: int, timeout: float | None = None) -> list[Message]:
            nonlocal left, cur_try
            if max_messages < 1:
                raise ValueError(f"max_messages must be >= 1, got {max_messages!r}")
            left, cur_try = 0, _no_sender
            deadline = None
            try:
                me._release_held()
                while True:
                    if words[W_GENERATION] != me._gen or time.monotonic() >= me._due:
                        me._maintain()
                    n = len(senders)
                    start = me._next
                    me._next = (start + 1) % n if n else 0
                    batch: list[Message] = []
                    for k in range(n):
                        c = senders[(start + k) % n].consumer
                        if c.ready():
                            try:
                                batch += c.recv_many(max_messages - len(batch), 0)
                            except Timeout:
                                continue
                            held[id(c)] = c
                            if len(batch) >= max_messages:
                                break
                    if batch:
                        return batch
                    if deadline is None and timeout is not None:
                        deadline = time.monotonic() + timeout
                    me._wait(deadline, timeout)
            except ValueError as e:
                raise me._closed_or(e) from None

        self.recv = recv  # type: ignore[method-assign]
        self.recv_many = recv_many  # type: ignore[method-assign]

    def _release_held(self) -> None:
        held = self._held
        if self._closed:
            raise self._closed_error()
        for c in held.values():
            c.release()
        held.clear()

    def _ready(self) -> bool:
        """Something to do: closed, a new sender, a message, or maintenance due."""
        if self._closed or self._words[W_GENERATION] != self._gen:
            return True
        for s in self._senders:
            if s.consumer.ready():
                return True
        return False

    def _wait(self, deadline: float | None, timeout: float | None) -> None:
        """Wait until :meth:`_ready`, maintenance is due, or ``deadline``: look a few
        times, yield for a moment, then arm and sleep in ``epoll``.  Raises
        :class:`Timeout` or :class:`Closed`."""
        ready = self._ready
        due = self._due if deadline is None else min(deadline, self._due)
        if deadline is None or time.monotonic() < deadline:
            for _ in range(_SPINS):
                if ready():
                    return
            until = time.monotonic() + _YIELD_FOR
            while not ready():
                now = time.monotonic()
                if now >= due:
                    break
                if now >= until:
                    self._sleep(due)
                    break
                os.sched_yield()
        try:
            if self._closed:
                raise self._closed_error()
            if deadline is not None and time.monotonic() >= deadline and not ready():
                raise Timeout(f"no message in inbox {self.name!r} within {timeout} s",
                              name=self.name, timeout=timeout)
        except ValueError as e:  # closed by another thread while we looked
            raise self._closed_or(e) from None

    def _sleep(self, until: float) -> None:
        """Arm, then sleep in ``epoll`` until something is ready or ``until``, with the
        bounded timeouts of :mod:`shmbus.wakeup`."""
        try:
            if self.arm():
                return
            ep = self._epoll
            assert ep is not None
            since = time.monotonic()
            try:
                while not self._ready():
                    now = time.monotonic()
                    left = until - now
                    if left <= 0:
                        return
                    wait = min(left, MAX_SLEEP if now - since < MAX_SLEEP else LONG_SLEEP)
                    if ep.poll(wait) and not self._ready():
                        # Woken, yet nothing to receive (a wake-up written late, or a
                        # member's byte): read the FIFOs empty and arm again, never spin.
                        self.disarm()
                        if self.arm():
                            return
                        since = time.monotonic()
            finally:
                self.disarm()
        except (OSError, ValueError, ShmbusError):
            if not self._closed:
                raise  # closed by another thread meanwhile: the caller raises Closed

    # -- waiting with others: shmbus.Poller, selectors, event loops ----------------------

    def fileno(self) -> int:
        """A descriptor (an ``epoll``) that becomes readable when, armed (:meth:`arm`),
        a sender sends or a new sender joins: for :class:`shmbus.Poller`, ``selectors``
        and event loops.  Creates the wake-up FIFOs on first use."""
        if self._closed:
            raise self._closed_error()
        if self._epoll is None:
            ep = select.epoll()
            try:
                ep.register(self._bell.fileno(), select.EPOLLIN)  # type: ignore[union-attr]
                for s in self._senders:
                    ep.register(s.consumer.fileno(), select.EPOLLIN)
            except BaseException:
                ep.close()
                raise
            self._epoll = ep
        return self._epoll.fileno()

    def arm(self) -> bool:
        """Ask to be woken through :meth:`fileno`: arm every sender's consumer and the
        doorbell.  True (nothing left armed) if something is ready already; then watch
        the descriptor with bounded timeouts (10 ms, then 0.5 s), and :meth:`disarm`
        before receiving."""
        if self._closed:
            return True
        self.fileno()
        if self._words[W_GENERATION] != self._gen:
            return True
        armed = self._armed
        bell = self._bell
        assert bell is not None
        gen = self._gen
        if bell.arm(lambda: self._closed or self._words[W_GENERATION] != gen):
            return True
        for s in self._senders:
            if s.consumer.arm():
                self.disarm()
                return True
            armed.append(s.consumer)
        return False

    def disarm(self) -> None:
        """Stop being woken through :meth:`fileno` (reads the FIFOs empty)."""
        for c in self._armed:
            c.disarm()
        self._armed.clear()
        if self._bell is not None:
            self._bell.disarm()

    def ready(self) -> bool:
        """Whether a receive would not wait now (a message, a new sender, or closed)."""
        try:
            return self._ready()
        except ValueError:  # closed by another thread meanwhile
            return True

    def try_recv(self) -> Message | None:
        """Like :meth:`recv` but never waits: None when no message is there."""
        try:
            return self.recv(0)
        except Timeout:
            return None

    def release(self) -> None:
        """Acknowledge every message received so far."""
        if not self._closed:
            self._release_held()

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        return self.recv()

    @property
    def pending(self) -> int:
        """Messages waiting in the sender rings (not yet received)."""
        return sum(s.consumer.pending for s in self._senders)

    def __len__(self) -> int:
        return self.pending

    def __bool__(self) -> bool:
        return True

    # -- lifetime -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, *, release: bool = True) -> None:
        """Stop receiving (idempotent, from any thread).  With ``release`` (the default)
        every message received so far counts as acknowledged.  The cursors stay in the
        sender rings for the next Inbox of this name; the registry goes if no sender
        ring is left."""
        if self.forked or not self._mark_closed():
            return
        self._sever()
        self._let_go(release)

    def _let_go(self, release: bool) -> None:
        try:
            if self._bell is not None:
                self._bell.close()  # wakes a thread blocked in recv
            if release:  # what is all received of a gone sender goes now
                for c in self._held.values():
                    c.release()
                self._held.clear()
                for s in list(self._senders):
                    if not s.consumer.ready():
                        self._remove_if_gone(s)
            for s in self._senders:
                try:
                    s.consumer.close(release=release or id(s.consumer) not in self._held)
                except ShmbusError:
                    pass
            self._senders.clear()
            self._remove_registry_if_unused()
        finally:
            if self._epoll is not None:
                self._epoll.close()
            if self._reg is not None:
                self._reg.close()
            if self._live.held:
                self._live.release()

    def _remove_registry_if_unused(self) -> None:
        ns = self.namespace
        try:
            with fanin.registry_lock(ns, self.name).acquire(1.0):
                if not fanin.sender_rings(ns, self.name):
                    fanin.remove_registry(ns, self.name)
        except ShmbusError:
            pass  # busy: gc removes it later

    def _sever(self) -> None:
        self.recv = self.recv_many = self._refuse  # type: ignore[method-assign]

    def __enter__(self) -> "Inbox":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(release=exc_type is None)

    def __repr__(self) -> str:
        return (f"<Inbox {self.name!r} ns={self.namespace!r} "
                f"senders={len(self._senders)}>")
