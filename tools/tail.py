"""``shmbus tail NAME``: print messages as they arrive, never holding back the producer.

tail reads as an :class:`~shmbus.observer.Observer`: it takes no consumer slot, so a
producer never waits for it, even in ``block`` mode and even when tail's output is not
drained or tail is suspended.  What the producer overwrote before tail could read it is
skipped, and tail says so on stderr.

Output is safe for a terminal: in ``text`` format every character that is not
printable (control characters, escape sequences, bidi overrides, bytes that are not
UTF-8) is shown escaped (``\\x1b``, ``\\n``, ``\\u202e``) and a backslash as ``\\\\``, so a
message cannot forge terminal output or lines.  ``hex`` shows data and key in hex;
``json`` shows them as text when they are UTF-8, else as ``data_hex`` / ``key_hex``:
both lossless.
"""

from __future__ import annotations

import json

import click

import shmbus
from shmbus.observer import Observed, Observer

from .options import SECONDS, namespace_option

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(raw: bytes) -> str:
    """``raw`` as one printable line: UTF-8 text with everything that is not printable
    escaped (``\\n``, ``\\x1b``, ``\\u202e``; a backslash as ``\\\\``), and each byte
    that is not UTF-8 as ``\\xNN`` (NN from 80 to ff: unambiguous)."""
    out = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        else:  # \xNN above 0x7f always means a byte that is not UTF-8
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return "".join(out)


def _text_or_hex(raw: bytes | None, name: str) -> dict:
    if raw is None:
        return {name: None}
    try:
        return {name: raw.decode()}
    except UnicodeDecodeError:
        return {f"{name}_hex": raw.hex()}


def render(msg: Observed, fmt: str) -> str:
    """One line for ``msg`` in format ``text``, ``hex`` or ``json``."""
    data, key = bytes(msg), msg.key
    if fmt == "json":
        return json.dumps({"seq": msg.seq, "timestamp_ns": msg.timestamp_ns,
                           "size": len(data), **_text_or_hex(key, "key"),
                           **_text_or_hex(data, "data")})
    if fmt == "hex":
        return f"{msg.seq}\t{'-' if key is None else key.hex()}\t{data.hex()}"
    return f"{msg.seq}\t{'-' if key is None else escape(key)}\t{escape(data)}"


@click.command("tail", epilog="""\b
Examples:
  shmbus tail orders
  shmbus tail orders --from earliest --count 10 --format json""")
@click.argument("name")
@click.option("--from", "start", type=click.Choice(["latest", "earliest"]),
              default="latest", show_default=True)
@click.option("--count", "-c", type=click.IntRange(1), default=None,
              help="Stop after this many messages.")
@click.option("--format", "fmt", type=click.Choice(["text", "hex", "json"]),
              default="text", show_default=True)
@click.option("--timeout", type=SECONDS, default=None,
              help="Stop when no message comes for this many seconds.")
@namespace_option
def command(name, start, count, fmt, timeout, namespace) -> None:
    """Print messages of ring NAME as they arrive (seq, key, data).  tail takes no
    consumer slot: the producer never waits for it; messages overwritten before tail
    could read them are skipped, and counted on stderr."""
    with Observer(name, start=start, namespace=namespace) as obs:
        n = 0
        try:
            while count is None or n < count:
                try:
                    msg = obs.recv(timeout=timeout)
                except shmbus.Timeout:
                    break
                if msg.skipped:
                    click.echo(f"tail: skipped {msg.skipped} message(s) before seq "
                               f"{msg.seq}: overwritten before tail could read them",
                               err=True)
                click.echo(render(msg, fmt))
                n += 1
        except KeyboardInterrupt:
            pass
