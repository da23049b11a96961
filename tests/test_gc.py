"""``shmbus gc``: what it keeps (unread durable messages, live rings, rings whose
producer is starting) and that it decides and removes under the ring's producer lock."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

import shmbus
from shmbus import cleanup, naming
from shmbus.cleanup import collect
from shmbus.lock import FileLock, lock_holders
from shmbus.tools.cli import main

from . import procs as P
from .support import SPAWN, kill9, start

pytestmark = pytest.mark.timeout(60)


def run(*args):
    return CliRunner().invoke(main, list(args))


def rings_in(ns: str) -> list[str]:
    return naming.ring_names_in(ns, os.listdir(naming.SHM_DIR))


# -- child processes (importable by spawn) ---------------------------------------------

def hold_ring_lock(ns: str, ring: str, role: str, held) -> None:
    """Hold ring ``ring``'s ``role`` lock (``producer``: as a starting producer does;
    ``create``: as a creator or an attaching consumer does), then wait to be killed."""
    lock = FileLock(naming.ring_lock_name(ring, role), namespace=ns,
                    _internal=True, reentrant=False)
    lock.acquire()
    held.set()
    time.sleep(3600)  # waiting to be SIGKILLed
    lock.release()


def start_producer(ns: str, ring: str, results) -> None:
    """Open ring ``ring`` as its producer and publish one message; report what
    happened: "sent" or the error's type name."""
    try:
        with shmbus.Producer(ring, namespace=ns) as pub:
            pub.send(b"mine", timeout=5)
    except shmbus.ShmbusError as e:
        results.put(type(e).__name__)
    else:
        results.put("sent")


# -- unread durable messages (issue 11, item 4) ----------------------------------------

def make_ledger_with_unread_durable() -> None:
    with shmbus.Producer("ledger", capacity=1 << 14) as pub:
        with shmbus.Consumer("ledger", durable="billing"):
            pass  # a durable cursor at the start; nobody attached any more
        pub.send_many([b"a", b"b"])


def test_gc_keeps_a_ring_whose_durable_consumer_has_unread_messages(ns):
    make_ledger_with_unread_durable()
    for dry_run in (True, False):
        kept: list[dict] = []
        done = collect(dry_run=dry_run, kept=kept)
        assert [d for d in done if d["kind"] == "ring"] == []
        [why] = [k for k in kept if k["kind"] == "ring"]
        assert why["name"] == "ledger" and "'billing'" in why["reason"]
        assert "2 unread" in why["reason"] and "--force" in why["reason"]
    assert rings_in(ns) == ["ledger"]
    with shmbus.Consumer("ledger", durable="billing") as sub:  # it comes back: all there
        assert [bytes(m) for m in sub.recv_many(10, timeout=1)] == [b"a", b"b"]
    with shmbus.Consumer("ledger", durable="billing"):
        pass  # caught up now: the ring is free to go
    assert [d["name"] for d in collect() if d["kind"] == "ring"] == ["ledger"]
    assert rings_in(ns) == []


def test_gc_command_says_why_it_keeps_and_force_removes(ns):
    make_ledger_with_unread_durable()
    for argv in (["gc", "--dry-run"], ["gc"]):
        r = run(*argv)
        assert r.exit_code == 0, r.output
        assert "kept ring ledger: durable consumer 'billing' has 2 unread" in r.output
        assert "removed ring" not in r.output
    data = json.loads(run("gc", "--json").output)
    assert data["removed"] == [] and data["kept"][0]["name"] == "ledger"
    r = run("gc", "--force", "--dry-run")
    assert "would remove ring ledger" in r.output and rings_in(ns) == ["ledger"]
    r = run("gc", "--force")
    assert r.exit_code == 0 and "removed ring ledger" in r.output and "billing" in r.output
    assert rings_in(ns) == []


# -- live participants ------------------------------------------------------------------

def test_gc_keeps_a_ring_whose_producer_died_but_whose_consumer_lives(ns, procs):
    started, attached = SPAWN.Event(), SPAWN.Event()
    producer = start(P.produce, ns, "g", 1 << 14, -1, started)
    procs.append(producer)
    assert started.wait(30)
    consumer = start(P.attach_and_hang, ns, "g", attached)
    procs.append(consumer)
    assert attached.wait(30)
    kill9(producer)
    assert shmbus.inspect("g")["producer"]["alive"] == "dead"
    assert [d for d in collect() if d["kind"] == "ring"] == []
    assert rings_in(ns) == ["g"]
    kill9(consumer)
    assert [d["name"] for d in collect() if d["kind"] == "ring"] == ["g"]


# -- gc against a starting producer (issue 11, item 5) ---------------------------------

@pytest.mark.parametrize("role", ["producer", "create"])
def test_gc_leaves_a_ring_whose_producer_or_create_lock_is_held(ns, procs, role):
    shmbus.Producer("r", capacity=1 << 14).close()  # no producer in the header
    held = SPAWN.Event()
    holder = start(hold_ring_lock, ns, "r", role, held)
    procs.append(holder)
    assert held.wait(30)
    assert [d for d in collect() if d["kind"] == "ring"] == []
    assert run("gc").exit_code == 0
    assert rings_in(ns) == ["r"]
    kill9(holder)
    assert [d["name"] for d in collect() if d["kind"] == "ring"] == ["r"]


def test_gc_decides_and_removes_while_holding_the_producer_lock(ns, monkeypatch):
    shmbus.Producer("r", capacity=1 << 14).close()
    seen = []

    def holders() -> list[tuple[int, str]]:
        return [(role, h.pid, h.mode) for role in ("producer", "create")
                for h in lock_holders(f"{naming.lock_dir(ns)}/r@{role}") if not h.waiting]

    real_inspect, real_unlink = cleanup.inspect, cleanup._Collector._unlink_segment

    def inspect(name, namespace=None):
        seen.append(("decide", holders()))
        return real_inspect(name, namespace)

    def unlink(self, ring, *args):
        seen.append(("unlink", holders()))
        return real_unlink(self, ring, *args)

    monkeypatch.setattr(cleanup, "inspect", inspect)
    monkeypatch.setattr(cleanup._Collector, "_unlink_segment", unlink)
    assert [d["name"] for d in collect() if d["kind"] == "ring"] == ["r"]
    me = [("producer", os.getpid(), "exclusive"), ("create", os.getpid(), "exclusive")]
    assert seen == [("decide", me), ("unlink", me)]


@pytest.mark.timeout(90)
def test_a_producer_starting_while_gc_decides_is_never_removed_under_it(ns, monkeypatch):
    """The race of issue 11 item 5, made deterministic: a producer starts right after
    gc has judged the ring unused and before it removes it."""
    shmbus.Producer("r", capacity=1 << 14).close()
    results = SPAWN.Queue()
    real_inspect = cleanup.inspect

    def inspect(name, namespace=None):
        info = real_inspect(name, namespace)  # gc's view: no producer, no consumer
        child = start(start_producer, ns, "r", results)
        try:
            outcome = results.get(timeout=60)
        finally:
            child.join(30)
        results.put(outcome)
        return info

    monkeypatch.setattr(cleanup, "inspect", inspect)
    removed = [d["name"] for d in collect() if d["kind"] == "ring"]
    outcome = results.get(timeout=5)
    if outcome == "sent":  # the producer got in: its ring and message must still be there
        assert removed == [] and rings_in(ns) == ["r"]
        with shmbus.Consumer("r", start="earliest") as sub:
            assert bytes(sub.recv(timeout=1)) == b"mine"
        shmbus.unlink("r")
    else:  # gc held the lock: the producer was told the ring is busy, not robbed
        assert outcome == "RingBusy" and removed == ["r"]
