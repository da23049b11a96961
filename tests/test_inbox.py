"""Fan-in: many Outboxes (in many processes) into one Inbox."""

from __future__ import annotations

import os
import threading
import time

import pytest

import shmbus
from shmbus import fanin, inbox as inbox_module
from shmbus.cleanup import collect
from shmbus.tools.benchkit.harness import cpu_ns

from . import procs as P
from . import support
from .support import SPAWN, kill9, start

pytestmark = pytest.mark.timeout(60)

QUANTUM = inbox_module.QUANTUM


def entries(ns: str) -> list[str]:
    return sorted(e for e in support.shm_entries() if support.namespace_of(e) == ns)


# -- child processes ------------------------------------------------------------------


def send_numbered(ns, name, ident, count, out, sender=None, size=48):
    """Send ``count`` checkable payloads; report (ident, sender id), then "done"."""
    with shmbus.Outbox(name, namespace=ns, sender=sender) as box:
        for i in range(count):
            box.send(P.make_payload(ident, i, size), timeout=30)
            if i == 0:
                out.put(("sender", ident, box.sender))
    out.put(("done", ident, None))


def send_forever(ns, name, ident, out):
    with shmbus.Outbox(name, namespace=ns) as box:
        i = 0
        while True:
            box.send(P.make_payload(ident, i), timeout=30)
            if i == 0:
                out.put(("sender", ident, box.sender))
            i += 1


def receive_then_hang(ns, name, count, out):
    """Open the Inbox, receive ``count`` messages (reporting each before the next
    receive releases it), then wait to be killed holding the last one."""
    with shmbus.Inbox(name, capacity=1 << 16, namespace=ns) as inbox:
        inbox.fileno()  # its wake-up FIFOs exist when it dies: the next Inbox copes
        out.put(("ready", None))
        for _ in range(count):
            msg = inbox.recv(timeout=30)
            out.put(("got", P.check_payload(bytes(msg))))
        out.put(("done", None))
        threading.Event().wait(60)


def inbox_waits(ns, name, out):
    with shmbus.Inbox(name, capacity=1 << 16, namespace=ns) as inbox:
        out.put(("waiting", os.getpid()))
        msg = inbox.recv(timeout=30)
        out.put(("got", bytes(msg)))


def inbox_and_outbox_then_hang(ns, name, read, out):
    """Inbox and Outbox in one process: send 3, receive ``read`` of them, hang."""
    inbox = shmbus.Inbox(name, capacity=1 << 16, namespace=ns)
    box = shmbus.Outbox(name, namespace=ns)
    for i in range(3):
        box.send(b"m%d" % i)
    for _ in range(read):
        inbox.recv(timeout=10)
    inbox.release()
    out.put("ready")
    threading.Event().wait(60)


# -- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["recv", "recv_many"])
def test_many_senders_arrive_in_order_per_sender_with_their_id(ns, procs, how):
    n, count = 4, 3000
    with shmbus.Inbox("results", capacity=1 << 16, namespace=ns) as inbox:
        out = SPAWN.Queue()
        for ident in range(n):
            procs.append(start(send_numbered, ns, "results", ident, count, out, None,
                               24 + 40 * ident))
        seqs: dict[int, list[int]] = {i: [] for i in range(n)}
        whose: dict[int, set[str]] = {i: set() for i in range(n)}
        total = 0
        while total < n * count:
            batch = [inbox.recv(timeout=30)] if how == "recv" else \
                inbox.recv_many(500, timeout=30)
            for msg in batch:
                ident, seq = P.check_payload(bytes(msg))
                seqs[ident].append(seq)
                whose[ident].add(msg.sender)
            total += len(batch)
        reported = {}
        while len(reported) < n:
            kind, ident, sender = out.get(timeout=30)
            if kind == "sender":
                reported[ident] = sender
        for ident in range(n):
            assert seqs[ident] == list(range(count)), ident
            assert whose[ident] == {reported[ident]}
        assert len(set(reported.values())) == n
        assert reported[0] == f"{procs[0].pid}.{support_start_time(procs[0].pid)}"
        for p in procs:
            p.join(30)
        assert inbox.try_recv() is None


def support_start_time(pid: int) -> int:
    from shmbus import liveness
    return liveness.start_time_of(pid) or 0


def _prefill(ns, procs, name, n, count):
    out = SPAWN.Queue()
    for ident in range(n):
        procs.append(start(send_numbered, ns, name, ident, count, out))
    done = 0
    while done < n:
        if out.get(timeout=30)[0] == "done":
            done += 1
    for p in procs:
        p.join(30)


def test_recv_is_fair_round_robin_over_senders(ns, procs):
    """Three senders with messages waiting (more than two quanta each): recv takes at
    most QUANTUM from one before the next has its turn, so no prefix favours one by
    more than that."""
    n, count = 3, 2 * QUANTUM + 50
    with shmbus.Inbox("fair", namespace=ns) as inbox:
        _prefill(ns, procs, "fair", n, count)
        order = [P.check_payload(bytes(inbox.recv(timeout=10)))[0] for _ in range(n * count)]
    counts = [0] * n
    runs = 1
    for i, ident in enumerate(order):
        counts[ident] += 1
        assert max(counts) - min(counts) <= QUANTUM, (i, counts)
        if i and order[i - 1] != ident:
            runs += 1
    assert counts == [count] * n
    assert runs >= n * count // QUANTUM  # it did take turns, not one sender at a time


def test_recv_many_batches_start_at_the_next_sender(ns, procs):
    n, count, size = 3, 300, 50
    with shmbus.Inbox("fairmany", namespace=ns) as inbox:
        _prefill(ns, procs, "fairmany", n, count)
        counts = [0] * n
        firsts = []
        while sum(counts) < n * count:
            batch = inbox.recv_many(size, timeout=10)
            idents = [P.check_payload(bytes(m))[0] for m in batch]
            firsts.append(idents[0])
            for ident in idents:
                counts[ident] += 1
            assert max(counts) - min(counts) <= size, counts
    assert set(firsts[:n]) == set(range(n))


@pytest.mark.timeout(90)
def test_a_sender_killed_mid_stream_loses_nothing_and_its_ring_goes(ns, procs):
    with shmbus.Inbox("crash", capacity=1 << 16, namespace=ns) as inbox:
        out = SPAWN.Queue()
        child = start(send_forever, ns, "crash", 7, out)
        procs.append(child)
        _, _, sender = out.get(timeout=30)
        ring = fanin.sender_ring("crash", sender)
        got = []
        while len(got) < 2000:  # mid-stream: it is sending, its ring fills and drains
            for msg in inbox.recv_many(256, timeout=30):
                got.append(P.check_payload(bytes(msg))[1])
        kill9(child)
        sent = shmbus.inspect(ring, namespace=ns)["messages"]  # all it ever published

        def drained_and_removed():
            try:
                for msg in inbox.recv_many(256, timeout=0.05):
                    got.append(P.check_payload(bytes(msg))[1])
            except shmbus.Timeout:
                pass
            return sender not in inbox.senders

        support.await_until(drained_and_removed, timeout=30, what="ring removed")
        assert got == list(range(sent))  # every message once, in order
        assert not os.path.exists(f"/dev/shm/{ns}.{ring}")
        assert not [e for e in entries(ns) if ring in e]


@pytest.mark.timeout(90)
def test_an_inbox_that_crashes_is_resumed_by_the_next_without_loss(ns, procs):
    out = SPAWN.Queue()
    child = start(receive_then_hang, ns, "resume", 100, out)
    procs.append(child)
    assert out.get(timeout=30)[0] == "ready"
    total = 500
    with shmbus.Outbox("resume", namespace=ns) as box:
        for i in range(total):
            box.send(P.make_payload(1, i), timeout=30)
    first = []
    while True:
        kind, value = out.get(timeout=30)
        if kind == "done":
            break
        first.append(value[1])
    kill9(child)  # holding the 100th message, unreleased
    assert first == list(range(100))
    with shmbus.Inbox("resume", namespace=ns) as inbox:
        rest = []
        while len(rest) < total - 99:
            rest += [P.check_payload(bytes(m))[1] for m in inbox.recv_many(128, timeout=10)]
        assert inbox.try_recv() is None
    # The message it held is delivered again (as for a durable consumer); nothing else.
    assert rest == list(range(99, total))


def test_outbox_first_send_waits_for_the_inbox(ns, procs):
    out = SPAWN.Queue()
    with shmbus.Outbox("later", namespace=ns) as box:
        with pytest.raises(shmbus.Timeout, match="no Inbox 'later'"):
            box.send(b"x", timeout=0.05)
        assert box.sender is None
    assert entries(ns) == []
    procs.append(start(send_numbered, ns, "later", 3, 10, out))
    with shmbus.Inbox("later", namespace=ns) as inbox:
        seqs = [P.check_payload(bytes(inbox.recv(timeout=30)))[1] for _ in range(10)]
        procs[-1].join(30)  # its Outbox closed: the Inbox removes the drained ring
    assert seqs == list(range(10))


def test_timeouts_try_recv_and_iteration(ns):
    with shmbus.Inbox("t", capacity=1 << 16, namespace=ns) as inbox:
        t0 = time.monotonic()
        with pytest.raises(shmbus.Timeout, match="no message in inbox 't' within 0.05"):
            inbox.recv(timeout=0.05)
        assert 0.04 <= time.monotonic() - t0 < 2
        with pytest.raises(shmbus.Timeout):
            inbox.recv_many(10, timeout=0)
        assert inbox.try_recv() is None
        with pytest.raises(ValueError):
            inbox.recv_many(0)
        with shmbus.Outbox("t", namespace=ns) as a, shmbus.Outbox("t", namespace=ns) as b:
            assert a.sender is None  # known from the first send
            a.send(b"1", key="k")
            b.send(b"2")
            assert b.sender == a.sender + ".1"
            got = []
            for msg in inbox:
                got.append((bytes(msg), msg.key, msg.sender))
                if len(got) == 2:
                    break
            assert sorted(got) == [(b"1", b"k", a.sender), (b"2", None, b.sender)]
            assert inbox.pending == 0 and len(inbox) == 0
            a.send_many([b"3", b"4"])
            with b.claim(3) as buf:
                buf[:] = b"567"
            assert inbox.pending == 3
            assert sorted(bytes(m) for m in inbox.recv_many(10, timeout=1)) == \
                [b"3", b"4", b"567"]


def test_objects_through_an_inbox(ns):
    np = pytest.importorskip("numpy")
    with shmbus.Inbox("objs", capacity=1 << 20, namespace=ns) as inbox, \
            shmbus.Outbox("objs", namespace=ns) as box:
        box.send_obj({"a": 1, "frame": np.arange(10_000)})
        got = inbox.recv_obj(timeout=5)
        assert got["a"] == 1 and int(got["frame"].sum()) == 49995000


def test_recv_blocked_in_a_thread_wakes_on_close_and_on_a_send(ns):
    with shmbus.Inbox("w", capacity=1 << 16, namespace=ns) as inbox:
        results: list = []

        def receive():
            try:
                results.append(bytes(inbox.recv(timeout=20)))
                inbox.recv(timeout=20)
            except shmbus.ShmbusError as e:
                results.append(e)

        t = threading.Thread(target=receive)
        t.start()
        with shmbus.Outbox("w", namespace=ns) as box:
            box.send(b"hello")
            support.await_until(lambda: results, timeout=10, what="a message")
        inbox.close()  # from this thread: the one blocked in recv wakes
        t.join(10)
        assert not t.is_alive()
        assert results[0] == b"hello" and isinstance(results[1], shmbus.Closed)
        with pytest.raises(shmbus.Closed):
            inbox.recv(timeout=0)
        inbox.close()  # twice is fine


def test_an_idle_inbox_sleeps_and_wakes_on_a_send(ns, procs):
    out = SPAWN.Queue()
    child = start(inbox_waits, ns, "idle", out)
    procs.append(child)
    assert out.get(timeout=30)[0] == "waiting"
    with shmbus.Outbox("idle", namespace=ns) as box:
        box.send(b"wake", timeout=10)  # registers its ring: the Inbox finds it
        assert out.get(timeout=10) == ("got", b"wake")
    child.join(10)

    # Now with the Inbox asleep on a sender it knows: measure what waiting costs.
    child = start(inbox_waits, ns, "idle2", out)
    procs.append(child)
    assert out.get(timeout=30)[0] == "waiting"
    with shmbus.Outbox("idle2", namespace=ns) as box:
        c0, t0 = cpu_ns(child.pid), time.monotonic()
        time.sleep(0.5)  # the measurement window, not a synchronisation
        c1, t1 = cpu_ns(child.pid), time.monotonic()
        box.send(b"late", timeout=10)
        assert out.get(timeout=10) == ("got", b"late")
    share = (c1 - c0) / 1e9 / (t1 - t0)
    assert share < 0.05, f"an idle Inbox used {share:.1%} of a core"
    child.join(10)
    collect(ns)  # each Inbox may have closed before our Outbox: its ring stayed
    assert entries(ns) == []


def test_one_inbox_per_name(ns):
    with shmbus.Inbox("one", namespace=ns):
        with pytest.raises(shmbus.RingBusy, match="already open"):
            shmbus.Inbox("one", namespace=ns)
    with pytest.raises(shmbus.InvalidName):
        shmbus.Inbox("x" * 65, namespace=ns)
    with pytest.raises(shmbus.InvalidName):
        shmbus.Outbox("one", namespace=ns, sender="bad/name")


def test_a_sender_id_open_twice_in_a_process_is_refused(ns):
    with shmbus.Inbox("ids", capacity=1 << 16, namespace=ns) as inbox:
        with shmbus.Outbox("ids", namespace=ns, sender="w1") as a:
            a.send(b"x")
            b = shmbus.Outbox("ids", namespace=ns, sender="w1")
            with pytest.raises(shmbus.RingBusy, match="already open in this process"):
                b.send(b"y")
            b.close()
        with shmbus.Outbox("ids", namespace=ns, sender="w1") as again:
            again.send(b"z")  # the same sender again: its ring, its order
        assert [bytes(m) for m in inbox.recv_many(10, timeout=1)] == [b"x", b"z"]


def test_a_ring_of_another_user_is_never_read(ns):
    ring = fanin.sender_ring("sec", "evil")
    shmbus.Producer(ring, capacity=4096, namespace=ns).close()
    path = f"/dev/shm/{ns}.{ring}"
    if os.geteuid() == 0:
        os.chown(path, 12345, 12345)
    else:
        os.chmod(path, 0o644)
    try:
        with shmbus.Inbox("sec", namespace=ns) as inbox:
            assert inbox.senders == []
            assert ring in inbox.refused and "uid" in inbox.refused[ring] or \
                "permissions" in inbox.refused[ring]
            assert inbox.try_recv() is None
    finally:
        if os.geteuid() == 0:
            os.chown(path, 0, 0)
        shmbus.unlink(ring, namespace=ns)
    assert any(e.endswith("sec@inbox") for e in entries(ns))  # a ring was there
    collect(ns)


def test_gc_removes_what_a_killed_inbox_and_outbox_leave(ns, procs):
    out = SPAWN.Queue()
    child = start(inbox_and_outbox_then_hang, ns, "gc", 3, out)
    procs.append(child)
    assert out.get(timeout=30) == "ready"
    kill9(child)
    assert any(e.endswith("gc@inbox") for e in entries(ns))
    done = collect(ns)
    assert {"kind": "inbox", "name": "gc",
            "reason": "no live Inbox and no sender ring left"} in done
    assert entries(ns) == []


def test_gc_keeps_unread_messages_of_a_dead_sender_until_forced(ns, procs):
    out = SPAWN.Queue()
    child = start(inbox_and_outbox_then_hang, ns, "gc2", 1, out)
    procs.append(child)
    assert out.get(timeout=30) == "ready"
    kill9(child)
    kept: list = []
    collect(ns, kept=kept)
    assert any("unread" in k["reason"] for k in kept)
    assert any(e.endswith("gc2@inbox") for e in entries(ns))
    with shmbus.Inbox("gc2", namespace=ns) as inbox:  # the next Inbox gets them
        assert [bytes(m) for m in inbox.recv_many(10, timeout=5)] == [b"m1", b"m2"]
    collect(ns)
    assert entries(ns) == []


def test_inbox_close_removes_the_registry_when_no_sender_is_left(ns):
    with shmbus.Inbox("clean", capacity=1 << 16, namespace=ns) as inbox:
        with shmbus.Outbox("clean", namespace=ns) as box:
            box.send(b"x")
        assert bytes(inbox.recv(timeout=5)) == b"x"
        support.await_until(lambda: inbox.try_recv() is None and not inbox.senders
                            or inbox._maintain(), timeout=10, what="sender gone")
    assert entries(ns) == []


def poll_then_receive(ns, name, out):
    """A Poller with an Inbox and a Consumer: report what each poll finds."""
    with shmbus.Inbox(name, capacity=1 << 16, namespace=ns) as inbox, \
            shmbus.Consumer("side", namespace=ns) as side:
        poller = shmbus.Poller()
        poller.register(inbox)
        poller.register(side)
        out.put("polling")
        got: list = []
        polls = 0
        while not got and polls < 3:  # a new sender may wake it before its message
            polls += 1
            for item in poller.poll(timeout=30):
                msg = item.try_recv()
                if msg is not None:
                    got.append((item is inbox, bytes(msg)))
        out.put(got)


def test_a_poller_waits_on_an_inbox_like_on_a_consumer(ns, procs):
    shmbus.Producer("side", capacity=1 << 12).close()
    out = SPAWN.Queue()
    procs.append(start(poll_then_receive, ns, "polled", out))
    assert out.get(timeout=30) == "polling"
    with shmbus.Outbox("polled", namespace=ns) as box:
        box.send(b"joined")  # a new sender wakes it (the doorbell), then its message
        assert out.get(timeout=30) == [(True, b"joined")]
    procs[0].join(30)
    shmbus.unlink("side")
    collect(ns)
    assert entries(ns) == []


def test_shmbus_rm_removes_an_inbox_and_its_rings(ns):
    from click.testing import CliRunner

    from shmbus.tools.cli import main
    inbox = shmbus.Inbox("gone", capacity=1 << 16, namespace=ns)
    with shmbus.Outbox("gone", namespace=ns) as box:
        box.send(b"never read")
    refused = CliRunner().invoke(main, ["rm", "gone", "--namespace", ns])
    assert refused.exit_code == 1 and "is open" in refused.output
    inbox.close()
    assert any(e.endswith("gone@inbox") for e in entries(ns))  # a ring with unread data
    done = CliRunner().invoke(main, ["rm", "gone", "--namespace", ns])
    assert done.exit_code == 0, done.output
    assert "removed inbox 'gone' and its 1 sender ring(s)" in done.output
    assert entries(ns) == []
    missing = CliRunner().invoke(main, ["rm", "gone", "--namespace", ns])
    assert missing.exit_code == 1 and "does not exist" in missing.output


@pytest.mark.timeout(120)
def test_the_fan_in_benchmark_runs_and_reports(tmp_path, capsys):
    import json

    from bench import fan_in_throughput
    out = tmp_path / "fan_in.json"
    fan_in_throughput.main(["--messages", "4000", "--repeats", "1", "--senders", "2",
                            "--only", "shmbus", "--idle-seconds", "0.2", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| shmbus | 2->1 |" in text and "idle Inbox (shmbus)" in text
    data = json.loads(out.read_text())
    assert set(data["ratios"]) == {"shmbus", "shmbus batch=256"}
    assert all(r > 0 for r in data["ratios"].values())
    assert data["idle_cpu_percent"]["shmbus"] < 5
