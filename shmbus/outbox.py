"""``Outbox``: one of many senders into an :class:`~shmbus.inbox.Inbox`.

Each Outbox writes into a ring of its own, ``INBOX.from.SENDER``, as its single
producer (see :mod:`shmbus.fanin` for the names, the registry and the doorbell).

**Decision: the ring is made on first use, and the first send waits for the Inbox.**
``Outbox(name)`` does nothing shared; the first ``send`` (or ``send_many``, ``claim``,
``send_obj``) creates the ring with the capacity the Inbox set in its registry, gives
the ring the Inbox's durable cursor at its start (so nothing sent before the Inbox
attaches to it can be overwritten), and registers it.  If no Inbox of that name has
ever been opened (no registry: nobody has said what capacity the rings have), that first
send waits for one, up to its ``timeout`` (None: as long as it takes), then raises
:class:`Timeout`.  An Inbox that has stopped or crashed leaves its registry while
sender rings remain, so Outboxes go on sending into their rings meanwhile (until a ring
is full: then ``send`` waits for room, as on any ``block`` ring), and the next Inbox of
that name receives it all.

A closed (or dead) Outbox's ring stays until the Inbox has received everything in it;
then the Inbox removes it.

**Decision: a sender whose ring is full sleeps at once** (its producer's wait strategy
is ``"sleep"``, not ``"adaptive"``): it waits for the one receiver that serves every
sender, and spinning or yielding meanwhile only takes CPU from that receiver when
there are more senders than cores.  Measured (``python -m bench.fan_in_throughput``,
2 shared cores): 4 senders into an Inbox with batches of 256 went from 37-40% of one
ring's rate to 102-108%.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable

from . import fanin, layout, naming
from .errors import (CorruptRing, DurableBusy, LayoutMismatch, PermissionDenied, RingBusy,
                     RingNotFound, Timeout)
from .fanin import W_BELL, W_CAPACITY, W_GENERATION
from .claim import Claim
from .handle import Handle
from .objects import ObjectSender
from .producer import Producer
from .wait import Waker

if TYPE_CHECKING:
    from typing_extensions import Buffer
    from .choices import Payload

    from .choices import CodecName

__all__ = ["Outbox"]

_open: set[tuple[str, str, str]] = set()  # (namespace, inbox, sender) open here
_open_guard = threading.Lock()
# A sender whose ring is full waits for the one receiver that serves them all: spinning
# or yielding there only takes CPU from it (more senders than cores): sleep at once.
_WAIT = "sleep"
_SQUATTED = 3  # ids tried when another user planted a ring under our default one
_BUSY_RETRY = 1.0  # seconds: the Inbox holds a gone sender's producer lock while it
# removes its ring; a sender of that id starting again meanwhile waits that long


class Outbox(ObjectSender, Handle):
    """A sender into Inbox ``name``: ``send``, ``send_many``, ``claim`` and ``send_obj``
    as on a :class:`~shmbus.Producer`, from any number of processes at once.

    ``sender`` names this sender (``msg.sender`` on the Inbox's side; a ring name's
    characters); by default ``PID.STARTTIME`` of this process (``.N`` appended for a
    second Outbox of the same Inbox open in this process; ``.rHEX``, unpredictable,
    if another user planted a ring under the default name).  A sender id used by a live
    Outbox elsewhere raises :class:`RingBusy` at the first send.  Each sender's
    messages arrive in the order it sent them.  See the module docstring for what the
    first send does and waits for.
    """

    _kind = "outbox"

    def __init__(self, name: str, *, namespace: str | None = None,
                 sender: str | None = None) -> None:
        self._closed = True
        self.name = fanin.check_inbox_name(name)
        self.namespace = naming.resolve_namespace(namespace)
        if sender is not None:
            fanin.sender_ring(name, sender)  # checks it
        self._wanted = sender
        self.sender: str | None = None  # known from the first send
        self._producer: Producer | None = None
        self._registry: fanin.Registry | None = None
        self._waker: Waker | None = None
        self._key: tuple[str, str, str] | None = None
        self._attaching = threading.Lock()
        self.send = self._first_send  # type: ignore[method-assign]
        self._opened()

    # -- attaching (first use) --------------------------------------------------------

    def _first_send(self, data: Any, key: Any = None, *, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._attach(deadline, timeout)
        return self.send(data, key, timeout=_left(deadline))

    def _attach(self, deadline: float | None, timeout: float | None) -> Producer:
        """Open (or make) this sender's ring; wait for the Inbox's registry until
        ``deadline``."""
        with self._attaching:
            if self._closed:
                raise self._closed_error()
            if self._producer is not None:
                return self._producer
            delay = 0.001
            while True:
                with fanin.registry_lock(self.namespace, self.name).acquire(
                        _left(deadline, 10.0)):
                    reg = fanin.Registry.open(self.namespace, self.name, create=False)
                    if reg is not None and reg.words[W_CAPACITY]:
                        try:
                            self._open_ring(reg, deadline)
                        except BaseException:
                            reg.close()
                            raise
                        return self._producer  # type: ignore[return-value]
                    if reg is not None:
                        reg.close()
                left = _left(deadline)
                if left is not None and left <= 0:
                    raise Timeout(
                        f"no Inbox {self.name!r} in namespace {self.namespace!r} within "
                        f"{timeout} s: open the Inbox first (it sets the capacity of "
                        "every sender's ring), or give send a longer timeout",
                        name=self.name, timeout=timeout)
                time.sleep(delay if left is None else min(delay, left))  # not a spin:
                delay = min(delay * 2, 0.05)  # nothing to wake us before an Inbox exists

    def _open_ring(self, reg: fanin.Registry, deadline: float | None) -> None:
        ns, cap = self.namespace, reg.words[W_CAPACITY]
        if not layout.MIN_CAPACITY <= cap <= layout.MAX_CAPACITY:  # no Inbox wrote it
            path = fanin.registry_path(ns, self.name)
            raise CorruptRing(
                f"registry {path} says sender rings have {cap} bytes, expected "
                f"{layout.MIN_CAPACITY} to {layout.MAX_CAPACITY}: it is damaged; stop "
                f"the Inbox and remove it (`shmbus rm {self.name}`), then open it again",
                path=path, found=cap)
        sender, key = self._choose_sender()
        try:
            for attempt in range(_SQUATTED):
                ring = fanin.sender_ring(self.name, sender)
                try:
                    producer = self._make_producer(ring, sender, cap)
                    break
                except PermissionDenied:
                    # Another user made our default ring's name first (PID.STARTTIME
                    # is public): an unpredictable id instead.  A given id stays.
                    if self._wanted is not None or attempt == _SQUATTED - 1:
                        raise
                    sender, key = self._random_sender(key)
            try:
                _give_inbox_cursor(ring, ns)
                reg.words[W_GENERATION] += 1  # after the ring exists: see fanin
                waker = Waker(fanin.bell_semaphore(ns, self.name))
            except BaseException:
                producer.close()
                raise
        except BaseException:
            with _open_guard:
                _open.discard(key)
            raise
        self.sender, self._key = sender, key
        self._producer, self._registry, self._waker = producer, reg, waker
        self.capacity = producer.capacity
        self.send = producer.send  # type: ignore[method-assign]  # no work of ours per message
        bell = reg.words[W_BELL]
        if bell & 1:  # the Inbox waits: tell it about the new ring
            waker.wake(bell)

    def _make_producer(self, ring: str, sender: str, cap: int) -> Producer:
        ns = self.namespace
        busy_until = time.monotonic() + _BUSY_RETRY
        while True:
            try:
                return Producer(ring, capacity=cap, namespace=ns, wait=_WAIT)
            except LayoutMismatch:  # left by this sender before the capacity changed
                try:
                    return Producer(ring, namespace=ns, create=False, wait=_WAIT)
                except RingNotFound:
                    continue  # removed meanwhile: make it afresh
            except RingBusy as e:
                if self._wanted is not None and time.monotonic() > busy_until:
                    raise RingBusy(
                        f"sender id {sender!r} of inbox {self.name!r} is in use by pid "
                        f"{e.fields.get('pid')}: give each Outbox its own sender id "
                        "(or none: the default is unique)", name=self.name,
                        sender=sender, pid=e.fields.get("pid")) from None
                time.sleep(0.001)  # the Inbox removes the ring it left: a moment

    def _random_sender(self, old: tuple[str, str, str]) -> tuple[str, tuple[str, str, str]]:
        sender = f"{fanin.current_sender_id()}.r{secrets.token_hex(4)}"
        key = (self.namespace, self.name, sender)
        with _open_guard:
            _open.discard(old)
            _open.add(key)
        return sender, key

    def _choose_sender(self) -> tuple[str, tuple[str, str, str]]:
        base = self._wanted or fanin.current_sender_id()
        with _open_guard:
            sender, n = base, 0
            while (self.namespace, self.name, sender) in _open:
                if self._wanted is not None:
                    raise RingBusy(
                        f"sender id {base!r} of inbox {self.name!r} is already open in "
                        "this process: give each Outbox its own sender id",
                        name=self.name, sender=base)
                n += 1
                sender = f"{base}.{n}"
            key = (self.namespace, self.name, sender)
            _open.add(key)
        return sender, key

    # -- sending ------------------------------------------------------------------------

    def send(self, data: Payload, key: str | Buffer | None = None, *,
             timeout: float | None = None) -> int:
        """Publish one message (bytes or any contiguous buffer) with an optional key;
        return its seq in this sender's ring.  Waits up to ``timeout`` for room (and,
        the first time, for the Inbox to exist); raises :class:`Timeout`."""
        seq: int = self.__dict__["send"](data, key, timeout=timeout)
        return seq

    def send_many(self, messages: Iterable[Payload], *,
                  keys: Iterable[str | Buffer | None] | None = None,
                  timeout: float | None = None) -> range:
        """Publish several messages with one publish (see ``Producer.send_many``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        producer = self._producer or self._attach(deadline, timeout)
        return producer.send_many(messages, keys=keys, timeout=_left(deadline))

    def claim(self, size: int, key: str | Buffer | None = None, *,
              timeout: float | None = None) -> Claim:
        """Room for a ``size``-byte message written in place (see ``Producer.claim``);
        published when the ``with`` block exits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        producer = self._producer or self._attach(deadline, timeout)
        return producer.claim(size, key, timeout=_left(deadline))

    def send_obj(self, obj: Any, key: str | bytes | None = None, *,
                 timeout: float | None = None, codec: CodecName = "pickle") -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._producer is None:
            self._attach(deadline, timeout)
        return super().send_obj(obj, key, timeout=_left(deadline), codec=codec)

    send_obj.__doc__ = ObjectSender.send_obj.__doc__

    @property
    def ring(self) -> str | None:
        """The ring this Outbox writes into (None before its first send)."""
        return None if self.sender is None else fanin.sender_ring(self.name, self.sender)

    # -- lifetime -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop sending (idempotent).  The ring stays, with what was sent, until the
        Inbox has received it all; then the Inbox removes it."""
        if self.forked or not self._mark_closed():
            return
        self._sever()
        with self._attaching:  # an attach in another thread finishes first
            producer, reg, waker = self._producer, self._registry, self._waker
        try:
            if producer is not None:
                producer.close()
        finally:
            if waker is not None:
                waker.close()
            if reg is not None:
                reg.close()
            if self._key is not None:
                with _open_guard:
                    _open.discard(self._key)

    def _sever(self) -> None:
        self.send = self._refuse  # type: ignore[method-assign]

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Outbox to {self.name!r} ns={self.namespace!r} "
                f"sender={self.sender or self._wanted!r}>")


def _give_inbox_cursor(ring: str, ns: str) -> None:
    """Give the new ring the Inbox's durable cursor at its start (if the Inbox has not
    made it yet), so that the producer keeps everything until the Inbox reads it."""
    from .consumer import Consumer
    try:
        Consumer(ring, durable=fanin.DURABLE, start="earliest", namespace=ns).close()
    except DurableBusy:
        pass  # the Inbox holds it: the cursor exists


def _left(deadline: float | None, default: float | None = None) -> float | None:
    if deadline is None:
        return default
    return max(0.0, deadline - time.monotonic())
