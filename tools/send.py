"""``shmbus send NAME [DATA | -]``: publish from the shell or a pipe."""

from __future__ import annotations

import os
import sys

import click

import shmbus
from shmbus import layout

from .options import SECONDS, Size, namespace_option


def _arg_bytes(value: str, what: str) -> bytes:
    """The bytes the user gave on the command line (Python decoded them with
    surrogateescape: this is lossless, UTF-8 or not)."""
    try:
        return os.fsencode(value)
    except UnicodeEncodeError as e:
        raise click.BadParameter(f"cannot be sent as bytes: {e.reason}",
                                 param_hint=what) from None


@click.command("send", epilog="""\b
Examples:
  shmbus send orders 'hello' --capacity 1M
  seq 10 | shmbus send orders - --key batch-7
  shmbus send frames - --whole < image.png""")
@click.argument("name")
@click.argument("data", required=False)
@click.option("--key", "-k", default=None, help="Key of every message.")
@click.option("--count", "-c", type=click.IntRange(1), default=1, show_default=True,
              help="Send DATA this many times.")
@click.option("--whole", is_flag=True, help="With '-': all of stdin is one message "
              "(default: one message per line).")
@click.option("--capacity", type=Size(layout.MIN_CAPACITY, layout.MAX_CAPACITY),
              default=None, help="Create the ring with this size if it does not exist: "
              "bytes, or as `shmbus ls` prints sizes (64K, 1M, 1.5G); rounded up to a "
              "power of two.")
@click.option("--timeout", type=SECONDS, default=5.0, show_default=True,
              help="Seconds to wait for room in a full ring.")
@namespace_option
def command(name, data, key, count, whole, capacity, timeout, namespace) -> None:
    """Publish DATA (or stdin with '-') to ring NAME.  DATA and --key are sent as the
    exact bytes given on the command line, UTF-8 or not."""
    if data is None:
        raise click.UsageError("give DATA, or '-' to read stdin")
    if key is not None:
        key = _arg_bytes(key, "--key")
    with shmbus.Producer(name, capacity=capacity, namespace=namespace) as pub:
        if data == "-":
            raw = sys.stdin.buffer
            messages = [raw.read()] if whole else (line.rstrip(b"\n") for line in raw)
        else:
            raw_data = _arg_bytes(data, "DATA")
            messages = (raw_data for _ in range(count))
        first, n = None, 0
        for payload in messages:
            seq = pub.send(payload, key=key, timeout=timeout)
            first = seq if first is None else first
            n += 1
    click.echo(f"sent {n} message(s) to {name!r}" + (f", seq {first}..{first + n - 1}"
                                                     if n else ""), err=True)
