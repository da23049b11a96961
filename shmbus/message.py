"""``Message``: one received message, a zero-copy view with its key, seq and time."""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING

from .layout import REC_REDELIVERY_SHIFT

if TYPE_CHECKING:
    from .consumer import Consumer

__all__ = ["Message"]

try:  # the C field descriptor namedtuple uses: faster than property(itemgetter(i))
    from collections import _tuplegetter as _field  # type: ignore[attr-defined]
except ImportError:  # another Python implementation
    def _field(index: int, doc: str) -> property:  # type: ignore[misc]
        return property(itemgetter(index), doc=doc)


class Message(tuple):
    """One received message.

    ``data`` is a memoryview of the payload (in ``block`` rings, inside the ring: valid
    until the message is released, i.e. until the next ``recv``; do not write to it:
    other consumers read the same bytes);
    ``bytes(msg)`` copies it.  ``key`` is bytes or None, ``seq`` the per-ring sequence
    number, ``timestamp_ns`` the producer's ``time.monotonic_ns()`` at send.
    (A tuple underneath: building one per message is the cheapest object there is.)
    """

    __slots__ = ()

    def __new__(cls, data: memoryview, key: bytes | None, seq: int, timestamp_ns: int,
                consumer: "Consumer", end: int, flags: int = 0) -> "Message":
        return tuple.__new__(cls, (data, key, seq, timestamp_ns, consumer, end, flags))

    data = _field(0, "The payload: a memoryview.")
    key = _field(1, "The key (bytes), or None.")
    seq = _field(2, "The per-ring sequence number.")
    timestamp_ns = _field(3, "time.monotonic_ns() at send.")

    @property
    def deliveries(self) -> int:
        """How many times this message has been delivered, this time included (more
        than 1 only for messages a balancer redelivered after a worker died)."""
        return (self[6] >> REC_REDELIVERY_SHIFT) + 1
    def release(self) -> None:
        """Acknowledge this message and every one received before it: the producer may
        now overwrite them (and a durable consumer will not see them again)."""
        self[4]._commit_to(self[5], self[2] + 1)

    def __bytes__(self) -> bytes:
        return bytes(self[0])

    def __len__(self) -> int:
        return len(self[0])

    def __repr__(self) -> str:
        return f"<Message seq={self[2]} key={self[1]!r} {len(self[0])} bytes>"

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)
