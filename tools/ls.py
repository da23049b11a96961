"""``shmbus ls``: every ring in the namespace."""

from __future__ import annotations

import click

import shmbus

from . import fmt
from .options import emit_json, json_option, namespace_option


@click.command("ls", epilog="""\b
Examples:
  shmbus ls
  shmbus ls --locks -n myapp
  shmbus ls --json""")
@click.option("--locks", "-l", "with_locks", is_flag=True,
              help="Also list locks and leases (as `shmbus locks`).")
@namespace_option
@json_option
def command(with_locks: bool, namespace: str | None, as_json: bool) -> None:
    """List rings: capacity, fill, messages, producer, consumers, worst lag."""
    rings = shmbus.list_rings(namespace)
    if as_json:
        if not with_locks:
            emit_json(rings)
            return
        from .locks import read_leases
        leases, skipped = read_leases(namespace)
        emit_json({"rings": rings, "locks": shmbus.list_locks(namespace),
                   "leases": leases, "skipped": skipped})
        return
    if with_locks:
        from .locks import command as locks_command
        click.get_current_context().invoke(locks_command, namespace=namespace,
                                           as_json=False)
    if not rings:
        click.echo("no rings")
        return
    rows = []
    for r in rings:
        if "error" in r:
            rows.append([r["name"], "?", "?", "?", "?", "?", "?", "error: " + r["error"]])
            continue
        p = r["producer"]
        producer = f"{p['pid']} ({p['alive']})" if p else "-"
        rows.append([r["name"], fmt.size(r["capacity"]), f"{r['fill']:.0%}", r["messages"],
                     producer, r["consumers"], r["durable"], fmt.size(r["max_lag_bytes"])])
    click.echo(fmt.table(["RING", "CAPACITY", "FILL", "MESSAGES", "PRODUCER",
                          "CONSUMERS", "DURABLE", "MAX LAG"], rows))
