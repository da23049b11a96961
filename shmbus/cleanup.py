"""Garbage collection: remove what no live process owns.

A ring is *in use* while its producer or any attached consumer is alive (pid and start
time).  ``collect`` removes rings not in use (with their durable cursors: stopping every
participant and collecting is how a namespace is emptied), segments that are not readable
rings and whose locks nobody holds, semaphores of rings that no longer exist, and lock
files nobody holds, and leases whose holder is gone (fence files are kept).  In rings still
in use it frees the slots of dead anonymous
consumers.  It never touches anything a live process uses.
"""

from __future__ import annotations

import os

import posix_ipc

from . import liveness, naming
from .errors import ShmbusError
from .introspect import inspect
from .lease import list_leases
from .lock import FileLock, is_lease_file, lock_holders
from .segment import Segment
from .segment import unlink as unlink_segment
from .slots import SlotTable

__all__ = ["collect"]


def collect(namespace: str | None = None, *, dry_run: bool = False) -> list[dict]:
    """Remove what no live process owns in the namespace; return what was (or, with
    ``dry_run``, would be) removed as ``{"kind", "name", "reason"}`` dicts."""
    ns = naming.resolve_namespace(namespace)
    done: list[dict] = []
    entries = _entries()
    for ring in naming.ring_names_in(ns, entries):
        _collect_ring(ns, ring, dry_run, done)
    rings = set(naming.ring_names_in(ns, _entries()))
    for entry in _entries():
        if entry.startswith(f"sem.{ns}.") and "@" in entry:
            ring = entry[len(f"sem.{ns}."):].rsplit("@", 1)[0]
            if ring not in rings or dry_run and any(d["name"] == ring for d in done):
                done.append({"kind": "semaphore", "name": entry, "reason": "ring is gone"})
                if not dry_run:
                    try:
                        posix_ipc.unlink_semaphore("/" + entry[4:])
                    except posix_ipc.ExistentialError:
                        pass
    _collect_locks(ns, dry_run, done)
    return done


def _entries() -> list[str]:
    try:
        return os.listdir(naming.SHM_DIR)
    except OSError:
        return []


def _collect_ring(ns: str, ring: str, dry_run: bool, done: list[dict]) -> None:
    try:
        info = inspect(ring, namespace=ns)
    except ShmbusError as e:
        if _ring_locks_held(ns, ring):
            return
        done.append({"kind": "ring", "name": ring, "reason": f"unreadable: {e}"})
        if not dry_run:
            unlink_segment(ns, ring)
        return
    producer = info["producer"]
    live = (producer is not None and producer["alive"] != "dead") or any(
        c["pid"] and c["alive"] != "dead" for c in info["consumers"])
    if not live:
        done.append({"kind": "ring", "name": ring, "reason": "no live producer or consumer"})
        if not dry_run:
            unlink_segment(ns, ring)
        return
    dead = [c for c in info["consumers"] if c["pid"] and c["alive"] == "dead"
            and not c["durable"]]
    if dead:
        for c in dead:
            done.append({"kind": "slot", "name": f"{ring}[{c['slot']}]",
                         "reason": f"consumer pid {c['pid']} is dead"})
        if not dry_run:
            seg = Segment.open(ns, ring)
            try:
                table = SlotTable(seg)
                with table.lock():
                    table.reclaim_dead()
            finally:
                seg.close()


def _remove(path: str, kind: str, name: str, reason: str, dry_run: bool,
            done: list[dict]) -> None:
    done.append({"kind": kind, "name": name, "reason": reason})
    if not dry_run:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _ring_locks_held(ns: str, ring: str) -> bool:
    directory = naming.lock_dir(ns)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False
    return any(name.startswith(ring + "@") and lock_holders(f"{directory}/{name}")
               for name in names)


def _collect_locks(ns: str, dry_run: bool, done: list[dict]) -> None:
    directory = naming.lock_dir(ns)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    leases = list_leases(ns)
    for lease in leases:
        if lease["pid"] and lease["alive"] != "dead":
            continue
        _remove(f"{directory}/{lease['name']}@lease", "lease", lease["name"],
                "no live holder", dry_run, done)  # tokens stay increasing: shmbus.lease
    live_leases = {le["name"] for le in leases if le["pid"] and le["alive"] != "dead"}
    for name in names:
        path = f"{directory}/{name}"
        if name.endswith("@stats"):
            if f"{name[:-len('@stats')]}.leader" not in live_leases:
                _remove(path, "stats", name, "no live balancer", dry_run, done)
            continue
        if name.endswith(".tmp"):  # a stats file its writer never finished
            writer = name.rsplit(".", 2)[-2]
            if writer.isdigit() and liveness.is_dead(int(writer), 0):
                _remove(path, "stats", name, "writer is dead", dry_run, done)
            continue
        if is_lease_file(name):
            continue  # leases above; fences are kept: they guard resources
        if any(not h.waiting for h in lock_holders(path)):
            continue
        done.append({"kind": "lock", "name": name, "reason": "nobody holds it"})
        if not dry_run:
            probe = FileLock(name, namespace=ns, _internal=True)
            if probe.try_acquire():
                probe.release()  # the last release deletes the file
    if not dry_run:
        try:
            os.rmdir(directory)
        except OSError:
            pass
