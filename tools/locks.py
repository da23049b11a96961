"""``shmbus locks``: lock files and who holds them."""

from __future__ import annotations

import time

import click

import shmbus

from . import fmt
from .cli import emit_json, json_option, namespace_option


@click.command("locks")
@namespace_option
@json_option
def command(namespace: str | None, as_json: bool) -> None:
    """List locks with their holders (pid, mode, since) and waiters."""
    locks = shmbus.list_locks(namespace)
    if as_json:
        emit_json(locks)
        return
    if not locks:
        click.echo("no locks")
        return
    rows = []
    now = time.time()
    for lock in locks:
        holders = [h for h in lock["holders"] if not h["waiting"]]
        waiting = len(lock["holders"]) - len(holders)
        who = ", ".join(f"{h['pid']} {h['mode']}" +
                        (f" {now - h['since']:.1f}s" if h["since"] else "")
                        for h in holders) or "free"
        rows.append([lock["name"], who, waiting])
    click.echo(fmt.table(["LOCK", "HELD BY", "WAITING"], rows))
