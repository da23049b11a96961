"""``shmbus inspect NAME``: one ring in detail."""

from __future__ import annotations

import click

import shmbus

from . import fmt
from .options import emit_json, json_option, namespace_option
from .stats_files import read_bridges, read_groups


@click.command("inspect", epilog="""\b
Examples:
  shmbus inspect orders
  shmbus inspect orders --json -n myapp""")
@click.argument("name")
@namespace_option
@json_option
def command(name: str, namespace: str | None, as_json: bool) -> None:
    """Show a ring's header, producer and every consumer slot, the balancers that use
    it and its bridges."""
    info = shmbus.inspect(name, namespace)
    groups, problems = balancer_stats_for(name, namespace)
    bridges, bridge_problems = read_bridges(namespace)
    bridges = [b for b in bridges if b["ring"] == name]
    problems += [p for p in bridge_problems if p not in problems]  # (a lock dir's: once)
    if as_json:
        emit_json({**info, "balancers": groups, "bridges": bridges, "skipped": problems})
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
    for b in bridges:
        click.echo(bridge_line(b))
    for line in problems:
        click.echo(f"skipped {line}", err=True)


def bridge_line(b: dict) -> str:
    """One bridge (its published stats, see :mod:`shmbus.bridge.stats`) in a line."""
    where = "to" if b["direction"] == "out" else "from"
    state = b["state"] if b["alive"] else f"dead ({b['state']} when last seen)"
    line = (f"bridge {b['direction']} pid {b['pid']} {state}: {where} {b['server']} "
            f"subject {b['subject']}, relayed {b['relayed']:,}, refused "
            f"{b['refused']:,}, lost {b['lost']:,}, reconnects {b['reconnects']:,}")
    if b["last_error"]:
        line += f"; last error: {b['last_error']}"
    return line


def balancer_stats_for(ring: str, namespace: str | None) -> tuple[list[dict], list[str]]:
    """Stats of the balancer groups that read ``ring`` or own it as a worker ring, and
    the stats files that could not be read."""
    groups, problems = read_groups(namespace)
    return [s for s in groups if ring in s["input_lag_bytes"]
            or ring.startswith(s["group"] + ".w.")], problems


def _or_unknown(value: object) -> object:
    return "?" if value is None else value
