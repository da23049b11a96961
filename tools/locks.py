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
    """List locks (holders: pid, mode, since; waiters) and leases (token, holder,
    expiry)."""
    locks = shmbus.list_locks(namespace)
    leases = shmbus.list_leases(namespace)
    if as_json:
        emit_json({"locks": locks, "leases": leases})
        return
    if not locks and not leases:
        click.echo("no locks or leases")
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
    if rows:
        click.echo(fmt.table(["LOCK", "HELD BY", "WAITING"], rows))
    lease_rows = [[le["name"], le["token"],
                   f"{le['pid']} ({le['alive']})" if le["pid"] else "free",
                   f"{le['expires_in']:.1f}s" if le["pid"] else "-"] for le in leases]
    if lease_rows:
        click.echo(fmt.table(["LEASE", "TOKEN", "HOLDER", "EXPIRES IN"], lease_rows))
