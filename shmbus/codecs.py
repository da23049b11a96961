"""Object frames: the payload format of ``send_obj``/``recv_obj``, and its codecs.

One frame is one message's payload, little-endian::

     0       4     5     6       8              16
    +-------+-----+-----+-------+---------------+
    | magic | ver |codec| nbuf  | stream length |   header: MAGIC, FRAME_VERSION,
    +-------+-----+-----+-------+---------------+   codec id, buffer count (u16), u64
    | offset (u64)  | length (u64)  |  x nbuf       the out-of-band buffers: offset from
    +---------------+---------------+               the payload's start, and length
    | stream: the codec's bytes (pickle, JSON, MessagePack) |
    +--------------------------------------------------------+
    | pad | buffer 0 | pad | buffer 1 | ...                  |  pickle only: each buffer
    +--------------------------------------------------------+  8-byte aligned in the ring

Only ``pickle`` frames carry out-of-band buffers: pickle protocol 5 hands every
``PickleBuffer`` (what a contiguous numpy array gives it) to a callback instead of
copying it into the stream; the frame copies each once into the ring, and the receiver
passes read-only views of them back to ``pickle.loads``, so arrays come out as views
into the ring.  Buffers start 8-byte aligned in the ring (a record starts 8-aligned,
then its 24-byte header and the key), which keeps numpy's ``aligned`` flag for every
usual dtype; the offsets are recorded, so the receiver never depends on it.

:func:`parse` checks every length against the payload before slicing: a damaged frame
raises :class:`FrameError`, never reads outside its message.
"""

from __future__ import annotations

import json
import pickle
import struct
from importlib import import_module
from typing import Any, Callable, Collection, NamedTuple

from .errors import CodecUnavailable, FrameError, PermissionDenied
from .layout import ALIGN, RECORD_HEADER

__all__ = ["MAGIC", "FRAME_VERSION", "CODECS", "Frame", "encode_parts", "pickle_frame",
           "frame_into", "frame_bytes", "parse", "decode", "codec_of", "is_pickle"]

MAGIC = b"SBOF"  # "shmbus object frame"
FRAME_VERSION = 1
HEAD = struct.Struct("<4sBBHQ")  # magic, version, codec id, nbuf, stream length
HEAD_SIZE = HEAD.size  # 16
ENTRY_SIZE = 16  # one out-of-band buffer: offset, length
MAX_BUFFERS = 0xFFFF
_pack_head = HEAD.pack


Dumps = Callable[[Any], Any]
Loads = Callable[[memoryview, "list[Any]"], Any]


class Codec:
    """One codec: ``dumps(obj) -> bytes-like`` and ``loads(stream, buffers) -> obj``,
    made by ``make()`` on first use (which imports ``module``, the package it needs;
    None: the standard library)."""

    __slots__ = ("name", "id", "module", "_make", "dumps", "loads", "_ready")
    dumps: Dumps
    loads: Loads

    def __init__(self, name: str, id: int, module: str | None,
                 make: Callable[[], tuple[Dumps, Loads]]) -> None:
        self.name, self.id, self.module, self._make = name, id, module, make
        self._ready: bool | None = None

    def ready(self) -> bool:
        """Whether the codec works here (its package imports); looked up once."""
        if self._ready is None:
            try:
                self.dumps, self.loads = self._make()
                self._ready = True
            except ImportError:
                self._ready = False
        return self._ready


def _pickle() -> tuple[Dumps, Loads]:
    return pickle.dumps, lambda stream, buffers: pickle.loads(stream, buffers=buffers)


def _json() -> tuple[Dumps, Loads]:
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    return (lambda obj: encode(obj).encode(),
            lambda stream, buffers: json.loads(bytes(stream)))


def _msgpack() -> tuple[Dumps, Loads]:
    msgpack = import_module("msgpack")
    unpackb = msgpack.unpackb
    return msgpack.packb, lambda stream, buffers: unpackb(stream, strict_map_key=False)


def _msgspec() -> tuple[Dumps, Loads]:
    mp = import_module("msgspec.msgpack")
    decode = mp.decode
    return mp.encode, lambda stream, buffers: decode(stream)


PICKLE_ID = 1
CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("pickle", PICKLE_ID, None, _pickle),
    Codec("json", 2, None, _json),
    Codec("msgpack", 3, "msgpack", _msgpack),
    Codec("msgspec", 4, "msgspec", _msgspec),
)}
_BY_ID = {c.id: c for c in CODECS.values()}
_KNOWN = ", ".join(f"{c.id} ({c.name})" for c in CODECS.values())


def codec_of(name: str) -> Codec:
    """The codec called ``name``: ValueError for an unknown name,
    :class:`CodecUnavailable` if its library is not installed."""
    codec = CODECS.get(name) if isinstance(name, str) else None
    if codec is None:
        raise ValueError(f"unknown codec {name!r}: use one of {sorted(CODECS)}")
    if not codec.ready():
        raise CodecUnavailable(
            f"codec {name!r} needs the {codec.module} package, which is not installed in "
            f"this process: `pip install {codec.module}` (in every process that sends or "
            "receives it), or use codec='pickle' or 'json'", codec=name)
    return codec


class Frame(NamedTuple):
    """An encoded object: the header, table and stream (``head``), the out-of-band
    buffers and where each goes, and the frame's total ``size``."""
    head: bytes
    buffers: list[memoryview]
    offsets: list[int]
    size: int


def encode_parts(obj: Any, codec: Codec, key_length: int = 0) -> Frame:
    """Encode ``obj``; buffers are placed for a payload that follows a key of
    ``key_length`` bytes (so that they start 8-byte aligned in the ring)."""
    if codec.id != PICKLE_ID:
        stream = codec.dumps(obj)
        return Frame(_pack_head(MAGIC, FRAME_VERSION, codec.id, 0, len(stream)) + stream,
                     [], [], HEAD_SIZE + len(stream))
    bufs: list[pickle.PickleBuffer] = []
    return pickle_frame(pickle.dumps(obj, 5, buffer_callback=bufs.append), bufs,
                        key_length)


def pickle_frame(stream: bytes, bufs: list[pickle.PickleBuffer], key_length: int) -> Frame:
    """The frame of a pickle ``stream`` and the out-of-band buffers pickle gave."""
    if not bufs:
        return Frame(_pack_head(MAGIC, FRAME_VERSION, PICKLE_ID, 0, len(stream)) + stream,
                     [], [], HEAD_SIZE + len(stream))
    if len(bufs) > MAX_BUFFERS:
        raise ValueError(f"object holds {len(bufs)} out-of-band buffers; a frame carries "
                         f"at most {MAX_BUFFERS}: send it in parts")
    raws = []
    for b in bufs:
        try:
            raws.append(b.raw())
        except BufferError:  # not contiguous: its bytes in order, copied
            raws.append(memoryview(memoryview(b).tobytes(order="A")))
    base = (RECORD_HEADER + key_length) % ALIGN  # the payload's offset from alignment
    at = HEAD_SIZE + ENTRY_SIZE * len(raws) + len(stream)
    offsets: list[int] = []
    table: list[int] = []
    for raw in raws:
        at += -(base + at) % ALIGN
        offsets.append(at)
        table += (at, raw.nbytes)
        at += raw.nbytes
    head = b"".join((_pack_head(MAGIC, FRAME_VERSION, PICKLE_ID, len(raws), len(stream)),
                     struct.pack(f"<{len(table)}Q", *table), stream))
    return Frame(head, raws, offsets, at)


def frame_into(frame: Frame, view: memoryview) -> None:
    """Write ``frame`` into ``view`` (exactly ``frame.size`` writable bytes)."""
    n = len(frame.head)
    view[:n] = frame.head
    for off, raw in zip(frame.offsets, frame.buffers):
        if off > n:
            view[n:off] = bytes(off - n)  # the padding: no stale bytes from the ring
        n = off + raw.nbytes
        view[off:n] = raw


def frame_bytes(obj: Any, codec: str = "pickle", key_length: int = 0) -> bytearray:
    """The whole frame of ``obj`` as a new bytearray (e.g. for ``send_many``; arrays
    land aligned when the message's key is ``key_length`` bytes long)."""
    frame = encode_parts(obj, codec_of(codec), key_length)
    out = bytearray(frame.size)
    frame_into(frame, memoryview(out))
    return out


def _where(ring: str | None, seq: int | None) -> str:
    return "message" + ("" if seq is None else f" seq {seq}") + \
        ("" if ring is None else f" on ring {ring!r}")


def _bad(what: str, saw: str, todo: str, ring: str | None, seq: int | None,
         **fields: object) -> FrameError:
    return FrameError(f"{_where(ring, seq)} {what}, found {saw}: {todo}", name=ring,
                      seq=seq, **fields)


def is_pickle(data: bytes | memoryview) -> bool:
    """Whether ``data`` is an object frame that names the pickle codec (of any frame
    version): what ``recv_obj`` would unpickle, or refuse as a frame it cannot read.
    For trust boundaries such as ``bridge in``, which keep pickles from outside out
    of a ring unless told to let them in."""
    return len(data) >= HEAD_SIZE and data[:4] == MAGIC and data[5] == PICKLE_ID


def parse(data: memoryview, copy: bool = False, accept: Collection[str] | None = None,
          ring: str | None = None, seq: int | None = None
          ) -> tuple[Codec, memoryview, list[Any]]:
    """Check a frame and return its codec, its stream and its out-of-band buffers
    (read-only views of ``data``, or writable copies with ``copy``).  ``accept`` is
    the codecs that may be decoded (None: all); ``ring`` and ``seq`` say in errors
    which message it was.  Raises :class:`FrameError` (not a frame, an unknown
    version or codec, lengths outside the payload), :class:`CodecUnavailable`,
    :class:`PermissionDenied` (a codec not accepted)."""
    n = len(data)
    if n < HEAD_SIZE or data[:4] != MAGIC:
        raise _bad("is not an object frame", f"{bytes(data[:8])!r}"
                   f"{'...' if n > 8 else ''} ({n} bytes)",
                   f"expected one that starts with {MAGIC!r} (sent with send_obj); "
                   "it was received all the same (the exception's `msg` is it): "
                   "receive messages that are not objects with recv()", ring, seq,
                   expected=MAGIC)
    _, version, cid, nbuf, slen = HEAD.unpack_from(data)
    if version != FRAME_VERSION:
        raise _bad(f"has object frame version {version}", f"version {version}",
                   f"this shmbus reads version {FRAME_VERSION}: use the same shmbus "
                   "version on both sides", ring, seq, expected=FRAME_VERSION,
                   found=version)
    codec = _BY_ID.get(cid)
    if codec is None:
        raise _bad("has an unknown codec", f"codec id {cid}", f"this shmbus knows "
                   f"{_KNOWN}: use the same shmbus version on both sides", ring, seq,
                   found=cid)
    if accept is not None and codec.name not in accept:
        raise PermissionDenied(
            f"{_where(ring, seq)} was sent with codec {codec.name!r}, which this receive "
            f"does not accept ({sorted(accept)})" + (
                ": unpickling runs code, and this namespace is shared with a group "
                "($SHMBUS_GROUP), whose every member can write the ring; have senders "
                "use codec='json' (or 'msgpack'), or pass accept={'pickle', ...} if you "
                "trust every member" if codec.id == PICKLE_ID else
                ": pass accept= with it, or have the sender use another codec"),
            codec=codec.name, name=ring, seq=seq)
    if not codec.ready():
        raise CodecUnavailable(
            f"{_where(ring, seq)} was sent with codec {codec.name!r}, which needs the "
            f"{codec.module} package, not installed in this process: "
            f"`pip install {codec.module}`", codec=codec.name, name=ring, seq=seq)
    table_end = HEAD_SIZE + ENTRY_SIZE * nbuf
    stream_end = table_end + slen
    if stream_end > n or (nbuf and codec.id != PICKLE_ID):
        raise _bad("is a damaged object frame", f"{nbuf} buffers and a {slen}-byte "
                   f"stream in {n} bytes", "the sender wrote something else than "
                   "send_obj does; receive it with recv() to inspect it", ring, seq)
    buffers: list[Any] = []
    if nbuf:
        table = struct.unpack_from(f"<{2 * nbuf}Q", data, HEAD_SIZE)
        src = data if copy else data.toreadonly()
        at = stream_end
        for i in range(0, 2 * nbuf, 2):
            off, length = table[i], table[i + 1]
            if off < at or off + length > n:
                raise _bad("is a damaged object frame", f"buffer {i // 2} at "
                           f"[{off}, {off + length}) where [{at}, {n}) was expected",
                           "receive it with recv() to inspect it", ring, seq)
            at = off + length
            buffers.append(bytearray(src[off:at]) if copy else src[off:at])
    return codec, data[table_end:stream_end], buffers


_unpack_head = HEAD.unpack_from
_NO_BUFFERS: list[Any] = []  # never changed: loads only reads it


def decode(data: memoryview, copy: bool = False, accept: Collection[str] | None = None,
           ring: str | None = None, seq: int | None = None) -> Any:
    """The object of frame ``data`` (see :func:`parse`); a stream the codec cannot
    read (or a class the receiver cannot import) raises :class:`FrameError` too."""
    if accept is None and len(data) >= HEAD_SIZE:  # the usual frame: checks inline
        magic, version, cid, nbuf, slen = _unpack_head(data)
        codec = _BY_ID.get(cid)
        if magic == MAGIC and version == FRAME_VERSION and not nbuf and \
                codec is not None and codec._ready and HEAD_SIZE + slen <= len(data):
            stream, buffers = data[HEAD_SIZE:HEAD_SIZE + slen], _NO_BUFFERS
        else:
            codec, stream, buffers = parse(data, copy, accept, ring, seq)
    else:
        codec, stream, buffers = parse(data, copy, accept, ring, seq)
    try:
        return codec.loads(stream, buffers)
    except Exception as e:
        raise FrameError(
            f"{_where(ring, seq)}: codec {codec.name!r} could not rebuild the object "
            f"({type(e).__name__}: {e}): if it names a class or module, make it "
            "importable in this process; otherwise the sender wrote something else than "
            "send_obj does", codec=codec.name, name=ring, seq=seq) from e
