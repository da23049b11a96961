"""Read-only views of rings as plain data (dicts, lists, ints, strings), for the CLI
and for users' own monitoring.  Nothing here writes to a ring."""

from __future__ import annotations

import os

from . import layout, liveness, naming, ring
from .errors import ShmbusError
from .layout import REC_PAD
from .lock import list_locks
from .segment import Segment

__all__ = ["list_rings", "inspect", "list_locks"]


def list_rings(namespace: str | None = None) -> list[dict]:
    """Summaries of every ring in the namespace: name, capacity, fill, messages,
    producer, consumers and worst lag.  A ring that cannot be read is listed with an
    ``error`` string instead."""
    ns = naming.resolve_namespace(namespace)
    try:
        entries = os.listdir(naming.SHM_DIR)
    except OSError:
        entries = []
    out = []
    for name in naming.ring_names_in(ns, entries):
        try:
            info = inspect(name, namespace=ns)
        except ShmbusError as e:
            out.append({"name": name, "namespace": ns, "error": str(e)})
            continue
        consumers = info["consumers"]
        out.append({
            "name": name, "namespace": ns, "capacity": info["capacity"],
            "on_full": info["on_full"], "fill": info["fill"],
            "messages": info["messages"], "producer": info["producer"],
            "consumers": len([c for c in consumers if c["pid"]]),
            "durable": len([c for c in consumers if c["durable"]]),
            "max_lag_bytes": max((c["lag_bytes"] for c in consumers), default=0),
        })
    return out


def inspect(name: str, namespace: str | None = None) -> dict:
    """Everything about ring ``name``: header fields, producer (pid, alive, epoch),
    positions, and every slot in use (pid, alive, durable name, position, lag in
    bytes, next seq to read, lost).  Raises :class:`RingNotFound` / :class:`CorruptRing`."""
    naming.check_name(name)
    ns = naming.resolve_namespace(namespace)
    seg = Segment.open(ns, name)
    try:
        h = layout.read_header(seg.buf)
        cap = h["capacity"]
        write, tail = h["write"], h["tail"]
        ppid = h["producer_pid"]
        producer = None
        if ppid:
            producer = {"pid": ppid, "start_time": h["producer_start"],
                        "alive": liveness.liveness(ppid, h["producer_start"]).value,
                        "epoch": h["producer_epoch"],
                        "since_ns": h["producer_since_ns"]}
        consumers = []
        slots = layout.read_slots(seg.buf, h["slot_count"])
        for i, s in enumerate(slots):
            if int(s["state"]) == layout.SLOT_FREE:
                continue
            pid, start, read = int(s["pid"]), int(s["start_time"]), int(s["read"])
            consumers.append({
                "slot": i, "durable": layout.slot_name(seg.buf, i),
                "pid": pid, "alive": liveness.liveness(pid, start).value if pid else None,
                "position": read, "lag_bytes": max(0, write - read),
                "next_seq": ring.seq_at(seg.data, cap, read, write), "lost": int(s["lost"]),
                "lag_messages": 0,
            })
        messages = _message_count(seg, h)
        for c in consumers:
            if c["next_seq"] is not None:
                c["lag_messages"] = max(0, messages - c["next_seq"])
        return {
            "name": name, "namespace": ns, "layout_version": h["version"],
            "capacity": cap,
            "on_full": "overwrite" if h["flags"] & layout.FLAG_OVERWRITE else "block",
            "slot_count": h["slot_count"], "segment_size": h["segment_size"],
            "created_at_ns": h["created_at_ns"],
            "write": write, "tail": tail, "fill": min(1.0, (write - tail) / cap),
            "messages": messages, "oldest_seq": _oldest_seq(seg, h),
            "producer": producer, "consumers": consumers,
        }
    finally:
        seg.close()


def _message_count(seg: Segment, h: dict) -> int:
    """Messages ever published: the seq after the last record (read racily: a live
    producer may be publishing meanwhile)."""
    try:
        return ring.next_seq_after(seg.data, h["capacity"], h["write"], h["last"],
                                   h["tail"], h["count"])
    except ValueError:
        return h["count"]


def _oldest_seq(seg: Segment, h: dict) -> int | None:
    """The seq of the oldest message the ring still holds (None if it holds none)."""
    cap = h["capacity"]
    pos = ring.find_boundary(seg.words, layout.block_shift(cap), h["tail"], h["write"])
    while pos is not None and pos < h["write"]:
        rec = ring.read(seg.data, pos, cap)
        if not rec.flags & REC_PAD:
            return rec.seq
        pos += rec.size
    return None
