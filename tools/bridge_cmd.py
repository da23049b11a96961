"""``shmbus bridge out RING ...`` / ``shmbus bridge in ... RING``: relay a ring to a
NATS JetStream subject, or a subject into a ring, in the foreground (as a standby
while another bridge of the same ring and direction runs)."""

from __future__ import annotations

import logging
import signal

import click

from shmbus import layout

from .options import SECONDS, Size, namespace_option

server_option = click.option(
    "--server", "-s", default="nats://127.0.0.1:4222", show_default=True,
    envvar="NATS_URL", help="NATS server URL (default: $NATS_URL, else local).")
subject_option = click.option("--subject", required=True,
                              help="JetStream subject (no wildcards).")
stream_option = click.option(
    "--stream", default=None,
    help="Stream to use, created if missing (default: the stream that captures the "
    "subject, else a new one named shmbus-SUBJECT).")
seconds_option = click.option("--seconds", type=SECONDS, default=None,
                              help="Stop after this long.")


@click.group("bridge")
def command() -> None:
    """Beyond one host: relay rings through NATS JetStream."""


def _serve(relay, seconds: float | None, what: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, lambda *a: relay.stop(0))
    click.echo(what, err=True)
    try:
        relay.run(duration=seconds)
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop(0)
    click.echo(", ".join(f"{k} {v}" for k, v in relay.stats.items()
                         if k != "last_error"), err=True)


@command.command("out")
@click.argument("ring")
@server_option
@subject_option
@stream_option
@click.option("--durable", default="nats-bridge", show_default=True,
              help="The bridge's durable cursor in the ring.")
@click.option("--window", type=click.IntRange(1), default=1024, show_default=True,
              help="Publishes in flight, not yet acknowledged.")
@seconds_option
@namespace_option
def out(ring, server, subject, stream, durable, window, seconds, namespace) -> None:
    """Publish every message of RING to SUBJECT; release it in the ring only once
    JetStream has stored it."""
    from shmbus.bridge import Outbound

    try:
        relay = Outbound(ring, server, subject, stream=stream, namespace=namespace,
                         durable=durable, window=window)
    except ValueError as e:  # a subject that is not one
        raise click.UsageError(str(e)) from None
    _serve(relay, seconds, f"bridge out {ring} -> {server} {subject}")


@command.command("in")
@click.argument("ring")
@server_option
@subject_option
@stream_option
@click.option("--durable", default=None,
              help="JetStream consumer name (default: shmbus-HOST-NAMESPACE-RING).")
@click.option("--capacity", type=Size(layout.MIN_CAPACITY, layout.MAX_CAPACITY),
              default=None, help="Create RING with this size if it does not exist: "
              "bytes, or as `shmbus ls` prints sizes (64K, 16M, 1.5G).")
@click.option("--batch", type=click.IntRange(1), default=1024, show_default=True,
              help="Messages per pull request (two are kept outstanding).")
@click.option("--accept-pickle", is_flag=True,
              help="Let pickled objects (send_obj's default codec) into RING.  Without "
              "it they are refused and counted: unpickling runs code, and anyone who "
              "may publish on SUBJECT could have sent them.")
@seconds_option
@namespace_option
def in_(ring, server, subject, stream, durable, capacity, batch, accept_pickle, seconds,
        namespace) -> None:
    """Write every message of SUBJECT into RING (its producer); acknowledge them
    only once they are in the ring."""
    from shmbus.bridge import Inbound

    try:
        relay = Inbound(server, subject, ring, stream=stream, namespace=namespace,
                        durable=durable, capacity=capacity, batch=batch,
                        accept_pickle=accept_pickle)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    _serve(relay, seconds, f"bridge in {server} {subject} -> {ring}")
