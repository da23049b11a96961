"""``shmbus rm NAME``: remove a ring, or one durable cursor of it."""

from __future__ import annotations

import click

import shmbus
from shmbus.unlink import remove_durable

from .cli import namespace_option


@click.command("rm")
@click.argument("name")
@click.option("--durable", "-d", default=None, help="Remove only this durable cursor.")
@namespace_option
def command(name: str, durable: str | None, namespace: str | None) -> None:
    """Remove ring NAME (segment, semaphores, lock files) or its durable cursor."""
    if durable:
        remove_durable(name, durable, namespace)
        click.echo(f"removed durable cursor {durable!r} of ring {name!r}")
        return
    if not shmbus.unlink(name, namespace):
        raise click.ClickException(f"ring {name!r} does not exist")
    click.echo(f"removed ring {name!r}")
