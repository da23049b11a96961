"""The NATS protocol frames an outbound bridge writes: one ``HPUB`` per message, a
window of them handed to the client as a few large writes.

nats-py's ``publish()`` builds each message's header block through a dict, a regular
expression per header name and several small copies, and signals its flusher once per
message: measured, that is a third of the bridge's time per 64-byte message.  The
bridge's headers are always the same few, of known-safe text (names and decimal
numbers; a key header only as printable ASCII or hex), so it writes the frames itself
with one ``%`` format each and hands a window's frames to the client in one command.
This uses two private methods of nats-py's client (``_send_command``,
``_flush_pending``; the extra pins nats-py); :func:`raw_sender` returns None when
they are missing, and the bridge then publishes through ``publish()``.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from .headers import KEY, KEY_HEX, MSG_ID, SEQ, key_header

_CHUNK = 1 << 20  # bytes of frames handed to the client at a time

_HEAD = (b"NATS/1.0\r\n" + MSG_ID.encode() + b": %s:%d\r\n" + SEQ.encode() +
         b": %d\r\n")
_KEY_LINES = {KEY: KEY.encode() + b": %s\r\n", KEY_HEX: KEY_HEX.encode() + b": %s\r\n"}


def headers_block(identity: bytes, seq: int, key: bytes | None) -> bytes:
    """The header block of ring message ``seq`` (with ``key``, if any)."""
    head = _HEAD % (identity, seq, seq)
    if key is not None:
        name, value = key_header(key)
        head += _KEY_LINES[name] % value.encode()
    return head + b"\r\n"


def hpub(subject: bytes, reply: bytes, headers: bytes, payload) -> list:
    """The pieces of one HPUB frame (``payload``: any buffer)."""
    size = len(headers)
    return [b"HPUB %s %s %d %d\r\n" % (subject, reply, size, size + len(payload)),
            headers, payload, b"\r\n"]


def raw_sender(nc) -> Callable[[list], Awaitable[None]] | None:
    """An ``async send(pieces)`` that writes frames through ``nc`` in chunks of about
    a megabyte, or None if this nats-py has not the methods it needs."""
    send_command = getattr(nc, "_send_command", None)
    flush = getattr(nc, "_flush_pending", None)
    if send_command is None or flush is None:
        return None

    async def send(pieces: list) -> None:
        start, size = 0, 0
        for i, piece in enumerate(pieces):
            size += len(piece)
            if size >= _CHUNK:
                await send_command(b"".join(pieces[start:i + 1]))
                start, size = i + 1, 0
        if start < len(pieces):
            await send_command(b"".join(pieces[start:]))
        await flush()

    return send
