"""``shmbus gc``: remove what no live process owns."""

from __future__ import annotations

import click

from shmbus.cleanup import collect

from .cli import emit_json, json_option, namespace_option


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@namespace_option
@json_option
def command(dry_run: bool, namespace: str | None, as_json: bool) -> None:
    """Remove rings, semaphores, slots and lock files that no live process owns."""
    done = collect(namespace, dry_run=dry_run)
    if as_json:
        emit_json(done)
        return
    verb = "would remove" if dry_run else "removed"
    for item in done:
        click.echo(f"{verb} {item['kind']} {item['name']}: {item['reason']}")
    if not done:
        click.echo("nothing to remove")
