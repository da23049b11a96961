"""Per-key order under consistent hashing when workers join, die and leaders change.

The balancer here is driven one round at a time by the test (no thread): every
dispatching decision happens when the test says, so each scenario is the same on every
run.  The rule checked: no message of a key overtakes an older, unacknowledged message
of that key, whoever dies when.
"""

from __future__ import annotations

import queue
from collections import defaultdict

import pytest

import shmbus
from shmbus.balancer import Balancer, Worker

from . import procs as P
from .support import SPAWN, await_until, kill9, start

pytestmark = pytest.mark.timeout(60)

KEYS = [b"k%d" % i for i in range(16)]


class Stepper:
    """A leading balancer whose rounds (notice members, then move what can move) run
    when the test calls :meth:`round`."""

    def __init__(self, group: str) -> None:
        self.b = Balancer(group, ["in"], policy="consistent-hash", prefetch=1000)
        self.b.lease.acquire(timeout=10)
        self.b._begin()

    def round(self) -> None:
        self.b._refresh_members()
        while self.b._pump():
            pass

    def until(self, pred, what: str) -> None:
        await_until(lambda: self.round() or pred(), 30, what=what)

    def close(self) -> None:
        self.b._close()


@pytest.fixture
def group(ns):
    shmbus.Producer("in", capacity=1 << 20).close()
    yield "g"
    from shmbus.cleanup import collect
    shmbus.unlink("in")
    collect(force=True)


def send(pub: shmbus.Producer, numbers: range) -> None:
    for i in numbers:
        pub.send(b"%d" % i, key=KEYS[i % len(KEYS)])


def take(worker: Worker) -> list[tuple[bytes, int, int]]:
    """(key, number, deliveries) of everything the worker can receive now."""
    out = []
    while (m := worker.try_recv()) is not None:
        out.append((m.key, int(bytes(m)), m.deliveries))
    return out


def wait_hanging(results) -> None:
    """Until the child worker says it holds its first message unreleased."""
    while results.get(timeout=30)[2] != b"hanging":
        pass


def assert_in_order_per_key(stream: list) -> None:
    seen, per_key = set(), defaultdict(list)
    for key, i, _ in stream:
        if i not in seen:  # first deliveries only: a redelivered duplicate is allowed
            seen.add(i)
            per_key[key].append(i)
    for key, numbers in per_key.items():
        assert numbers == sorted(numbers), f"key {key!r} out of order: {numbers}"


@pytest.mark.parametrize("failover", [False, True], ids=["same-leader", "new-leader"])
def test_keys_moved_to_a_joining_worker_wait_for_the_old_owner(group, ns, procs, failover):
    """Worker a holds 64 messages (it received one); n joins and takes some keys; 64
    more arrive.  None of n's keys may reach n while a holds older messages of them
    (also when a new leader finds the rings so); a then dies: n gets a's leftovers of
    those keys before the newer ones."""
    results, stop = SPAWN.Queue(), SPAWN.Event()
    a = start(P.run_worker, ns, group, "a", results, stop, 1)  # receives 1, then hangs
    procs.append(a)
    s = Stepper(group)
    n = None
    try:
        s.until(lambda: "a" in s.b.members, "a joined")
        with shmbus.Producer("in") as pub:
            send(pub, range(64))
            s.round()
            assert s.b.counters["dispatched"] == 64
            wait_hanging(results)
            n = Worker(group, "n")
            if failover:  # the leader goes; a new one finds a holding what it holds
                s.close()
                s = Stepper(group)
            s.until(lambda: "n" in s.b.members, "n joined")
            moved = {k for k in KEYS if s.b.policy.owner(k) == "n"}
            assert moved and moved != set(KEYS)
            send(pub, range(64, 128))
            s.round()
        early = take(n)
        assert not [m for m in early if m[0] in moved], "overtook what a holds"
        kill9(a)
        stream = list(early)
        s.until(lambda: not s.b._gone and "a" not in s.b.members, "a's leftovers moved")

        def all_at_n():
            s.round()
            stream.extend(take(n))
            return {i for _, i, _ in stream} == set(range(128))
        await_until(all_at_n, 30, what="every message at n")
        assert_in_order_per_key(stream)
        assert [d for _, i, d in stream if i == 0] == [2]  # a received it: redelivered
    finally:
        stop.set()
        s.close()
        if n is not None:
            n.close()


def test_a_handoff_ends_when_the_old_owner_acknowledges(group, ns):
    """Keys moved to a joining worker flow to it once the old owner has released
    what it held of them; until then they wait, the others flow."""
    a = Worker(group, "a")
    s = Stepper(group)
    n = None
    try:
        s.until(lambda: "a" in s.b.members, "a joined")
        with shmbus.Producer("in") as pub:
            send(pub, range(64))
            s.round()
            n = Worker(group, "n")
            s.until(lambda: "n" in s.b.members, "n joined")
            moved = {k for k in KEYS if s.b.policy.owner(k) == "n"}
            send(pub, range(64, 128))
            s.round()
        assert take(n) == []  # the first of batch two with a moved key waits
        assert s.b.stats()["keys_in_handoff"] == len(moved)
        at_a = take(a)
        assert [i for _, i, _ in at_a] == list(range(len(at_a))) and len(at_a) >= 64
        a.release()
        at_n = []

        def everything_moved():
            s.round()
            at_a.extend(take(a))
            a.release()
            at_n.extend(take(n))
            return len(at_a) + len(at_n) == 128
        await_until(everything_moved, 30, what="every message at a worker")
        assert {k for k, _, _ in at_n} == moved
        assert s.b.stats()["keys_in_handoff"] == 0
        assert all(i >= 64 for _, i, _ in at_n)
        assert all(k not in moved for k, i, _ in at_a if i >= 64)
        assert_in_order_per_key(at_a)
        assert_in_order_per_key(at_n)
    finally:
        s.close()
        a.close()
        if n is not None:
            n.close()


def test_leftovers_of_two_gone_workers_keep_the_keys_order(group, ns, procs):
    """a dies holding 31 messages; 8 of them go to b (its prefetch), which receives
    one and dies too, while the rest still wait in a's ring.  The survivor c gets b's
    part (the older one) before the rest of a's."""
    results, stop = SPAWN.Queue(), SPAWN.Event()
    a = start(P.run_worker, ns, group, "a", results, stop, 1)
    procs.append(a)
    s = Stepper(group)
    c = None
    try:
        s.until(lambda: "a" in s.b.members, "a joined")
        with shmbus.Producer("in") as pub:
            send(pub, range(32))  # every key twice
            s.round()
        assert s.b.counters["dispatched"] == 32
        wait_hanging(results)
        s.b.prefetch = 8  # from now on a worker holds 8 messages at most
        b = start(P.run_worker, ns, group, "b", results, stop, 1)
        procs.append(b)
        s.until(lambda: "b" in s.b.members, "b joined")
        kill9(a)  # its leftovers go to b, 8 of them
        s.until(lambda: s.b.counters["redelivered"] == 8, "a's leftovers moving to b")
        wait_hanging(results)  # b received the first of them
        kill9(b)
        c = Worker(group, "c")
        stream = []

        def all_at_c():
            s.round()
            stream.extend(take(c))
            return {i for _, i, _ in stream} == set(range(32))
        await_until(all_at_c, 30, what="every message at c")
        assert_in_order_per_key(stream)
    finally:
        stop.set()
        s.close()
        if c is not None:
            c.close()


def test_a_worker_back_under_its_name_finds_its_leftovers_whole(group, ns, procs):
    """x dies holding 8 messages; y, the only other worker, has room for 4 of them (it
    holds 4 of its own).  None of x's leftovers move until all of them fit, so a worker
    x that comes back meanwhile finds them all in its ring, and y holds none (else x
    would process the later messages of a key while y still held the earlier ones)."""
    results, stop = SPAWN.Queue(), SPAWN.Event()
    x = start(P.run_worker, ns, group, "x", results, stop, 1)
    procs.append(x)
    y = Worker(group, "y")
    s = Stepper(group)
    s.b.prefetch = 8
    x_again = None
    try:
        s.until(lambda: {"x", "y"} <= set(s.b.members), "x and y joined")
        x_keys = [k for k in KEYS if s.b.policy.owner(k) == "x"][:2]
        y_keys = [k for k in KEYS if s.b.policy.owner(k) == "y"][:2]
        with shmbus.Producer("in") as pub:
            for i in range(12):
                pub.send(b"%d" % i, key=(x_keys if i < 8 else y_keys)[i % 2])
        s.round()
        assert s.b.counters["dispatched"] == 12
        wait_hanging(results)
        kill9(x)
        s.until(lambda: "x" not in s.b.members, "x gone")
        s.round()
        assert s.b.members["y"].in_flight() == 4  # x's leftovers wait for room
        x_again = Worker(group, "x")
        s.until(lambda: "x" in s.b.members, "x back")
        assert [i for _, i, _ in take(x_again)] == list(range(8))
        assert [i for _, i, _ in take(y)] == list(range(8, 12))
    finally:
        stop.set()
        s.close()
        y.close()
        if x_again is not None:
            x_again.close()
