"""``shmbus inspect NAME``: one ring in detail."""

from __future__ import annotations

import click

import shmbus

from . import fmt
from .options import emit_json, json_option, namespace_option
from .stats_files import read_groups


@click.command("inspect", epilog="""\b
Examples:
  shmbus inspect orders
  shmbus inspect orders --json -n myapp""")
@click.argument("name")
@namespace_option
@json_option
def command(name: str, namespace: str | None, as_json: bool) -> None:
    """Show a ring's header, producer and every consumer slot."""
    info = shmbus.inspect(name, namespace)
    groups, problems = balancer_stats_for(name, namespace)
    if as_json:
        emit_json({**info, "balancers": groups, "skipped": problems})
        return
    p = info["producer"]
    lines = [
        f"ring {info['name']} (namespace {info['namespace']}, layout v{info['layout_version']})",
        f"  capacity {fmt.size(info['capacity'])}, on_full={info['on_full']}, "
        f"{info['slot_count']} slots",
        f"  messages {info['messages']}, oldest seq {info['oldest_seq']}, "
        f"fill {info['fill']:.0%} (write {info['write']}, tail {info['tail']})",
        "  producer " + (f"pid {p['pid']} ({p['alive']}), epoch {p['epoch']}" if p
                         else "none"),
    ]
    click.echo("\n".join(lines))
    rows = [[c["slot"], c["durable"] or "-", c["pid"] or "-", c["alive"] or "detached",
             c["position"], f"{_or_unknown(c['lag_messages'])} ({fmt.size(c['lag_bytes'])})",
             "-" if c["next_seq"] is None else c["next_seq"], c["lost"]]
            for c in info["consumers"]]
    if rows:
        click.echo(fmt.table(["SLOT", "DURABLE", "PID", "STATE", "POSITION",
                              "LAG MSGS (BYTES)",
                              "NEXT SEQ", "LOST"], rows))
    else:
        click.echo("  no consumers")
    for g in groups:
        role = "input" if name in g["input_lag_bytes"] else "worker ring"
        click.echo(f"balancer {g['group']} ({role}): leader pid {g['leader_pid']}, token "
                   f"{g['lease_token']}, {g['policy']}, dispatched {g['dispatched']}, "
                   f"redelivered {g['redelivered']}, dead-lettered {g['dead_lettered']}")
    for line in problems:
        click.echo(f"skipped {line}", err=True)


def balancer_stats_for(ring: str, namespace: str | None) -> tuple[list[dict], list[str]]:
    """Stats of the balancer groups that read ``ring`` or own it as a worker ring, and
    the stats files that could not be read."""
    groups, problems = read_groups(namespace)
    return [s for s in groups if ring in s["input_lag_bytes"]
            or ring.startswith(s["group"] + ".w.")], problems


def _or_unknown(value: object) -> object:
    return "?" if value is None else value
