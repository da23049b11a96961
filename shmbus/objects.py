"""Python objects through a ring: ``send_obj`` and ``recv_obj``.

``Producer.send_obj(obj)`` encodes ``obj`` as one message (an *object frame*, see
:mod:`shmbus.codecs`), by default with pickle protocol 5 and out-of-band buffers: a
numpy array (any ``PickleBuffer``-capable object) inside ``obj`` is copied once, into
the ring, never into the pickle stream.  ``recv_obj()`` on any consumer returns the
object, its arrays as read-only zero-copy views into the ring.  The codec is recorded in
the frame, so ``recv_obj`` needs no argument: ``send_obj(obj, codec="json")`` (also
``"msgpack"``, ``"msgspec"`` where those packages are installed).

Lifetime: a view is valid as long as ``msg.data`` is, until the message is released
(by the next receive, ``release()`` or ``close()``); after that the producer may write
other messages over its bytes.  ``msg.data`` then raises :class:`~shmbus.Released`, but
an array handed out before cannot (numpy reads through a pointer, like an array made
with ``np.frombuffer(msg.data)``): drop it, or keep a copy, before the next receive:
``recv_obj(copy=True)`` (writable arrays of their own) or ``np.array(view)``.  While a
view is held, a ``block`` producer waits rather than overwrite it.

Trust: unpickling runs code chosen by whoever wrote the message.  A ring is writable
only by your user unless its namespace is shared with a group (``$SHMBUS_GROUP``, see
the security model); there ``recv_obj`` refuses pickle frames unless told otherwise
(``accept=``): use ``codec="json"`` between users.
"""

from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any, Collection

from . import codecs, layout
from .errors import FrameError, MessageTooLarge

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from .choices import CodecName
    from .claim import Claim
    from .message import Message

__all__ = ["ObjectSender", "ObjectReceiver", "decode", "frame_bytes"]

_SMALL = 16 << 10  # a frame up to this size is joined in memory and sent with send()
frame_bytes = codecs.frame_bytes
_dumps, _pack_head, _decode_frame = pickle.dumps, codecs.HEAD.pack, codecs.decode
_MAGIC, _VERSION, _PICKLE = codecs.MAGIC, codecs.FRAME_VERSION, codecs.PICKLE_ID


def _key_length(key: object) -> int:
    """Bytes the key takes in the record (0 if it is not a valid key: claim or send
    then says why)."""
    if key is None:
        return 0
    try:
        return len(key.encode()) if isinstance(key, str) else \
            memoryview(key).nbytes  # type: ignore[arg-type]
    except (TypeError, UnicodeError):
        return 0


class ObjectSender:
    """``send_obj``, for a class with ``send``, ``claim``, ``name`` and ``capacity``
    (:class:`shmbus.Producer`)."""

    if TYPE_CHECKING:
        name: str
        capacity: int | None

        def send(self, data: Buffer, key: str | Buffer | None = None, *,
                 timeout: float | None = None) -> int:
            ...

        def claim(self, size: int, key: str | Buffer | None = None, *,
                  timeout: float | None = None) -> Claim:
            ...

    def send_obj(self, obj: Any, key: str | bytes | None = None, *,
                 timeout: float | None = None, codec: CodecName = "pickle") -> int:
        """Publish ``obj`` as one message and return its seq.  ``codec`` is
        ``"pickle"`` (protocol 5: contiguous numpy arrays and other ``PickleBuffer``
        objects inside ``obj`` are copied once into the ring, 8-byte aligned), ``"json"``,
        or, if installed, ``"msgpack"`` or ``"msgspec"``.  Waits for room like
        ``send``.  Raises :class:`MessageTooLarge` if the frame cannot fit the ring,
        ValueError for an unknown codec, :class:`CodecUnavailable` for one whose package
        is not installed, and whatever the codec raises for an object it cannot encode
        (e.g. TypeError from json)."""
        if codec == "pickle":  # the common case first, with as few calls as can be
            bufs: list[pickle.PickleBuffer] = []
            stream = _dumps(obj, 5, buffer_callback=bufs.append)
            if not bufs and len(stream) <= _SMALL:
                return self.send(_pack_head(_MAGIC, _VERSION, _PICKLE, 0, len(stream)) +
                                 stream, key, timeout=timeout)
            klen = _key_length(key)
            frame = codecs.pickle_frame(stream, bufs, klen)
        else:
            klen = _key_length(key)
            frame = codecs.encode_parts(obj, codecs.codec_of(codec), klen)
            if frame.size <= _SMALL:
                return self.send(frame.head, key, timeout=timeout)
        # A sender that has no ring yet (an Outbox before its first send) has no
        # capacity: its claim checks the size.
        cap = getattr(self, "capacity", None)
        if cap is not None and layout.record_size(klen, frame.size) > layout.max_record(cap):
            limit = layout.max_record(cap) - layout.RECORD_HEADER - klen
            name = self.name
            raise MessageTooLarge(
                f"object of {frame.size} bytes as a {codec} frame ({len(frame.buffers)} "
                f"out-of-band buffers) does not fit ring {name!r} of capacity {cap}: the "
                f"largest payload is {limit} bytes with this key; create the ring with a "
                "larger capacity or send the object in parts", name=name, size=frame.size,
                limit=limit)
        if not frame.buffers:
            return self.send(frame.head, key, timeout=timeout)
        claim = self.claim(frame.size, key, timeout=timeout)
        with claim as view:
            codecs.frame_into(frame, view)
        assert claim.seq is not None  # set when the block exits
        return claim.seq


_UNSET = object()


def _default_accept() -> frozenset[str] | None:
    """Every codec, except pickle when the namespace is shared with a group."""
    if os.environ.get("SHMBUS_GROUP", "").strip():
        return frozenset(c for c in codecs.CODECS if c != "pickle")
    return None


class ObjectReceiver:
    """``recv_obj``, for any class with ``recv(timeout)`` returning a
    :class:`shmbus.Message` (Consumer, Worker, Inbox) and a ``name``."""

    _obj_accept: Any = _UNSET

    if TYPE_CHECKING:
        name: str

        def recv(self, timeout: float | None = None) -> Message:
            ...

    def recv_obj(self, timeout: float | None = None, *, copy: bool = False,
                 accept: Collection[str] | None = None) -> Any:
        """Receive the next message (releasing the previous one, as ``recv``) and
        return the object ``send_obj`` sent in it.  Its arrays (out-of-band buffers)
        are read-only views into the ring, valid until the message is released (the
        next receive: after it they may show other messages' bytes, and cannot raise
        as ``msg.data`` does): pass ``copy=True`` for objects that own their data.  ``accept``:
        the codecs to decode (default all; on a namespace shared with a group,
        ``$SHMBUS_GROUP``, all but pickle).  Raises :class:`Timeout` like ``recv``;
        :class:`FrameError` for a message that is not an object frame or cannot be
        decoded (it was received: ``err.msg`` is it), :class:`PermissionDenied` for a
        codec not accepted, :class:`CodecUnavailable` for one not installed here."""
        msg = self.recv(timeout)
        if accept is None:
            accept = self._obj_accept
            if accept is _UNSET:  # the first call: the environment is read once
                accept = self._obj_accept = _default_accept()
        try:
            return _decode_frame(msg.data, copy, accept, self.name, msg.seq)
        except FrameError as e:
            e.msg = msg  # type: ignore[attr-defined]  # not a field: it does not pickle
            raise


def decode(msg: Any, *, copy: bool = False,
           accept: Collection[str] | None = None) -> Any:
    """The object in ``msg`` (a :class:`shmbus.Message` from ``recv``/``recv_many``, or
    any buffer holding a frame), like ``recv_obj`` would return it (same ``copy``,
    ``accept`` and errors): e.g. ``[decode(m) for m in sub.recv_many(100)]``."""
    if accept is None:
        accept = _default_accept()
    return _decode(msg, copy, accept, None)


def _decode(msg: Any, copy: bool, accept: Collection[str] | None,
            ring: str | None) -> Any:
    if hasattr(msg, "seq"):  # a Message (a numpy array has .data too: not this)
        data, seq = msg.data, msg.seq
    else:  # any buffer
        data, seq = memoryview(msg).cast("B"), None
    try:
        return _decode_frame(data, copy, accept, ring, seq)
    except FrameError as e:
        e.msg = msg  # type: ignore[attr-defined]  # not a field: it does not pickle
        raise
