"""What a message may carry: a payload (bytes or any C-contiguous buffer) and a key
(None, str or bytes-like), turned into what the ring stores, or a TypeError/ValueError
that says how to convert them.  Shared by every way of sending."""

from __future__ import annotations

from .errors import MessageTooLarge

__all__ = ["as_bytes_view", "key_bytes"]


def as_bytes_view(data: object) -> memoryview:
    """``data`` as a flat memoryview of bytes (no copy)."""
    try:
        mv = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        hint = " (encode text first: data.encode())" if isinstance(data, str) else ""
        raise TypeError(
            f"message data must be a bytes-like object (bytes, bytearray, memoryview, "
            f"a numpy array), got {type(data).__name__}{hint}") from None
    if mv.format != "B" or mv.ndim != 1:
        if not mv.c_contiguous:
            raise ValueError(
                "message data must be C-contiguous (got a non-contiguous buffer): pass "
                "numpy.ascontiguousarray(data) or bytes(data)")
        mv = mv.cast("B")
    return mv


def key_bytes(key: object) -> bytes:
    """``key`` as the bytes a record stores (b"" for None; str is UTF-8).  Raises
    :class:`MessageTooLarge` for a key over 65535 bytes."""
    if key is None:
        return b""
    if isinstance(key, str):
        key = key.encode()
    elif not isinstance(key, bytes):
        try:  # any buffer (bytearray, memoryview...), never an int: bytes(5) is 5 zeros
            key = memoryview(key).tobytes()  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"key must be str, bytes or a bytes-like object, got "
                            f"{type(key).__name__}: convert it (e.g. str(key))") from None
    if len(key) > 0xFFFF:
        raise MessageTooLarge(f"key of {len(key)} bytes is too long: at most 65535",
                              size=len(key))
    return key
