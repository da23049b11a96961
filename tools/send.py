"""``shmbus send NAME [DATA | -]``: publish from the shell or a pipe."""

from __future__ import annotations

import sys

import click

import shmbus

from .cli import namespace_option


@click.command("send")
@click.argument("name")
@click.argument("data", required=False)
@click.option("--key", "-k", default=None, help="Key of every message.")
@click.option("--count", "-c", type=click.IntRange(1), default=1, show_default=True,
              help="Send DATA this many times.")
@click.option("--whole", is_flag=True, help="With '-': all of stdin is one message "
              "(default: one message per line).")
@click.option("--capacity", type=int, default=None,
              help="Create the ring with this many bytes if it does not exist.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for room in a full ring.")
@namespace_option
def command(name, data, key, count, whole, capacity, timeout, namespace) -> None:
    """Publish DATA (or stdin with '-') to ring NAME."""
    if data is None:
        raise click.UsageError("give DATA, or '-' to read stdin")
    with shmbus.Producer(name, capacity=capacity, namespace=namespace) as pub:
        if data == "-":
            raw = sys.stdin.buffer
            messages = [raw.read()] if whole else (line.rstrip(b"\n") for line in raw)
        else:
            messages = (data.encode() for _ in range(count))
        first, n = None, 0
        for payload in messages:
            seq = pub.send(payload, key=key, timeout=timeout)
            first = seq if first is None else first
            n += 1
    click.echo(f"sent {n} message(s) to {name!r}" + (f", seq {first}..{first + n - 1}"
                                                     if n else ""), err=True)
