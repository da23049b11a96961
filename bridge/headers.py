"""What travels with a relayed message: its ring identity and seq, its key, and the
names derived from a subject.

``Nats-Msg-Id`` is ``{namespace}/{ring}@{created_at_ns}:{seq}``: the ring's identity
(a ring removed and created again under the same name is another ring, with seqs from
0 again) and the message's seq.  JetStream drops a publish whose id it has seen within
the stream's duplicate window (2 minutes by default), so a restarted bridge may resend
what it was not sure of.  ``Shmbus-Seq`` repeats the seq for readers of the stream;
``Shmbus-Key`` holds the key when it is printable ASCII (``Shmbus-Key-Hex`` otherwise:
header values are text lines).
"""

from __future__ import annotations

import os
import re
import socket

MSG_ID = "Nats-Msg-Id"
SEQ = "Shmbus-Seq"
KEY = "Shmbus-Key"
KEY_HEX = "Shmbus-Key-Hex"

_TEXT_KEY = re.compile(rb"[!-~](?:[ -~]*[!-~])?")  # printable, no edge whitespace
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")


def ring_identity(namespace: str, ring: str, created_at_ns: int) -> str:
    """The identity of one ring on one host (its creation time tells a ring from a
    later one of the same name)."""
    return f"{namespace}/{ring}@{created_at_ns}"


def msg_id(identity: str, seq: int) -> str:
    return f"{identity}:{seq}"


def parse_msg_id(value: str | None) -> tuple[str, int] | None:
    """``(identity, seq)`` from a ``Nats-Msg-Id`` this bridge wrote, else None."""
    if not value:
        return None
    identity, _, seq = value.rpartition(":")
    if not identity or not seq.isdigit():
        return None
    return identity, int(seq)


def key_header(key: bytes) -> tuple[str, str]:
    """The header that carries ``key``: text when it can be, hex otherwise."""
    if _TEXT_KEY.fullmatch(key):
        return KEY, key.decode("ascii")
    return KEY_HEX, key.hex()


def key_from_headers(headers: dict | None) -> bytes | None:
    if not headers:
        return None
    if KEY in headers:
        return headers[KEY].encode("ascii")
    if KEY_HEX in headers:
        return bytes.fromhex(headers[KEY_HEX])
    return None


def stream_name(subject: str) -> str:
    """The stream a bridge creates for ``subject`` when none captures it and none was
    named: ``shmbus-`` and the subject with every character a stream name cannot
    hold replaced by ``_`` (``orders.eu`` -> ``shmbus-orders_eu``)."""
    return "shmbus-" + _NOT_NAME.sub("_", subject)


def consumer_name(namespace: str, ring: str) -> str:
    """The JetStream durable an inbound bridge uses by default: one per host, user,
    namespace and ring, so that two hosts relaying one subject into rings of the same
    name do not share a cursor, nor two users of one host whose (private) namespaces
    have the same name."""
    return _NOT_NAME.sub(
        "_", f"shmbus-{socket.gethostname()}-{os.geteuid()}-{namespace}-{ring}")
