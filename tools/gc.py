"""``shmbus gc``: remove what no live process owns, and only what is ours."""

from __future__ import annotations

import click

from shmbus.cleanup import collect

from .options import emit_json, json_option, namespace_option


@click.command("gc", epilog="""\b
Examples:
  shmbus gc --dry-run      say what would be removed, and what is kept and why
  shmbus gc""")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--force", is_flag=True,
              help="Also remove rings whose durable consumers have unread messages.")
@namespace_option
@json_option
def command(dry_run: bool, force: bool, namespace: str | None, as_json: bool) -> None:
    """Remove rings, semaphores, slots and lock files that no live process owns.

    A ring whose durable consumer has unread messages is kept (and said so) unless
    --force.  Entries that are not ours (another user's, a symlink, another program's
    file) are left alone and reported."""
    kept: list[dict] = []
    done = collect(namespace, dry_run=dry_run, force=force, kept=kept)
    if as_json:
        emit_json({"removed": done, "kept": kept})
        return
    verb = "would remove" if dry_run else "removed"
    for item in done:
        click.echo(f"{verb} {item['kind']} {item['name']}: {item['reason']}")
    for item in kept:
        click.echo(f"kept {item['kind']} {item['name']}: {item['reason']}")
    if not done and not kept:
        click.echo("nothing to remove")
