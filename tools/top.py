"""``shmbus top``: live rates and lag of every ring and balancer, refreshing.

One screen an operator reads at a glance: a header (namespace, time, refresh), each
ring with its write rate (messages and bytes per second) and each of its consumers
under it with its read rate, lag (messages and bytes) and losses.  On a ``block`` ring
the slowest consumer is the gate the producer may not pass: it is marked, and when the
ring is full behind it (the producer waits for room) it is highlighted as the one
holding the producer back, and its bridges (``shmbus bridge in/out``) under it with
their state, relay rate and counters.  Balancer groups follow, with their workers.

Read-only (:mod:`shmbus.tools.snapshot`): top never takes a consumer slot, so it never
holds back a producer.  Colour only on a terminal (``--color auto``), never when
``NO_COLOR`` is set (unless ``--color always``).  ``--json`` prints one JSON object per
refresh, one per line.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from . import fmt, snapshot
from .options import SECONDS, json_option, namespace_option

_SORTS = ("name", "rate", "lag")


# -- what changed between two snapshots ------------------------------------------------

def view(prev: dict, cur: dict, sort: str = "name") -> dict:
    """The data of one refresh (what ``--json`` prints): rates over the time between
    the snapshots ``prev`` and ``cur``, sorted by ``sort`` (name, rate or lag)."""
    dt = max(1e-9, cur["time"] - prev["time"])
    rings = [_ring_view(name, r, prev["rings"].get(name), dt, sort)
             for name, r in cur["rings"].items()]
    before = {_bridge_id(b): b for b in prev.get("bridges", [])}
    bridges = [_bridge_view(b, before.get(_bridge_id(b)), dt)
               for b in cur.get("bridges", [])]
    for r in rings:
        r["bridges"] = [b for b in bridges if b["ring"] == r["name"]]
    groups = [_group_view(s, prev["groups"].get(g), dt, sort)
              for g, s in cur["groups"].items()]
    return {"namespace": cur["namespace"], "time": cur["wall"], "interval": dt,
            "sort": sort, "rings": _sorted(rings, sort), "groups": _sorted(groups, sort),
            # (bridges of a ring that is not there: an inbound one before it made it)
            "bridges": [b for b in bridges if b["ring"] not in cur["rings"]],
            "skipped": cur["skipped"]}


def _bridge_id(b: dict) -> tuple:
    return (b["name"], b["start_time"])


def _bridge_view(b: dict, p: dict | None, dt: float) -> dict:
    p = p or b
    return {"name": f"bridge {b['direction']} pid {b['pid']}", "ring": b["ring"],
            "direction": b["direction"], "pid": b["pid"], "alive": b["alive"],
            "state": b["state"], "server": b["server"], "subject": b["subject"],
            "relayed": b["relayed"], "refused": b["refused"], "lost": b["lost"],
            "reconnects": b["reconnects"], "last_error": b["last_error"],
            "msgs_per_s": _per_s(b["relayed"], p["relayed"], dt)}


def _per_s(now: float | None, before: float | None, dt: float) -> float | None:
    return None if now is None or before is None else max(0.0, now - before) / dt


def _ring_view(name: str, r: dict, p: dict | None, dt: float, sort: str) -> dict:
    p = p or r
    before = {(c["slot"], c["durable"], c["pid"]): c for c in p["consumers"]}
    consumers = []
    for c in r["consumers"]:
        b = before.get((c["slot"], c["durable"], c["pid"]), c)
        consumers.append({**c, "msgs_per_s": _per_s(c["read_messages"],
                                                      b["read_messages"], dt),
                          "bytes_per_s": _per_s(c["position"], b["position"], dt),
                          "losing": c["lost"] > b["lost"]})
    producer = r["producer"]
    return {"name": name, "capacity": r["capacity"], "on_full": r["on_full"],
            "fill": r["fill"], "messages": r["messages"], "bytes": r["bytes"],
            "msgs_per_s": _per_s(r["messages"], p["messages"], dt),
            "bytes_per_s": _per_s(r["bytes"], p["bytes"], dt),
            "producer": producer and {"pid": producer["pid"], "alive": producer["alive"]},
            "producer_waiting": r["producer_waiting"],
            "lag_messages": max((c["lag_messages"] or 0 for c in consumers), default=0),
            "lag_bytes": max((c["lag_bytes"] for c in consumers), default=0),
            "consumers": _sorted(consumers, sort)}


def _group_view(s: dict, p: dict | None, dt: float, sort: str) -> dict:
    p = p or s
    workers = [{"name": w, "in_flight": v["in_flight"], "dispatched": v["dispatched"],
                "msgs_per_s": _per_s(v["dispatched"],
                                     p["workers"].get(w, v)["dispatched"], dt),
                "lag_messages": v["in_flight"]}
               for w, v in s["workers"].items()]
    return {"name": s["group"], "policy": s["policy"], "leader_pid": s["leader_pid"],
            "lease_token": s["lease_token"], "dispatched": s["dispatched"],
            "redelivered": s["redelivered"], "dead_lettered": s["dead_lettered"],
            "in_flight": sum(w["in_flight"] for w in workers),
            "msgs_per_s": _per_s(s["dispatched"], p["dispatched"], dt),
            "lag_messages": sum(w["in_flight"] for w in workers),
            "workers": _sorted(workers, sort)}


def _sorted(items: list[dict], sort: str) -> list[dict]:
    """By name; or busiest first (rate: messages per second); or furthest behind
    first (lag: messages, then bytes); ties by name."""
    if sort == "rate":
        return sorted(items, key=lambda i: (-(i["msgs_per_s"] or 0), i["name"]))
    if sort == "lag":
        return sorted(items, key=lambda i: (-(i["lag_messages"] or 0),
                                            -i.get("lag_bytes", 0), i["name"]))
    return sorted(items, key=lambda i: i["name"])


# -- the screen -----------------------------------------------------------------------

class Painter:
    """Styles text when colour is on, else leaves it alone."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, **style: object) -> str:
        return click.style(text, **style) if self.color and style else text


def render(data: dict, paint: Painter, live: bool) -> str:
    """The screen for one refresh's ``data`` (see :func:`view`)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["time"]))
    how = (f"every {data['interval']:.1f} s, Ctrl-C quits" if live
           else f"rates over {data['interval']:.1f} s")
    lines = [paint(f"shmbus top  namespace {data['namespace']}  {when}  ({how}, "
                   f"sorted by {data['sort']})", bold=True), ""]
    lines += _rings_table(data["rings"], paint) if data["rings"] else ["no rings"]
    lines += [paint(f"{b['name']} of ring {b['ring']} (not there): {b['state']}",
                    fg="yellow") for b in data.get("bridges", [])]
    for g in data["groups"]:
        lines += ["", *_group_table(g, paint)]
    lines += [paint(f"skipped {line}", fg="yellow") for line in data["skipped"]]
    return "\n".join(lines)


def _rate(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    return fmt.size(value) + "/s" if unit == "B" else fmt.count(value)


def _rings_table(rings: list[dict], paint: Painter) -> list[str]:
    rows: list[tuple[list[str], dict]] = []
    for r in rings:
        p = r["producer"]
        state = ("no producer" if p is None else f"producer {p['pid']} {p['alive']}")
        note, style = "", {"bold": True}
        if r["producer_waiting"]:
            note, style = "producer waiting for room", {"bold": True, "fg": "red"}
        rows.append(([f"{r['name']} ({r['on_full']}, {fmt.size(r['capacity'])})", state,
                      f"{r['fill']:.0%}", _rate(r["msgs_per_s"], "msg"),
                      _rate(r["bytes_per_s"], "B"), "", "", "", note], style))
        # The gate is worth a note where it tells something: among several consumers,
        # or once it holds half the ring.
        gate_note = len(r["consumers"]) > 1 or r["lag_bytes"] >= r["capacity"] // 2
        for c in r["consumers"]:
            rows.append(_consumer_row(c, gate_note))
        for b in r.get("bridges", []):
            rows.append(_bridge_row(b))
    return _table(["RING / CONSUMER", "STATE", "FILL", "MSG/S", "BYTES/S", "LAG MSGS",
                   "LAG BYTES", "LOST", ""], rows, paint, right={2, 3, 4, 5, 6, 7})


def _consumer_row(c: dict, gate_note: bool) -> tuple[list[str], dict]:
    state = c["alive"] or "detached"
    if c["durable"]:
        state = f"durable, {state}"
    note, style = "", {}
    if c["holds_back"]:
        note, style = "<< holds back the producer (ring full)", {"fg": "red", "bold": True}
    elif c["gate"] and gate_note:
        note, style = "< slowest: the producer's gate", {"fg": "yellow"}
    if c["losing"] or c["lapped"]:
        note, style = ("<< lapped: losing messages the producer overwrote",
                       {"fg": "magenta", "bold": True})
    if c["alive"] == "dead":
        style = {**style, "dim": True}
    lag = "?" if c["lag_messages"] is None else f"{c['lag_messages']:,}"
    return ([f"  {c['name']}", state, "", _rate(c["msgs_per_s"], "msg"),
             _rate(c["bytes_per_s"], "B"), lag, fmt.size(c["lag_bytes"]),
             f"{c['lost']:,}", note], style)


def _bridge_row(b: dict) -> tuple[list[str], dict]:
    """A bridge under its ring: MSG/S is what it relays (acknowledged by JetStream, or
    written into the ring), LOST what it lost (out) or refused (in)."""
    where = "to" if b["direction"] == "out" else "from"
    state = b["state"] if b["alive"] else "dead"
    note, style = f"{where} {b['server']} {b['subject']}", {}
    if b["reconnects"]:
        note += f", {b['reconnects']:,} reconnects"
    if not b["alive"]:
        style = {"dim": True}
    elif b["state"] == "reconnecting":
        note, style = f"<< {b['last_error'] or 'reconnecting'}", {"fg": "red"}
    return ([f"  {b['name']}", state, "", _rate(b["msgs_per_s"], "msg"), "", "", "",
             f"{b['lost'] + b['refused']:,}", note], style)


def _group_table(g: dict, paint: Painter) -> list[str]:
    head = paint(f"balancer {g['name']}  ({g['policy']}, leader pid {g['leader_pid']}, "
                 f"token {g['lease_token']}): {_rate(g['msgs_per_s'], 'msg')} msg/s "
                 f"dispatched, {g['in_flight']:,} in flight, {g['redelivered']:,} "
                 f"redelivered, {g['dead_lettered']:,} dead-lettered", bold=True)
    rows = [([f"  {w['name']}", f"{w['in_flight']:,}", f"{w['dispatched']:,}",
              _rate(w["msgs_per_s"], "msg")], {}) for w in g["workers"]]
    return [head, *_table(["  WORKER", "IN FLIGHT", "DISPATCHED", "MSG/S"], rows, paint,
                          right={1, 2, 3})]


def _table(headers: list[str], rows: list[tuple[list[str], dict]], paint: Painter,
           right: set[int]) -> list[str]:
    """Aligned columns (``right``: right-aligned ones); each row styled as a whole
    after padding, so that escape codes never disturb the alignment."""
    widths = [max(len(r[i]) for r in [headers] + [cells for cells, _ in rows])
              for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [paint(line(headers), bold=True, underline=True)] + \
        [paint(line(cells), **style) for cells, style in rows]


def use_color(choice: str) -> bool:
    """``always``, ``never``, or ``auto``: only on a terminal, and not when the
    ``NO_COLOR`` environment variable is set to anything (https://no-color.org)."""
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@click.command("top", epilog="""\b
Examples:
  shmbus top                     refresh every second until Ctrl-C
  shmbus top --sort lag          furthest-behind consumers first
  shmbus top --once --json       one refresh as JSON, for scripts""")
@click.option("--interval", type=SECONDS, default=1.0, show_default=True,
              help="Seconds between refreshes (rates are over this time).")
@click.option("--iterations", "-i", type=click.IntRange(1), default=None,
              help="Refresh this many times, then exit.")
@click.option("--once", is_flag=True, help="One refresh (over --interval), then exit.")
@click.option("--sort", type=click.Choice(_SORTS), default="name", show_default=True,
              help="Order of rings, consumers, groups and workers: by name, busiest "
              "first (rate), or furthest behind first (lag).")
@click.option("--color", "color", type=click.Choice(["auto", "always", "never"]),
              default="auto", show_default=True,
              help="Colour: auto = only on a terminal and without $NO_COLOR.")
@namespace_option
@json_option
def command(interval, iterations, once, sort, color, namespace, as_json) -> None:
    """Live view of rings and balancers: rates (msg/s, bytes/s), lag (messages and
    bytes), the consumer holding a producer back, workers.  Read-only: top never
    holds back a producer."""
    if once:
        iterations = 1
    live = iterations is None
    paint = Painter(use_color(color))
    prev = snapshot.take(namespace)
    n = 0
    try:
        while iterations is None or n < iterations:
            time.sleep(interval)
            cur = snapshot.take(namespace)
            data = view(prev, cur, sort)
            if as_json:
                click.echo(json.dumps(data, sort_keys=True))
            else:
                if live and sys.stdout.isatty():
                    click.clear()
                click.echo(render(data, paint, live), color=paint.color)
            prev = cur
            n += 1
    except KeyboardInterrupt:
        pass
