"""The balancer with workers in separate processes: dispatch, redelivery, failover."""

from __future__ import annotations

import queue
import time
from collections import Counter, defaultdict

import pytest

import shmbus
from shmbus.balancer import Balancer, Worker, read_stats

from . import procs as P
from .support import SPAWN, await_until, kill9, start

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def group(ns):
    shmbus.Producer("in", capacity=1 << 20).close()
    yield "g"
    from shmbus.cleanup import collect
    shmbus.unlink("in")
    collect(force=True)  # worker rings, dead-letter ring, stats, leases of the stopped group


def workers_in_stats(n: int):
    def ready():
        s = read_stats(None, "g")
        return s is not None and len(s["workers"]) == n
    await_until(ready, 30, what=f"{n} workers joined")


def drain(results, until, timeout=30):
    got = []
    await_until(lambda: (got.extend(_take_all(results)) or until(got)), timeout,
                what="messages delivered")
    return got


def _take_all(q):
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def test_round_robin_each_message_to_exactly_one_worker(group, ns, procs):
    results, stop = SPAWN.Queue(), SPAWN.Event()
    procs.append(start(P.run_balancer, ns, group, ["in"], "round-robin", 1.0, 1000))
    for name in ("a", "b"):
        procs.append(start(P.run_worker, ns, group, name, results, stop))
    workers_in_stats(2)
    with shmbus.Producer("in") as pub:
        for i in range(400):
            pub.send(str(i).encode())
    got = drain(results, lambda g: len(g) >= 400)
    stop.set()
    assert sorted(int(p) for _, _, p, _ in got) == list(range(400))
    share = Counter(w for w, *_ in got)
    assert share == {"a": 200, "b": 200}  # prefetch 1000: nobody was ever skipped
    await_until(lambda: read_stats(None, "g")["dispatched"] >= 400, 30)


def test_consistent_hash_keeps_keys_together_and_in_order(group, ns, procs):
    results, stop = SPAWN.Queue(), SPAWN.Event()
    procs.append(start(P.run_balancer, ns, group, ["in"], "consistent-hash"))
    for name in ("a", "b", "c"):
        procs.append(start(P.run_worker, ns, group, name, results, stop))
    workers_in_stats(3)
    with shmbus.Producer("in") as pub:
        for i in range(600):
            pub.send(str(i).encode(), key=f"user-{i % 20}")
    got = drain(results, lambda g: len(g) >= 600)
    stop.set()
    owner, order = {}, defaultdict(list)
    for worker, key, payload, _ in got:
        assert owner.setdefault(key, worker) == worker  # one worker per key
        order[key].append(int(payload))
    assert all(seq == sorted(seq) for seq in order.values())
    assert len(set(owner.values())) == 3


@pytest.mark.parametrize("policy", ["round-robin", "consistent-hash"])
def test_kill9_worker_redelivers_what_it_had_not_acknowledged(group, ns, procs, policy):
    results, stop = SPAWN.Queue(), SPAWN.Event()
    procs.append(start(P.run_balancer, ns, group, ["in"], policy))
    victim = start(P.run_worker, ns, group, "victim", results, stop, 5)
    procs.append(victim)
    procs.append(start(P.run_worker, ns, group, "survivor", results, stop))
    workers_in_stats(2)
    with shmbus.Producer("in") as pub:
        for i in range(100):
            pub.send(str(i).encode(), key=f"k{i % 10}")
    got = drain(results, lambda g: any(p == b"hanging" for _, _, p, _ in g))
    kill9(victim)
    got += drain(results, lambda g: {int(p) for _, _, p, _ in got + g if p != b"hanging"}
                 >= set(range(100)))
    stop.set()
    delivered = [(w, k, int(p), d) for w, k, p, d in got if p != b"hanging"]
    counts = Counter(i for _, _, i, _ in delivered)
    assert set(counts) == set(range(100))  # nothing lost
    victim_got = {i for w, _, i, _ in delivered if w == "victim"}
    duplicates = {i for i, c in counts.items() if c > 1}
    # Only the victim's last, unreleased message can come twice (at-least-once).
    assert duplicates <= victim_got and len(duplicates) <= 1
    assert all(d == 2 for w, _, i, d in delivered if i in duplicates and w == "survivor")
    await_until(lambda: read_stats(None, "g")["redelivered"] >= 1, 30)
    if policy == "consistent-hash":  # every key's messages reach the survivor in order
        per_key = defaultdict(list)
        for w, key, i, _ in delivered:
            if w == "survivor":
                per_key[key].append(i)
        assert all(s == sorted(s) for s in per_key.values())


def test_standby_takes_over_when_the_leader_dies(group, ns, procs):
    results, stop = SPAWN.Queue(), SPAWN.Event()
    leader = start(P.run_balancer, ns, group, ["in"], "round-robin", 1.0)
    procs.append(leader)
    await_until(lambda: (read_stats(None, "g") or {}).get("leader_pid") == leader.pid, 30)
    procs.append(start(P.run_balancer, ns, group, ["in"], "round-robin", 1.0))
    procs.append(start(P.run_worker, ns, group, "w", results, stop))
    workers_in_stats(1)
    with shmbus.Producer("in") as pub:
        for i in range(50):
            pub.send(str(i).encode())
        drain(results, lambda g: len(g) >= 50)
        kill9(leader)
        await_until(lambda: (read_stats(None, "g") or {}).get("leader_pid")
                    not in (None, leader.pid), 30, what="standby leads")
        for i in range(50, 100):
            pub.send(str(i).encode())
    got = drain(results, lambda g: len(g) >= 50)
    stop.set()
    assert {int(p) for _, _, p, _ in got} >= set(range(50, 100))


def test_bad_input(group, ns):
    with pytest.raises(ValueError, match="unknown policy"):
        Balancer(group, ["in"], policy="random")
    with pytest.raises(ValueError, match="at least one input"):
        Balancer(group, [])
    with pytest.raises(shmbus.InvalidName):
        Balancer("bad/group", ["in"])
    with Worker(group, "dup"):
        with pytest.raises(shmbus.RingBusy, match="already live"):
            Worker(group, "dup")


def test_poison_message_goes_to_the_dead_letter_ring(group, ns, procs):
    """A message whose every worker dies goes to g.dlq after max_deliveries."""
    results, stop = SPAWN.Queue(), SPAWN.Event()
    procs.append(start(P.run_balancer, ns, group, ["in"], "round-robin", 1.0, 64, 2))
    with shmbus.Producer("in") as pub:
        pub.send(b"poison", key="p")
    for round_, name in enumerate(("first", "second")):
        victim = start(P.run_worker, ns, group, name, results, stop, 1)
        procs.append(victim)
        got = drain(results, lambda g: any(p == b"hanging" for _, _, p, _ in g))
        (delivery,) = [(w, p, d) for w, _, p, d in got if p == b"poison"]
        assert delivery == (name, b"poison", round_ + 1)
        kill9(victim)
    await_until(lambda: read_stats(None, "g")["dead_lettered"] == 1, 30)
    with shmbus.Consumer("g.dlq", start="earliest") as dlq:
        msg = dlq.recv(timeout=5)
        assert (bytes(msg), msg.key, msg.deliveries - 1) == (b"poison", b"p", 2)
    stop.set()


@pytest.mark.parametrize("policy", ["round-robin", "consistent-hash"])
def test_workers_join_and_leave_while_messages_flow(group, ns, procs, policy):
    """Nothing is lost or repeated when a worker joins mid-stream and another leaves
    cleanly (what it had not received goes to the others)."""
    results = SPAWN.Queue()
    stop_a, stop_b = SPAWN.Event(), SPAWN.Event()
    procs.append(start(P.run_balancer, ns, group, ["in"], policy, 1.0, 16))
    procs.append(start(P.run_worker, ns, group, "a", results, stop_a))
    workers_in_stats(1)
    started = [SPAWN.Event(), SPAWN.Event()]  # referenced until the children start
    first = start(P.produce, ns, "in", 1 << 20, 1500, started[0])
    procs.append(first)
    got = drain(results, lambda g: len(g) >= 300)
    procs.append(start(P.run_worker, ns, group, "b", results, stop_b))  # joins
    workers_in_stats(2)
    first.join(30)
    assert first.exitcode == 0
    # The second half (seqs 1500-2999) is sent while both are members.
    procs.append(start(P.produce, ns, "in", 1 << 20, 1500, started[1]))
    got += drain(results, lambda g: any(w == "b" for w, *_ in got + g))
    stop_a.set()                                                       # leaves
    got += drain(results, lambda g: len(got) + len(g) >= 3000)
    stop_b.set()
    seqs = Counter(P.check_payload(p)[1] for _, _, p, _ in got)
    assert set(seqs) == set(range(3000)) and max(seqs.values()) == 1
    if policy == "consistent-hash":  # per key, order holds within each worker's stream
        per = defaultdict(list)
        for w, key, p, _ in got:
            per[(w, key)].append(P.check_payload(p)[1])
        assert all(s == sorted(s) for s in per.values())


def test_inspect_and_top_show_the_balancer(group, ns, procs):
    from click.testing import CliRunner

    from shmbus.tools.cli import main
    results, stop = SPAWN.Queue(), SPAWN.Event()
    procs.append(start(P.run_balancer, ns, group, ["in"], "round-robin"))
    procs.append(start(P.run_worker, ns, group, "w", results, stop))
    workers_in_stats(1)
    r = CliRunner().invoke(main, ["inspect", "in"])
    assert r.exit_code == 0 and "balancer g (input)" in r.output
    r = CliRunner().invoke(main, ["inspect", "g.w.w"])
    assert "balancer g (worker ring)" in r.output
    r = CliRunner().invoke(main, ["top", "--once", "--interval", "0.05"])
    assert "balancer g" in r.output and "IN FLIGHT" in r.output
    stop.set()


def test_consistent_hash_waits_while_a_live_workers_ring_is_held(group, ns):
    """A registered worker whose ring a previous leader still holds owns keys: no
    message may go elsewhere meanwhile (it would overtake what that worker holds)."""
    from shmbus.balancer.membership import worker_ring
    w1, w2 = Worker(group, "w1"), Worker(group, "w2")
    previous_leader = shmbus.Producer(worker_ring(group, "w1"))
    b = Balancer(group, ["in"], policy="consistent-hash", poll=0.005)
    b.start()
    try:
        with shmbus.Producer("in") as pub:
            for i in range(40):
                pub.send(b"m", key=f"k{i}")
        sent_at = time.time()
        await_until(lambda: (read_stats(None, group) or {}).get("updated_at", 0) > sent_at,
                    30, what="stats after sending")
        first = read_stats(None, group)["updated_at"]
        await_until(lambda: read_stats(None, group)["updated_at"] > first, 30,
                    what="a second stats write (a dispatch round in between)")
        stats = read_stats(None, group)
        assert stats["waiting_for_workers"] == ["w1"]
        assert stats["dispatched"] == 0 and w2.try_recv() is None
        previous_leader.close()  # it let go: both workers get their keys now
        got = {"w1": 0, "w2": 0}

        def both_got_all():
            for name, w in (("w1", w1), ("w2", w2)):
                while w.try_recv() is not None:
                    got[name] += 1
            return sum(got.values()) == 40
        await_until(both_got_all, 30, what="all 40 messages at the workers")
        assert got["w1"] and got["w2"]
    finally:
        b.stop()
        previous_leader.close()
        w1.close()
        w2.close()


@pytest.mark.parametrize("max_deliveries", [3, 1])
def test_only_what_a_dead_worker_received_counts_as_delivered(group, ns, procs,
                                                              max_deliveries):
    """A worker holding 100 messages receives 1 and is killed: only that one was
    delivered; the other 99 go to the survivor as first deliveries (and, with
    max_deliveries=1, only the received one goes to the dead-letter ring)."""
    results, stop = SPAWN.Queue(), SPAWN.Event()
    victim = start(P.run_worker, ns, group, "victim", results, stop, 1)
    procs.append(victim)
    b = Balancer(group, ["in"], policy="round-robin", prefetch=1000, poll=0.005,
                 max_deliveries=max_deliveries)
    b.start()
    try:
        await_until(lambda: "victim" in b.members, 30, what="victim joined")
        with shmbus.Producer("in") as pub:
            for i in range(100):
                pub.send(str(i).encode())
        await_until(lambda: b.counters["dispatched"] == 100, 30, what="all at the victim")
        (first,) = [p for _, _, p, _ in drain(results, lambda g: len(g) >= 2)
                    if p != b"hanging"]
        assert first == b"0"
        kill9(victim)
        got = {}
        with Worker(group, "survivor") as survivor:
            def receive():
                while (m := survivor.try_recv()) is not None:
                    got[int(bytes(m))] = m.deliveries
                return len(got) >= 100 - (max_deliveries == 1)
            await_until(receive, 30, what="the victim's messages at the survivor")
            await_until(lambda: not b._gone, 30, what="the victim's ring drained")
            assert survivor.try_recv() is None
        if max_deliveries == 1:
            assert got == {i: 1 for i in range(1, 100)}
            with shmbus.Consumer("g.dlq", start="earliest") as dlq:
                msg = dlq.recv(timeout=5)
                assert (bytes(msg), msg.deliveries - 1) == (b"0", 1)
                assert dlq.try_recv() is None
            assert b.counters["dead_lettered"] == 1
        else:
            assert got == {0: 2, **{i: 1 for i in range(1, 100)}}
            assert b.counters["redelivered"] == 100
    finally:
        stop.set()
        b.stop()


def test_groups_with_related_names_work_side_by_side(ns):
    """A group name has no dot, so no group's rings pass for another's (with dots,
    group 'orders' took over worker 'w1' of group 'orders.w.eu', whose ring
    'orders.w.eu.w.w1' it read as its own worker 'eu.w.w1')."""
    from shmbus.cleanup import collect
    for bad in ("orders.w.eu", "a.b"):
        with pytest.raises(shmbus.InvalidName, match="without a dot"):
            Balancer(bad, ["in"])
        with pytest.raises(shmbus.InvalidName, match="without a dot"):
            Worker(bad, "w1")
    groups = {"orders": ["w1", "eu.w.w1"], "orders-w-eu": ["w1"]}
    for g in groups:
        shmbus.Producer(f"in.{g}", capacity=1 << 16).close()
    workers = {(g, w): Worker(g, w) for g, names in groups.items() for w in names}
    balancers = [Balancer(g, [f"in.{g}"], poll=0.005) for g in groups]
    try:
        for b in balancers:
            b.start()
        for b in balancers:
            await_until(lambda: len(b.members) == len(groups[b.group]), 30,
                        what=f"workers of {b.group} joined")
            assert sorted(b.members) == sorted(groups[b.group])
        for g in groups:
            with shmbus.Producer(f"in.{g}") as pub:
                for i in range(30):
                    pub.send(f"{g} {i}".encode())
        got = defaultdict(list)

        def delivered():
            for (g, w), worker in workers.items():
                while (m := worker.try_recv()) is not None:
                    got[g].append(bytes(m).decode())
            return sum(map(len, got.values())) == 60
        await_until(delivered, 30, what="every message at a worker of its group")
        for g in groups:
            assert sorted(got[g]) == sorted(f"{g} {i}" for i in range(30))
    finally:
        for b in balancers:
            b.stop()
        for w in workers.values():
            w.close()
        for g in groups:
            shmbus.unlink(f"in.{g}")
        collect(force=True)


def test_a_worker_publishes_what_it_has_received(ns):
    """Every way of receiving moves the worker's received position (what a balancer
    counts as delivered if the worker dies) to the end of what it returned."""
    import numpy as np

    from shmbus.balancer.membership import worker_ring
    from shmbus.balancer.worker import received_position
    try:
        with Worker("g", "w") as w, shmbus.Producer(worker_ring("g", "w")) as pub:
            start_ = w.position
            assert received_position(w) == start_
            pub.send_many([b"a", b"b", b"c"])
            pub.send_array(np.arange(4, dtype=np.int64))
            pub.send(b"d")
            m = w.recv(timeout=1)
            assert bytes(m) == b"a" and received_position(w) == w.position > start_
            batch = w.recv_many(2, timeout=1)
            assert [bytes(x) for x in batch] == [b"b", b"c"]
            assert received_position(w) == w.position
            arr = w.recv_array(np.int64, 10, timeout=1)
            assert arr.tolist() == [0, 1, 2, 3] and received_position(w) == w.position
            assert bytes(next(iter(w))) == b"d" and received_position(w) == w.position
            assert w.try_recv() is None
    finally:
        shmbus.unlink(worker_ring("g", "w"))
