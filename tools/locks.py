"""``shmbus locks``: lock files and who holds them."""

from __future__ import annotations

import time

import click

import shmbus

from . import fmt
from .options import emit_json, json_option, namespace_option


def read_leases(namespace: str | None) -> tuple[list[dict], list[str]]:
    """The namespace's leases, and what kept them from being read (an odd entry in the
    lock directory: a FIFO, another user's file, a file where the directory should
    be) as one line, never a traceback."""
    try:
        return shmbus.list_leases(namespace), []
    except (shmbus.ShmbusError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror and e.filename is None \
            else str(e).splitlines()[0]
        return [], [f"leases: skipped: {reason}"]


@click.command("locks", epilog="""\b
Examples:
  shmbus locks
  shmbus locks --json""")
@namespace_option
@json_option
def command(namespace: str | None, as_json: bool) -> None:
    """List locks (holders: pid, mode, since; waiters) and leases (token, holder,
    expiry)."""
    locks = shmbus.list_locks(namespace)
    leases, skipped = read_leases(namespace)
    if as_json:
        emit_json({"locks": locks, "leases": leases, "skipped": skipped})
        return
    for line in skipped:
        click.echo(line, err=True)
    if not locks and not leases:
        click.echo("no locks or leases")
        return
    rows = []
    now = time.time()
    for lock in locks:
        if "error" in lock:
            rows.append([lock["name"], f"skipped: {lock['error']}", "-"])
            continue
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
