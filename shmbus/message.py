"""``Message``: one received message, a zero-copy view with its key, seq and time.

Two twins with one interface: ``shmbus._hotpath.Message`` (compiled, handed out by the
compiled reader) and :class:`PyMessage` (pure Python).  ``Message`` is the one this
process's hot path uses.

A message is *released* once its consumer's committed read position reaches its end
(positions only grow): by the next ``recv``/``recv_many``, ``msg.release()``,
``Consumer.release()`` or ``close``.  From then on ``msg.data`` and ``bytes(msg)``
raise :class:`~shmbus.Released` (the producer may have written another message
there), and the memoryview ``msg.data`` returned before has been released
(``memoryview.release()``): using it raises ``ValueError`` instead of reading another
message's bytes.  Views *derived* from it that hold a buffer export of their own (a
numpy array made with ``np.frombuffer(msg.data)``, say) cannot be released that way:
they are the caller's to drop before the message is released; to keep data, copy it
(``bytes(msg)``, ``array.copy()``) first.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from . import hotpath
from .errors import Released
from .layout import REC_REDELIVERY_SHIFT

if TYPE_CHECKING:
    from .consumer import Consumer

__all__ = ["Message", "PyMessage", "released_error"]

_NEVER = (1 << 64) - 1  # the committed position of a closed consumer

try:  # the C field descriptor namedtuple uses: faster than property(itemgetter(i))
    from collections import _tuplegetter as _field  # type: ignore[attr-defined]
except ImportError:  # another Python implementation
    def _field(index: int, doc: str) -> property:  # type: ignore[misc]
        return property(itemgetter(index), doc=doc)


def released_error(msg: Any) -> Released:
    """The error for using ``msg``'s payload after it was released (both twins)."""
    consumer = msg._consumer
    name = getattr(consumer, "name", "?")
    closed = getattr(consumer, "closed", False)
    why = ("its consumer was closed" if closed else
           "the consumer released it: the next recv()/recv_many(), msg.release() or "
           "Consumer.release() did")
    return Released(
        f"message seq {msg.seq} of ring {name!r} was released ({why}): its payload "
        "may have been overwritten, so msg.data and bytes(msg) are no longer "
        "available; to keep a message, copy it with bytes(msg) before releasing it",
        name=name, seq=msg.seq)


class PyMessage(tuple):
    """One received message (the pure-Python twin of the compiled ``Message``).

    ``data`` is a memoryview of the payload (in ``block`` rings, inside the ring: valid
    until the message is released, i.e. until the next ``recv``; then it raises
    :class:`~shmbus.Released`; do not write to it: other consumers read the same
    bytes); ``bytes(msg)`` copies it.  ``key`` is bytes or None, ``seq`` the per-ring
    sequence number, ``timestamp_ns`` the producer's ``time.monotonic_ns()`` at send,
    ``sender`` the receiving consumer's ``sender`` (None for a plain Consumer).
    Equal only to itself.  (A tuple underneath: building one per message is the
    cheapest object there is; its items are private.)
    """

    __slots__ = ()

    def __new__(cls, data: memoryview, key: bytes | None, seq: int, timestamp_ns: int,
                consumer: "Consumer", end: int, flags: int = 0) -> "PyMessage":
        return tuple.__new__(cls, (data, key, seq, timestamp_ns, consumer, end, flags,
                                   consumer._cur))

    if TYPE_CHECKING:  # what the fields hold, for type checkers
        @property
        def key(self) -> bytes | None: ...
        @property
        def seq(self) -> int: ...
        @property
        def timestamp_ns(self) -> int: ...
        @property
        def _consumer(self) -> Consumer: ...
        @property
        def _end(self) -> int: ...
        @property
        def _flags(self) -> int: ...
    else:
        key = _field(1, "The key (bytes), or None.")
        seq = _field(2, "The per-ring sequence number.")
        timestamp_ns = _field(3, "time.monotonic_ns() at send.")
        _consumer = _field(4, "The consumer it came from.")
        _end = _field(5, "The ring position after its record.")
        _flags = _field(6, "Its record's flags.")

    @property
    def data(self) -> memoryview:
        """The payload: a memoryview (into the ring: valid until the message is
        released; then this raises :class:`~shmbus.Released`, and a view taken
        before is released)."""
        cur = self[7]
        if cur.committed >= self[5]:
            raise released_error(self)
        kept = cur.kept
        if not kept or kept[-1] is not self:
            kept.append(self)  # its view is released with it (Reader.commit)
        return self[0]

    @property
    def deliveries(self) -> int:
        """How many times this message has been delivered, this time included (more
        than 1 only for messages a balancer redelivered after a worker died)."""
        return (self[6] >> REC_REDELIVERY_SHIFT) + 1

    @property
    def sender(self) -> str | None:
        """Who sent it: the receiving consumer's ``sender`` attribute (None for a
        plain Consumer; an Inbox's per-sender consumers name their sender)."""
        return self[4].sender

    def release(self) -> None:
        """Acknowledge this message and every one received before it: the producer may
        now overwrite them (and a durable consumer will not see them again)."""
        self[4]._commit_to(self[5], self[2] + 1)

    def __bytes__(self) -> bytes:
        if self[7].committed >= self[5]:
            raise released_error(self)
        return bytes(self[0])

    def __len__(self) -> int:
        """The payload's length (raises :class:`~shmbus.Released` once released)."""
        if self[7].committed >= self[5]:
            raise released_error(self)
        return len(self[0])

    def __repr__(self) -> str:
        size = "released" if self[7].committed >= self[5] else f"{len(self[0])} bytes"
        return f"<Message seq={self[2]} key={self[1]!r} {size}>"

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


if TYPE_CHECKING:
    @runtime_checkable
    class Message(Protocol):
        """What both twins offer, for type checkers: PyMessage is a tuple underneath and
        the compiled Message is not, so neither one's extras are the interface."""

        @property
        def data(self) -> memoryview: ...
        @property
        def key(self) -> bytes | None: ...
        @property
        def seq(self) -> int: ...
        @property
        def timestamp_ns(self) -> int: ...
        @property
        def deliveries(self) -> int: ...
        @property
        def sender(self) -> str | None: ...
        def release(self) -> None: ...
        def __bytes__(self) -> bytes: ...
        def __len__(self) -> int: ...
        @property
        def _end(self) -> int: ...
else:  # the message type this process's hot path hands out
    Message = hotpath.native.Message if hotpath.compiled else PyMessage
