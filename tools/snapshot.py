"""The state of a namespace as ``shmbus top`` and ``shmbus metrics`` show it: every
ring with its counters and consumers, every balancer group and every bridge, read now.

Read-only: rings are looked at with :func:`shmbus.inspect` (no consumer slot is taken,
so a producer is never held back), balancer groups and bridges through their stats
files.  Lag is
counted in messages (by seq: the producer's next seq minus the consumer's next) and
in bytes.  On a ``block`` ring the consumer with the lowest position is the *gate*:
the producer may not pass it; it *holds back* the producer when the ring is full
behind it (:data:`FULL`) or the producer waits for room.
"""

from __future__ import annotations

import time

import shmbus
from shmbus import naming

from .stats_files import read_bridges, read_groups

FULL = 0.9  # fill behind the gate at which a block ring counts as full


def take(namespace: str | None) -> dict:
    """Every readable ring and balancer group of the namespace, now::

        {"namespace", "time" (monotonic s), "wall" (epoch s),
         "rings": {name: ring}, "groups": {name: stats}, "bridges": [stats],
         "skipped": [line]}

    A ring: ``capacity, on_full, messages`` (ever sent), ``bytes`` (ever written),
    ``fill, producer, producer_waiting, consumers``; a consumer: ``slot, name``
    (durable name or ``pid N``), ``durable, pid, alive, position, read_messages``
    (None if unknown), ``lag_messages`` (messages it can still receive; None if
    unknown), ``lag_bytes, lost, lapped`` (the producer overwrote messages it had not
    read: an overwrite ring), ``gate, holds_back``.  ``skipped`` says what could not be read (a ring removed meanwhile
    is left out)."""
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
        rings[r["name"]] = _ring(info)
    found, problems = read_groups(ns)
    bridges, bridge_problems = read_bridges(ns)
    return {"namespace": ns, "time": time.monotonic(), "wall": time.time(),
            "rings": rings, "groups": {s["group"]: s for s in found},
            "bridges": bridges, "skipped": skipped + problems +
            [p for p in bridge_problems if p not in problems]}  # (a lock dir's: once)


def _ring(info: dict) -> dict:
    messages = info["messages"]
    consumers = [{
        # anonymous: pid and slot (one process may hold several slots of a ring)
        "slot": c["slot"], "name": c["durable"] or f"pid {c['pid']} slot {c['slot']}",
        "durable": c["durable"], "pid": c["pid"] or None, "alive": c["alive"],
        "position": c["position"], "lag_bytes": c["lag_bytes"],
        "lag_messages": c["lag_messages"],
        "read_messages": (None if c["lag_messages"] is None
                          else max(0, messages - c["lag_messages"])),
        "lost": c["lost"], "lapped": c["position"] < info["tail"],
        "gate": False, "holds_back": False,
    } for c in info["consumers"]]
    ring = {"capacity": info["capacity"], "on_full": info["on_full"],
            "messages": messages, "bytes": info["write"], "fill": info["fill"],
            "producer": info["producer"], "producer_waiting": info["producer_waiting"],
            "consumers": consumers}
    if info["on_full"] == "block" and consumers:
        slowest = min(consumers, key=lambda c: c["position"])
        if slowest["lag_bytes"] > 0:
            slowest["gate"] = True
            slowest["holds_back"] = (info["producer_waiting"] or
                                     slowest["lag_bytes"] >= FULL * info["capacity"])
    return ring
