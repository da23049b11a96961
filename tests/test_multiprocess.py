"""Producers and consumers in separate (spawned) processes, including kill -9."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import posix_ipc
import pytest

import shmbus

from . import procs as P
from . import support
from .support import SPAWN, ChildFailed, kill9, start

pytestmark = pytest.mark.timeout(120)


def test_unrelated_processes_exchange_messages(ns):
    """Two independent interpreters (not parent and child of each other)."""
    consumer = textwrap.dedent(f"""
        import shmbus, numpy as np, sys
        with shmbus.Consumer("pipe", namespace={ns!r}) as sub:
            print("ready", flush=True)
            a = sub.recv(timeout=30)
            first = bytes(a)  # the next receive releases it
            b = sub.recv_many(10, timeout=30)
            arr = np.frombuffer(b[0].data, np.int64)
            print(first, a.key, [m.seq for m in b], int(arr.sum()), flush=True)
    """)
    producer = textwrap.dedent(f"""
        import shmbus, numpy as np
        with shmbus.Producer("pipe", namespace={ns!r}) as pub:
            pub.send(b"hello", key="k")
            pub.send_many([np.arange(100, dtype=np.int64), memoryview(b"xyz")])
    """)
    shmbus.Producer("pipe", capacity=1 << 16).close()
    try:
        cons = subprocess.Popen([sys.executable, "-c", consumer], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            if cons.stdout.readline().strip() != "ready":  # it failed: say how
                pytest.fail(f"consumer failed:\n{cons.communicate(timeout=60)[1]}")
            prod = subprocess.run([sys.executable, "-c", producer], capture_output=True,
                                  text=True, timeout=60)
            assert prod.returncode == 0, f"producer failed:\n{prod.stderr}"
            out, err = cons.communicate(timeout=60)
        finally:
            if cons.poll() is None:
                cons.kill()
                cons.communicate()
        assert cons.returncode == 0, f"consumer failed:\n{err}"
        assert out.strip() == "b'hello' b'k' [1, 2] 4950"
    finally:
        shmbus.unlink("pipe")


def test_broadcast_across_processes(ns, procs):
    shmbus.Producer("bc", capacity=1 << 16).close()
    try:
        results, count = SPAWN.Queue(), 5000
        readies = [SPAWN.Event(), SPAWN.Event()]
        for ready in readies:
            procs.append(start(P.consume, ns, "bc", count, results, ready))
        for ready in readies:
            assert ready.wait(30)
        started = SPAWN.Event()
        procs.append(start(P.produce, ns, "bc", 1 << 16, count, started))
        for _ in readies:
            assert results.get(timeout=60) == list(range(count))
    finally:
        shmbus.unlink("bc")


def test_kill9_producer_then_new_producer_continues(ns, procs):
    """Everything the dead producer published arrives intact, and the next producer
    continues the sequence with no gap and no repeat."""
    shmbus.Producer("kp", capacity=1 << 14).close()
    try:
        with shmbus.Consumer("kp") as sub:
            started = SPAWN.Event()
            victim = start(P.produce, ns, "kp", 1 << 14, -1, started)
            procs.append(victim)
            assert started.wait(30)
            seqs = []
            while len(seqs) < 3000:
                for m in sub.recv_many(100, timeout=30):
                    assert P.check_payload(bytes(m))[1] == m.seq
                    seqs.append(m.seq)
            kill9(victim)
            while (m := sub.try_recv()) is not None:  # drain what it published
                assert P.check_payload(bytes(m))[1] == m.seq
                seqs.append(m.seq)
            assert seqs == list(range(len(seqs)))
            with shmbus.Producer("kp") as pub:
                nxt = pub.send(P.make_payload(2, len(seqs)))
            assert nxt == len(seqs)
            m = sub.recv(timeout=5)
            assert (m.seq, P.check_payload(bytes(m))) == (nxt, (2, nxt))
    finally:
        shmbus.unlink("kp")


def test_kill9_anonymous_consumer_does_not_block_producer(ns, procs):
    pub = shmbus.Producer("ka", capacity=4096)
    try:
        attached = SPAWN.Event()
        victim = start(P.attach_and_hang, ns, "ka", attached)
        procs.append(victim)
        assert attached.wait(30)
        assert len(shmbus.inspect("ka")["consumers"]) == 1
        kill9(victim)
        for i in range(200):  # 20 KB through a 4 KB ring: needs the dead slot reclaimed
            pub.send(b"z" * 100, timeout=10)
        assert shmbus.inspect("ka")["consumers"] == []
    finally:
        pub.unlink()


def test_kill9_durable_consumer_resumes_without_loss(ns, procs):
    pub = shmbus.Producer("kd", capacity=1 << 16)
    try:
        shmbus.Consumer("kd", durable="billing", start="earliest").close()
        for seq in range(100):
            pub.send(P.make_payload(1, seq))
        results, holding = SPAWN.Queue(), SPAWN.Event()
        victim = start(P.consume_and_hang, ns, "kd", "billing", 40, results, holding)
        procs.append(victim)
        assert results.get(timeout=30) == list(range(41))
        assert holding.wait(30)
        kill9(victim)
        with shmbus.Consumer("kd", durable="billing") as again:
            seqs = []
            while (m := again.try_recv()) is not None:
                assert P.check_payload(bytes(m))[1] == m.seq
                seqs.append(m.seq)
        # 40 was received but never released, so it comes again; 0..39 do not.
        assert seqs == list(range(40, 100))
    finally:
        pub.unlink()


def test_idle_consumer_sleeps_and_wakes(ns, procs):
    pub = shmbus.Producer("idle", capacity=1 << 14)
    try:
        ready, results = SPAWN.Event(), SPAWN.Queue()
        procs.append(start(P.idle_consumer, ns, "idle", ready, results))
        assert ready.wait(30)
        time.sleep(1.0)  # the idle period being measured, not a synchronisation
        pub.send(b"wake up")
        cpu, waited, data = results.get(timeout=30)
        assert data == b"wake up"
        assert waited >= 1.0
        assert cpu / waited < 0.05, f"idle consumer used {cpu:.3f} s CPU in {waited:.2f} s"
    finally:
        pub.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")
def test_permission_denied_is_a_clear_error(ns, procs):
    pub = shmbus.Producer("priv", capacity=4096)
    try:
        results = SPAWN.Queue()
        procs.append(start(P.open_as_nobody, ns, "priv", results))
        kind, is_ours, is_permission, message = results.get(timeout=30)
        assert is_ours and is_permission, (kind, message)
        assert "refusing" in message or "ermission" in message, message
    finally:
        pub.unlink()


def test_overwrite_reader_never_sees_torn_data_under_a_racing_producer(ns, procs):
    """A producer in another process laps a slow reader on a small overwrite ring
    over and over: every message the reader gets is intact, in order, and every one
    it missed is counted in ``lost``."""
    shmbus.Producer("race", capacity=4096, on_full="overwrite").close()
    try:
        with shmbus.Consumer("race") as sub:
            started = SPAWN.Event()
            count = 60_000
            procs.append(start(P.produce, ns, "race", 4096, count, started, 1,
                               "overwrite", True))
            assert started.wait(30)
            seqs = []
            while not seqs or seqs[-1] < count - 1:
                m = sub.recv(timeout=30)
                assert P.check_payload(bytes(m)) == (1, m.seq)
                assert not seqs or m.seq > seqs[-1]
                seqs.append(m.seq)
            assert sub.lost > 0, "the producer never lapped the reader: test too easy"
            assert len(seqs) + sub.lost == count  # joined before seq 0 was sent
    finally:
        shmbus.unlink("race")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("waiting_on", ["queue", "event", "join"])
def test_a_failing_child_fails_the_test_at_once_with_its_traceback(procs, waiting_on):
    """Whatever the test waits on, the child's exception interrupts it (not a
    ``queue.Empty`` after the wait's whole timeout)."""
    results, event = SPAWN.Queue(), SPAWN.Event()
    t0 = time.monotonic()
    with pytest.raises(ChildFailed) as failed:
        procs.append(start(P.fail_with, "the child's own words"))
        if waiting_on == "queue":
            results.get(timeout=20)
        elif waiting_on == "event":
            event.wait(20)
        else:
            procs[-1].join(20)
    assert time.monotonic() - t0 < 15
    report = str(failed.value)
    assert "ValueError: the child's own words" in report
    assert "in fail_with" in report  # the child's traceback, not only its message
    assert failed.value.pid == procs[-1].pid


def test_a_report_that_could_not_interrupt_is_raised_when_the_child_is_reaped(procs):
    support.child_reports_interrupt(False)  # as between tests, or in another thread
    try:
        procs.append(proc := start(P.fail_with, "reported late"))
        proc.join(20)
        assert proc.exitcode == 1
    finally:
        support.child_reports_interrupt(True)
    procs.remove(proc)
    with pytest.raises(ChildFailed, match="ValueError: reported late"):
        support.cleanup_processes([proc])


def test_a_child_that_succeeds_reports_nothing(procs):
    procs.append(start(P.make_payload, 1, 2))
    procs[-1].join(20)
    assert procs[-1].exitcode == 0
    support.raise_child_failure()


def test_leftovers_in_dev_shm_are_found_and_another_runs_are_left_alone():
    """What the autouse check of conftest.py relies on: a new semaphore of a namespace
    named after this process, or after a process that has ended, is a leftover; one
    named after a live process not ours (pid 1), or with no pid in its name (it may be
    another run's), is not."""
    before = support.shm_entries()
    tag = uuid.uuid4().hex[:6]
    dead = SPAWN.Process(target=P.make_payload, args=(1, 2))
    dead.start()
    dead.join(30)
    names = {"mine": f"own{os.getpid()}x{tag}", "dead": f"demo{dead.pid}",
             "live": f"bench1x{tag}", "nopid": f"fbench{tag}z"}
    dead.close()
    entries = {k: f"sem.{ns}.r@c0" for k, ns in names.items()}
    for e in entries.values():
        posix_ipc.Semaphore("/" + e[4:], posix_ipc.O_CREAT, 0o600, 0).close()
    try:
        assert support.shm_leftovers(before) == sorted([entries["mine"], entries["dead"]])
        assert support.shm_leftovers(before, skip={names["mine"]}) == [entries["dead"]]
    finally:
        support.remove_entries(entries.values())
    assert support.shm_leftovers(before) == []
