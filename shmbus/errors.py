"""The whole shmbus exception hierarchy.

Every error derives from :class:`ShmbusError` and, where one fits, from the matching
builtin (``Timeout`` is a ``TimeoutError``, ``RingNotFound`` a ``FileNotFoundError``), so
callers can catch either.  Each carries the fields a caller needs as attributes, says in
its message what was expected, what was found and what to do, and pickles (so it can
cross a process boundary, e.g. from a ``multiprocessing`` worker).
"""

from __future__ import annotations

__all__ = [
    "ShmbusError",
    "RingNotFound",
    "RingBusy",
    "DurableBusy",
    "LayoutMismatch",
    "CorruptRing",
    "MessageTooLarge",
    "InvalidName",
    "Timeout",
    "LeaseLost",
    "NotHeld",
    "AlreadyHeld",
    "ShmFull",
    "Closed",
    "PermissionDenied",
    "FrameError",
    "CodecUnavailable",
    "Released",
]


class ShmbusError(Exception):
    """Base class of every error raised by shmbus.

    Subclasses keep their constructor arguments in ``self.args`` (so they pickle) and
    expose the interesting ones as attributes.
    """

    def __init__(self, message: str, **fields: object) -> None:
        super().__init__(message)
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __reduce__(self):  # keep fields across pickling
        return (_rebuild, (type(self), self.args[0] if self.args else "", self.fields))


def _rebuild(cls, message, fields):
    err = cls.__new__(cls)
    ShmbusError.__init__(err, message, **fields)
    return err


class RingNotFound(ShmbusError, FileNotFoundError):
    """The ring (or lock, or durable cursor) does not exist."""


class RingBusy(ShmbusError):
    """Another live process owns what was asked for; ``pid`` names it."""


class DurableBusy(RingBusy):
    """A live process already consumes with this durable name; ``pid`` names it."""


class LayoutMismatch(ShmbusError):
    """The segment exists but was made with another capacity, layout version or mode."""


class CorruptRing(ShmbusError):
    """The segment is not a shmbus ring, or its header or records are damaged."""


class MessageTooLarge(ShmbusError, ValueError):
    """A message (payload plus key) cannot fit in the ring."""


class InvalidName(ShmbusError, ValueError):
    """A ring, lock, durable or namespace name is not ``[A-Za-z0-9._-]{1,100}``."""


class Timeout(ShmbusError, TimeoutError):
    """A blocking call did not complete within its timeout."""


class LeaseLost(ShmbusError):
    """The lease is no longer held by this holder: do not act on it."""


class NotHeld(ShmbusError, RuntimeError):
    """A lock or lease was released (or renewed) by a process that does not hold it."""


class AlreadyHeld(ShmbusError, RuntimeError):
    """A non-reentrant lock was acquired again by the thread that holds it: a
    programming error, not a reason to wait (it is never a ``Timeout``)."""


class ShmFull(ShmbusError, OSError):
    """``/dev/shm`` has no room for a new segment."""


class Closed(ShmbusError):
    """The object was closed (by this code, maybe from another thread), or is used in a
    process other than the one that opened it (after ``fork``): open a new one."""


class PermissionDenied(ShmbusError, PermissionError):
    """Something shmbus was to open in ``/dev/shm`` is not ours (another owner, an
    unexpected type or permission bits, a symlink), or we may not open it: ``path``,
    ``owner`` and the message say what was found and what to do."""


class FrameError(ShmbusError, ValueError):
    """``recv_obj`` met a message that is not an object frame (sent with ``send``), or
    one whose frame is damaged or cannot be decoded here; the message was received all
    the same: ``msg`` holds it (not pickled with the error)."""


class CodecUnavailable(ShmbusError, ImportError):
    """An object codec's library (msgpack, msgspec) is not installed in this process;
    ``codec`` names it."""


class Released(ShmbusError, ValueError):
    """A message's payload was used after the message was released (by the next
    ``recv``/``recv_many``, ``Message.release()``, ``Consumer.release()`` or ``close``):
    the producer may have written another message over it.  ``seq`` names the message;
    keep a copy with ``bytes(msg)`` before releasing it."""
