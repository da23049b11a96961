"""``Poller``: wait on many consumers at once (the counterpart of ``zmq.Poller``,
iceoryx2's WaitSet and ``multiprocessing.connection.wait``).

    poller = shmbus.Poller()
    poller.register(orders)
    poller.register(results)
    while True:
        for sub in poller.poll(timeout=1.0):
            msg = sub.try_recv()   # None is possible (a padding record, a race): fine
            ...

A Poller waits on anything that implements :class:`Waitable` (a
:class:`~shmbus.Consumer`, a balancer ``Worker``, an ``Inbox``...).  It sleeps in one
``poll(2)`` on their wake-up descriptors while nothing arrives: no busy loop, and
the producers still make no system call per message (see :mod:`shmbus.wakeup`).  Its
sleeps are bounded like a semaphore sleeper's (10 ms until that long has passed since
it armed its consumers, 0.5 s after), so a missed wake-up delays it by at most 10 ms
and an idle Poller wakes about twice a second.

A Poller is used from one thread at a time (like ``selectors``); a consumer closed
from another thread wakes it and is returned as ready (its receive then raises
:class:`~shmbus.Closed`).
"""

from __future__ import annotations

import select
import time
from typing import Any, Protocol, runtime_checkable

from .wakeup import LONG_SLEEP, MAX_SLEEP

__all__ = ["Poller", "Waitable"]


@runtime_checkable
class Waitable(Protocol):
    """What a :class:`Poller` (and ``shmbus.asyncio``) needs of what it waits on.

    ``fileno()`` is a descriptor that becomes readable when something arrives while
    armed; ``arm()`` asks for that and returns True (staying unarmed) if something is
    there already; ``disarm()`` stops it (reading the descriptor empty); ``ready()``
    says, without a system call, whether a receive would find something now (or the
    object is closed).  A wake-up may be missed while arming (see
    :mod:`shmbus.wakeup`): whoever watches the descriptor looks at ``ready()`` again
    after at most 10 ms."""

    def fileno(self) -> int: ...

    def arm(self) -> bool: ...

    def disarm(self) -> None: ...

    def ready(self) -> bool: ...


class Poller:
    """A set of :class:`Waitable` objects (consumers) to wait on together.  ``poll``
    returns them as registered (typed ``Any``: a Poller may hold consumers, Inboxes
    and Workers at once)."""

    def __init__(self) -> None:
        self._items: dict[int, Any] = {}  # id -> item, in registration order
        self._fds: dict[int, int] = {}  # id -> its descriptor
        self._poll = select.poll()

    def register(self, item: Waitable) -> None:
        """Add ``item`` (registering it twice is harmless).  Creates its wake-up
        descriptor; raises ``TypeError`` if it is not :class:`Waitable`, and what its
        ``fileno()`` raises (:class:`~shmbus.Closed` for a closed consumer)."""
        if not isinstance(item, Waitable):
            raise TypeError(f"a Poller waits on objects with fileno(), arm(), disarm() "
                            f"and ready() (a shmbus.Consumer...), got {item!r}")
        key = id(item)
        if key in self._items:
            return
        fd = item.fileno()
        self._poll.register(fd, select.POLLIN)
        self._items[key] = item
        self._fds[key] = fd

    def unregister(self, item: Waitable) -> None:
        """Remove ``item``; KeyError if it is not registered."""
        key = id(item)
        if key not in self._items:
            raise KeyError(f"{item!r} is not registered with this Poller")
        del self._items[key]
        fd = self._fds.pop(key)
        if fd not in self._fds.values():
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return id(item) in self._items

    def poll(self, timeout: float | None = None) -> list[Any]:
        """Wait up to ``timeout`` seconds (None: until something arrives; 0: just
        look) until at least one registered object has something to receive; return
        those that have, in registration order (empty on timeout)."""
        items = list(self._items.values())
        ready = [c for c in items if c.ready()]
        if ready or timeout is not None and timeout <= 0 or not items:
            if not items and timeout is None:
                raise ValueError("poll() with nothing registered and no timeout would "
                                 "wait forever: register a consumer or pass a timeout")
            return ready
        deadline = None if timeout is None else time.monotonic() + timeout
        armed: list[Any] = []
        try:
            for c in items:
                if c.arm():
                    ready.append(c)
                else:
                    armed.append(c)
            if ready:
                return ready
            since = time.monotonic()
            while True:
                now = time.monotonic()
                wait = MAX_SLEEP if now - since < MAX_SLEEP else LONG_SLEEP
                if deadline is not None:
                    wait = min(wait, deadline - now)
                    if wait <= 0:
                        return [c for c in items if c.ready()]
                woken = self._poll.poll(wait * 1000.0)
                ready = [c for c in items if c.ready()]
                if ready:
                    return ready
                if woken:  # yet nothing to receive (a wake-up written late, for an
                    # earlier arming, or by a member of a shared namespace): read the
                    # descriptors empty and arm again, or poll(2) returns at once
                    for c in armed:
                        c.disarm()
                    armed.clear()
                    for c in items:
                        (ready if c.arm() else armed).append(c)
                    if ready:
                        return ready
                    since = time.monotonic()
        finally:
            for c in armed:
                c.disarm()
