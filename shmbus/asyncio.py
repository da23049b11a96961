"""shmbus for asyncio: ``Consumer``, ``Inbox`` and ``Producer`` whose waits are awaitable.

    import shmbus.asyncio

    async with shmbus.asyncio.Consumer("orders") as sub:
        msg = await sub.recv(timeout=1.0)
        async for msg in sub:
            ...

    async with shmbus.asyncio.Producer("orders", capacity=1 << 20) as pub:
        await pub.send(b"payload")          # waits (awaiting) for room on a full ring

Same constructor arguments as the blocking twins (:class:`shmbus.Consumer`,
:class:`shmbus.Inbox`, :class:`shmbus.Producer`), which they wrap (``.sync``);
``Worker`` is the balancer's (imported when first used: ``shmbus`` imports no balancer
code otherwise), and ``Consumer.wrap(sub)`` awaits any open blocking receiver.  Receiving and sending never
block the event loop: they try without waiting, and when there is nothing to receive
(or no room) they arm the twin's wake-up (:mod:`shmbus.wakeup`) and await its FIFO
with ``loop.add_reader``: no thread per consumer, no system call per message while
data flows, and an idle consumer's loop wakes about twice a second.  Like a
semaphore sleep, the first wait after arming lasts at most 10 ms (a wake-up missed
while arming costs at most that much), later ones 0.5 s.

Cancelling an awaiting ``recv`` (``asyncio.wait_for``, a task's ``cancel()``) loses
nothing: a message is taken from the ring only once the coroutine runs again, so it
is left for the next receive.  One task receives from one consumer at a time.
"""

from __future__ import annotations

import asyncio
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Collection, Iterable, TypeVar,
                    cast)

from . import consumer as _consumer
from . import inbox as _inbox
from . import producer as _producer
from .errors import Timeout
from .message import Message
from .wakeup import LONG_SLEEP, MAX_SLEEP, Sleeper

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self
    from .choices import Payload

    from .choices import CodecName, OnFull, Start, WaitName
    from .wait import WaitStrategy

__all__ = ["Consumer", "Inbox", "Producer", "Worker"]

T = TypeVar("T")


class _FdWait:
    """Awaiting a :class:`~shmbus.poller.Waitable`'s descriptor in the running loop.

    The descriptor is watched (``add_reader``) only while a task waits; the callback
    stops watching it (it stays readable until ``disarm`` reads it empty, and a
    level-triggered loop would otherwise call it again and again) and wakes the task.
    """

    def __init__(self, fileno: Callable[[], int]) -> None:
        self._fileno = fileno
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watching = False
        self._fut: asyncio.Future[None] | None = None
        self.fd_woke = False

    def _readable(self) -> None:
        self._unwatch()
        self.fd_woke = True
        self._wake()

    def _wake(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)

    async def until(self, arm: Callable[[], bool], ready: Callable[[], bool],
                    disarm: Callable[[], None], deadline: float | None) -> None:
        """Arm, then return once ``arm()`` said ready, or ``ready()`` (checked after
        each wake-up and each bounded timeout), or ``deadline`` (loop time) has
        passed; disarm in every case."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()
            self._loop, self._fd = loop, self._fileno()
        self.fd_woke = False
        try:
            if arm():
                return
            since = loop.time()
            while True:
                now = loop.time()
                wait = MAX_SLEEP if now - since < MAX_SLEEP else LONG_SLEEP
                if deadline is not None:
                    wait = min(wait, deadline - now)
                    if wait <= 0:
                        return
                if not self._watching:
                    loop.add_reader(self._fd, self._readable)
                    self._watching = True
                self._fut = loop.create_future()
                timer = loop.call_later(wait, self._wake)
                try:
                    await self._fut
                finally:
                    timer.cancel()
                    self._fut = None
                if ready():
                    return
                if self.fd_woke:  # woken, yet not enough (room for a large message):
                    self.fd_woke = False  # read it empty, and wait again from scratch
                    disarm()
                    if arm():
                        return
                    since = loop.time()
        finally:
            self._unwatch()
            disarm()

    def close(self) -> None:
        """Stop watching, and wake a task waiting here (its ``ready()`` then sees the
        owner closed).  From another thread, that happens in the loop's thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._loop = None
            return
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop = False
        if not in_loop:
            loop.call_soon_threadsafe(self.close)
            return
        self._unwatch()
        self._wake()
        self._loop = None


class Consumer:
    """An awaitable :class:`shmbus.Consumer` (same arguments)."""

    _blocking: Callable[..., Any] = _consumer.Consumer

    if TYPE_CHECKING:  # the blocking twin's arguments (each subclass has its own)
        def __init__(self, name: str, *, durable: str | None = None,
                     start: Start = "latest", namespace: str | None = None,
                     wait: WaitName | WaitStrategy = "adaptive") -> None: ...
    else:
        def __init__(self, *args, **kwargs):
            self._adopt(self._blocking(*args, **kwargs))

    @classmethod
    def wrap(cls, sync: Any) -> "Consumer":
        """Await an open blocking receiver: anything with ``try_recv``, ``recv_many``,
        ``recv_obj``, ``release``, ``close`` and the :class:`shmbus.poller.Waitable`
        methods (a balancer ``Worker``, say); closing the wrapper closes it."""
        self = cls.__new__(cls)
        self._adopt(sync)
        return self

    def _adopt(self, sync: Any) -> None:
        self.sync = sync
        self._waiter = _FdWait(sync.fileno)
        sync.fileno()  # the FIFO is made here, where blocking is expected

    async def _wait(self, timeout: float | None) -> None:
        sub = self.sync
        deadline = None if timeout is None else \
            asyncio.get_running_loop().time() + timeout
        await self._waiter.until(sub.arm, sub.ready, sub.disarm, deadline)

    async def recv(self, timeout: float | None = None) -> Message:
        """Release the previous message and return the next one, awaiting up to
        ``timeout`` seconds (None: forever); raises :class:`shmbus.Timeout`."""
        try_recv = self.sync.try_recv
        msg: Message | None = try_recv()
        if msg is not None:
            return msg
        deadline = None if timeout is None else \
            asyncio.get_running_loop().time() + timeout
        while True:
            await self._waiter.until(self.sync.arm, self.sync.ready, self.sync.disarm,
                                     deadline)
            msg = try_recv()
            if msg is not None:
                return msg
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                raise Timeout(f"no message on ring {self.sync.name!r} within {timeout} s",
                              name=self.sync.name, timeout=timeout)

    async def recv_many(self, max_messages: int, timeout: float | None = None
                        ) -> list[Message]:
        """Release the previous batch; await up to ``timeout`` for at least one
        message, then return every message there now, at most ``max_messages``."""
        sub = self.sync
        try:
            return cast("list[Message]", sub.recv_many(max_messages, timeout=0))
        except Timeout:
            pass
        first = await self.recv(timeout)
        rest = sub.recv_many(max_messages - 1, timeout=0) if max_messages > 1 and \
            sub.ready() else []
        return [first, *rest]

    async def recv_obj(self, timeout: float | None = None, *, copy: bool = False,
                       accept: Collection[str] | None = None) -> Any:
        """Like :meth:`shmbus.Consumer.recv_obj`, awaiting the message."""
        deadline = None if timeout is None else \
            asyncio.get_running_loop().time() + timeout
        while True:
            if self.sync.ready():
                try:
                    return self.sync.recv_obj(0, copy=copy, accept=accept)
                except Timeout:
                    pass  # padding: nothing after all
            left = None if deadline is None else \
                deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                raise Timeout(f"no message on ring {self.sync.name!r} within {timeout} s",
                              name=self.sync.name, timeout=timeout)
            await self._wait(left)

    def release(self) -> None:
        self.sync.release()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.recv()

    def fileno(self) -> int:
        return int(self.sync.fileno())

    def close(self, *, release: bool = True) -> None:
        """Close the blocking twin (idempotent; from any thread): a task awaiting a
        receive wakes and gets :class:`shmbus.Closed`."""
        self.sync.close(release=release)
        self._waiter.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(release=exc_type is None)

    def __repr__(self) -> str:
        return f"<shmbus.asyncio.{type(self).__name__} of {self.sync!r}>"


class Inbox(Consumer):
    """An awaitable :class:`shmbus.Inbox` (same arguments): fan-in from any number of
    :class:`shmbus.Outbox` senders."""

    _blocking = _inbox.Inbox

    if TYPE_CHECKING:
        def __init__(self, name: str, *, capacity: int | None = None,
                     namespace: str | None = None) -> None: ...


class Producer:
    """An awaitable :class:`shmbus.Producer` (same arguments): ``send`` awaits room
    on a full ``block`` ring instead of blocking the loop."""

    sync: _producer.Producer  # the blocking twin
    _sleeper: Sleeper
    _waiter: _FdWait

    if TYPE_CHECKING:  # the blocking twin's arguments
        def __init__(self, name: str, *, capacity: int | None = None, create: bool = True,
                     on_full: OnFull = "block", namespace: str | None = None,
                     wait: WaitName | WaitStrategy = "adaptive",
                     max_consumers: int | None = None) -> None: ...
    else:
        def __init__(self, name, **kwargs):
            self.sync = pub = _producer.Producer(name, **kwargs)
            # The blocking producer's sleeper: consumers that release wake it.
            self._sleeper = pub._sleeper
            self._waiter = _FdWait(self._sleeper.fileno)
            self._sleeper.fileno()

    async def _room(self, call: Callable[[float], T], timeout: float | None) -> T:
        try:
            return call(0)
        except Timeout:
            pass
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        sleeper = self._sleeper
        done: list[T] = []

        def try_call() -> bool:
            try:
                done.append(call(0))
            except Timeout:
                return False
            return True

        def arm_and_try() -> bool:
            # Armed first, then tried again: a release in between wakes us.  (True
            # when closing: the call below raises Closed.)
            return sleeper.arm(_never) or try_call()

        await self._waiter.until(arm_and_try, try_call, sleeper.disarm, deadline)
        return done[0] if done else call(0)  # the deadline passed: Timeout, or Closed

    async def send(self, data: Payload, key: str | Buffer | None = None, *,
                   timeout: float | None = None) -> int:
        """Publish one message (see :meth:`shmbus.Producer.send`), awaiting up to
        ``timeout`` seconds (None: forever) for room; raises :class:`shmbus.Timeout`."""
        send = self.sync.send
        return await self._room(lambda t: send(data, key, timeout=t), timeout)

    async def send_many(self, messages: Iterable[Payload], *,
                        keys: Iterable[str | Buffer | None] | None = None,
                        timeout: float | None = None) -> range:
        """Publish a batch (see :meth:`shmbus.Producer.send_many`), awaiting room."""
        send_many = self.sync.send_many
        messages = list(messages)  # each try must see the whole batch
        keys = None if keys is None else list(keys)
        return await self._room(lambda t: send_many(messages, keys=keys, timeout=t),
                                timeout)

    async def send_obj(self, obj: Any, key: str | bytes | None = None, *,
                       timeout: float | None = None, codec: CodecName = "pickle") -> int:
        """Publish an object (see :meth:`shmbus.Producer.send_obj`), awaiting room."""
        send_obj = self.sync.send_obj
        return await self._room(lambda t: send_obj(obj, key, timeout=t, codec=codec),
                                timeout)

    def close(self) -> None:
        """Close the blocking twin (idempotent; from any thread): a task awaiting room
        wakes and gets :class:`shmbus.Closed`."""
        self.sync.close()
        self._waiter.close()

    async def __aenter__(self) -> "Producer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shmbus.asyncio.Producer of {self.sync!r}>"


if TYPE_CHECKING:  # what __getattr__ makes on first use
    class Worker(Consumer):
        """An awaitable balancer ``Worker`` (same arguments: group, name, ...)."""

        def __init__(self, group: str, name: str, *, capacity: int = 1 << 20,
                     namespace: str | None = None,
                     wait: WaitName | WaitStrategy = "adaptive") -> None: ...


def __getattr__(name: str) -> Any:
    # shmbus.asyncio.Worker is in the contract, yet shmbus imports no balancer code
    # when it is imported: the balancer is imported the first time this name is used.
    if name == "Worker":
        from shmbus.balancer.worker import Worker as blocking
        worker = type("Worker", (Consumer,), {
            "_blocking": blocking, "__module__": __name__,
            "__doc__": "An awaitable balancer ``Worker`` (same arguments: group, name, "
                       "...)."})
        globals()["Worker"] = worker
        return worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _never() -> bool:
    return False
