"""``shmbus rm NAME``: remove a ring, or one durable cursor of it."""

from __future__ import annotations

import click

from shmbus import fanin, naming
from shmbus.errors import RingNotFound
from shmbus.unlink import remove, remove_durable

from .options import namespace_option


@click.command("rm", epilog="""\b
Examples:
  shmbus rm orders
  shmbus rm orders --durable billing     forget one durable cursor""")
@click.argument("name")
@click.option("--durable", "-d", default=None, help="Remove only this durable cursor.")
@click.option("--force", is_flag=True,
              help="Remove the ring even while a live producer or consumer uses it.")
@namespace_option
def command(name: str, durable: str | None, force: bool, namespace: str | None) -> None:
    """Remove ring NAME (segment, semaphores, lock files) or its durable cursor.

    A ring that a live producer or consumer uses is not removed (they are named)
    unless --force."""
    if durable is not None:  # even "": an empty name is bad usage, never "the whole ring"
        remove_durable(name, durable, namespace)
        click.echo(f"removed durable cursor {durable!r} of ring {name!r}")
        return
    try:
        remove(name, namespace, force=force)
    except RingNotFound:
        ns = naming.resolve_namespace(namespace)
        if not fanin.exists(ns, name):  # not an Inbox either (shmbus.Inbox)
            raise
        rings = fanin.remove_inbox(ns, name, force=force)
        click.echo(f"removed inbox {name!r} and its {len(rings)} sender ring(s)")
        return
    click.echo(f"removed ring {name!r}")
