"""``shmbus top``: live rates and lag of every ring and balancer, refreshing."""

from __future__ import annotations

import sys
import time

import click

import shmbus
from shmbus import naming

from . import fmt
from .cli import emit_json, json_option, namespace_option
from .options import SECONDS
from .stats_files import read_groups


def snapshot(namespace: str | None) -> dict:
    """Positions of every readable ring and the stats of every balancer group, now;
    ``skipped`` says what could not be read (a ring removed meanwhile is left out)."""
    ns = naming.resolve_namespace(namespace)
    rings, skipped = {}, []
    for r in shmbus.list_rings(ns):
        if "error" in r:
            skipped.append(f"ring {r['name']}: {r['error']}")
            continue
        try:
            info = shmbus.inspect(r["name"], ns)
        except shmbus.RingNotFound:
            continue
        except (shmbus.ShmbusError, OSError) as e:
            skipped.append(f"ring {r['name']}: {str(e).splitlines()[0]}")
            continue
        rings[r["name"]] = {"messages": info["messages"], "write": info["write"],
                            "capacity": info["capacity"], "consumers": {
                                c["slot"]: (c["durable"] or c["pid"], c["position"],
                                            c["lag_bytes"]) for c in info["consumers"]}}
    found, problems = read_groups(ns)
    groups = {s["group"]: s for s in found}
    return {"time": time.monotonic(), "rings": rings, "groups": groups,
            "skipped": skipped + problems}


def render(prev: dict, cur: dict) -> tuple[str, list]:
    dt = max(1e-9, cur["time"] - prev["time"])
    rows, data = [], []
    for name, r in sorted(cur["rings"].items()):
        p = prev["rings"].get(name, r)
        rate = (r["messages"] - p["messages"]) / dt
        for slot, (who, pos, lag) in sorted(r["consumers"].items()):
            ppos = p["consumers"].get(slot, (who, pos, lag))[1]
            rows.append([name, f"{rate:,.0f}", who, fmt.size((pos - ppos) / dt) + "/s",
                         fmt.size(lag)])
            data.append({"ring": name, "send_rate": rate, "consumer": who,
                         "recv_bytes_per_s": (pos - ppos) / dt, "lag_bytes": lag})
        if not r["consumers"]:
            rows.append([name, f"{rate:,.0f}", "-", "-", "-"])
            data.append({"ring": name, "send_rate": rate})
    out = fmt.table(["RING", "MSG/S IN", "CONSUMER", "READ", "LAG"], rows) if rows \
        else "no rings"
    for g, s in sorted(cur["groups"].items()):
        ps = prev["groups"].get(g, s)
        rate = (s["dispatched"] - ps["dispatched"]) / dt
        out += (f"\n\nbalancer {g} (leader pid {s['leader_pid']}, token {s['lease_token']}, "
                f"{s['policy']}): {rate:,.0f} msg/s dispatched, {s['redelivered']} "
                f"redelivered, {s['dead_lettered']} dead-lettered\n")
        out += fmt.table(["WORKER", "IN FLIGHT", "DISPATCHED", "MSG/S"],
                         [[w, v["in_flight"], v["dispatched"],
                           f"{(v['dispatched'] - ps['workers'].get(w, v)['dispatched']) / dt:,.0f}"]
                          for w, v in sorted(s["workers"].items())])
        data.append({"group": g, "dispatch_rate": rate, **s})
    for line in cur["skipped"]:
        out += f"\nskipped {line}"
        data.append({"skipped": line})
    return out, data


@click.command("top")
@click.option("--interval", type=SECONDS, default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--iterations", "-i", type=click.IntRange(1), default=None,
              help="Refresh this many times, then exit.")
@click.option("--once", is_flag=True, help="One refresh (over --interval), then exit.")
@namespace_option
@json_option
def command(interval, iterations, once, namespace, as_json) -> None:
    """Live view of rings and balancers: rates, lag, workers; Ctrl-C to quit."""
    if once:
        iterations = 1
    prev = snapshot(namespace)
    n = 0
    try:
        while iterations is None or n < iterations:
            time.sleep(interval)
            cur = snapshot(namespace)
            text, data = render(prev, cur)
            if as_json:
                emit_json(data)
            else:
                if iterations is None and sys.stdout.isatty():
                    click.clear()
                click.echo(text)
            prev = cur
            n += 1
    except KeyboardInterrupt:
        pass
