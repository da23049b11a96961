"""``shmbus tail NAME``: print messages as they arrive."""

from __future__ import annotations

import json

import click

import shmbus

from .cli import namespace_option


def _render(msg: shmbus.Message, fmt: str) -> str:
    data = bytes(msg)
    key = msg.key.decode(errors="replace") if msg.key is not None else None
    if fmt == "json":
        try:
            text = data.decode()
            body = {"data": text}
        except UnicodeDecodeError:
            body = {"data_hex": data.hex()}
        return json.dumps({"seq": msg.seq, "key": key, "timestamp_ns": msg.timestamp_ns,
                           "size": len(data), **body})
    shown = data.hex() if fmt == "hex" else data.decode(errors="replace")
    return f"{msg.seq}\t{key if key is not None else '-'}\t{shown}"


@click.command("tail")
@click.argument("name")
@click.option("--from", "start", type=click.Choice(["latest", "earliest"]),
              default="latest", show_default=True)
@click.option("--count", "-c", type=click.IntRange(1), default=None,
              help="Stop after this many messages.")
@click.option("--format", "fmt", type=click.Choice(["text", "hex", "json"]),
              default="text", show_default=True)
@click.option("--timeout", type=float, default=None,
              help="Stop when no message comes for this many seconds.")
@namespace_option
def command(name, start, count, fmt, timeout, namespace) -> None:
    """Print messages of ring NAME as they arrive (seq, key, data), as an anonymous
    consumer that acknowledges nothing for anyone else and is gone when it exits."""
    with shmbus.Consumer(name, start=start, namespace=namespace) as sub:
        n = 0
        try:
            while count is None or n < count:
                try:
                    msg = sub.recv(timeout=timeout)
                except shmbus.Timeout:
                    break
                click.echo(_render(msg, fmt))
                n += 1
        except KeyboardInterrupt:
            pass
