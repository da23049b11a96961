"""Lifetimes: close from another thread, use after close, use after fork, and the
promises around them (issue 11 items 1, 3, 9, 12 and the producer's bad input)."""

from __future__ import annotations

import os
import pickle
import threading
import warnings

import numpy as np
import posix_ipc
import pytest

import shmbus
from shmbus import layout, naming, room
from shmbus.layout import S_SLEEP, slot_word

from .support import await_until

pytestmark = pytest.mark.timeout(30)


def _asleep(sub: shmbus.Consumer) -> bool:
    return bool(sub._words[slot_word(sub.slot) + S_SLEEP] & 1)


def _blocked_call(call) -> tuple[threading.Thread, list]:
    """Run ``call`` in a thread; the list gets its exception (or result)."""
    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


RECEIVES = {
    "recv": lambda sub: sub.recv(),
    "recv-timeout": lambda sub: sub.recv(timeout=20),
    "recv_many": lambda sub: sub.recv_many(8, timeout=20),
    "iteration": lambda sub: next(iter(sub)),
    "recv_array": lambda sub: sub.recv_array(np.uint8, 8, timeout=20),
}


@pytest.mark.parametrize("wait", ["adaptive", "spin"])
@pytest.mark.parametrize("how", sorted(RECEIVES))
def test_close_from_another_thread_wakes_a_blocked_receive(ns, how, wait):
    """It used to crash the interpreter (SIGSEGV in the semaphore wait)."""
    with shmbus.Producer("r", capacity=4096) as pub:
        sub = shmbus.Consumer("r", wait=wait)
        t, out = _blocked_call(lambda: RECEIVES[how](sub))
        if wait == "adaptive":
            await_until(lambda: _asleep(sub), what="the receiver asleep")
        else:
            await_until(lambda: t.is_alive() and not out, timeout=1)
        sub.close()
        t.join(10)
        assert not t.is_alive(), "the blocked receive did not wake"
        assert len(out) == 1 and isinstance(out[0], shmbus.Closed), out
        assert "closed" in str(out[0])
        pub.send(b"after")  # the producer is not disturbed
    with pytest.raises(shmbus.Closed):
        sub.recv(0)
    shmbus.unlink("r")


def test_close_wakes_a_send_blocked_on_a_full_ring(ns):
    pub = shmbus.Producer("r", capacity=4096)
    with shmbus.Consumer("r") as sub:
        with pytest.raises(shmbus.Timeout):
            while True:
                pub.send(b"x" * 100, timeout=0)
        t, out = _blocked_call(lambda: pub.send(b"y" * 100, timeout=20))
        await_until(lambda: pub._words[layout.H_PRODUCER_SLEEP] & 1,
                    what="the producer asleep")
        pub.close()
        t.join(10)
        assert not t.is_alive()
        assert isinstance(out[0], shmbus.Closed), out
        assert bytes(sub.recv(timeout=1)) == b"x" * 100  # what was sent stays
    with pytest.raises(shmbus.Closed):
        pub.send(b"z")
    shmbus.unlink("r")


def test_closing_the_semaphore_under_a_sleeper_never_crashes(ns):
    """Many rounds of the race: a thread falls asleep, another closes."""
    with shmbus.Producer("r", capacity=4096):
        for _ in range(30):
            sub = shmbus.Consumer("r")
            t, out = _blocked_call(lambda: sub.recv(timeout=20))
            await_until(lambda: _asleep(sub) or out, what="the receiver asleep")
            sub.close()
            t.join(10)
            assert isinstance(out[0], shmbus.Closed)
    shmbus.unlink("r")


def test_a_claim_open_while_closing_is_not_published(ns):
    pub = shmbus.Producer("r", capacity=4096)
    with shmbus.Consumer("r") as sub:
        with pytest.raises(shmbus.Closed):
            with pub.claim(8) as buf:
                buf[:] = b"12345678"
                pub.close()
        with pytest.raises(shmbus.Timeout):
            sub.recv(timeout=0)
        with pytest.raises(shmbus.Closed):
            pub.send(b"x")
    shmbus.unlink("r")


def _in_fork(fn) -> object:
    """Run ``fn`` in a forked child; return its result or the exception it raised."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            try:
                result: object = fn()
            except BaseException as e:  # noqa: BLE001
                result = e
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_a_forked_child_cannot_use_its_parents_producer_or_consumer(ns):
    with shmbus.Producer("r", capacity=4096) as pub, shmbus.Consumer("r") as sub:
        pub.send(b"parent-0")
        for fn in (lambda: pub.send(b"child"), lambda: pub.send_many([b"c"] * 20),
                   lambda: pub.claim(8), lambda: sub.recv(timeout=0),
                   lambda: sub.recv_many(4, timeout=0), lambda: next(iter(sub))):
            err = _in_fork(fn)
            assert isinstance(err, shmbus.Closed), err
            assert "fork" in str(err) and str(os.getpid()) in str(err), err
        # The child's exit (and its copies' finalizers) changed nothing of ours.
        pub.send(b"parent-1")
        assert [bytes(sub.recv(timeout=1)) for _ in range(2)] == [b"parent-0", b"parent-1"]
        with pytest.raises(shmbus.Timeout):
            sub.recv(timeout=0)
    shmbus.unlink("r")


def test_a_forked_child_can_open_its_own(ns):
    with shmbus.Producer("r", capacity=4096) as pub, shmbus.Consumer("r") as sub:
        def child() -> int:
            with shmbus.Consumer("r", start="earliest") as mine:
                return mine.recv(timeout=5).seq
        pub.send(b"m")
        assert _in_fork(child) == 0
        assert sub.recv(timeout=1).seq == 0
    shmbus.unlink("r")


def test_wait_strategy_without_sleep_never_sleeps(ns):
    """``WaitStrategy.sleep`` was accepted and ignored (now: a strategy that never
    sleeps is a ``Yielding``)."""
    never = shmbus.Yielding(spins=10)
    with shmbus.Producer("r", capacity=4096), shmbus.Consumer("r", wait=never) as sub:
        word = slot_word(sub.slot) + S_SLEEP
        before = sub._words[word]
        with pytest.raises(shmbus.Timeout):
            sub.recv(timeout=0.05)
        assert sub._words[word] == before  # the epoch never went odd: no sleep
    with shmbus.Producer("r"), shmbus.Consumer("r") as sleepy:
        before = sleepy._words[slot_word(sleepy.slot) + S_SLEEP]
        with pytest.raises(shmbus.Timeout):
            sleepy.recv(timeout=0.05)
        assert sleepy._words[slot_word(sleepy.slot) + S_SLEEP] > before
    shmbus.unlink("r")


def test_durable_consumer_lapped_while_away_counts_what_it_lost(ns):
    with shmbus.Producer("o", capacity=4096, on_full="overwrite") as pub:
        with shmbus.Consumer("o", durable="d") as sub:
            for i in range(3):
                pub.send(b"%d" % i)
            assert sub.recv(timeout=1).seq == 0
            assert sub.recv(timeout=1).seq == 1  # releases seq 0; seq 1 is held
        # Closing released seq 1 too: the cursor waits for seq 2.  Lap it many times.
        for i in range(3, 5000):
            pub.send(b"%d" % i)
        with shmbus.Consumer("o", durable="d") as again:
            first = again.recv(timeout=1).seq
            assert first > 2
            assert again.lost == first - 2
    with shmbus.Consumer("o", durable="d") as third:  # the count is kept with the cursor
        assert third.lost == first - 2
    shmbus.unlink("o")


def test_explicit_release_keeps_the_lost_count_exact(ns):
    with shmbus.Producer("o", capacity=4096, on_full="overwrite") as pub:
        with shmbus.Consumer("o", durable="d") as sub:
            for i in range(5):
                pub.send(b"%d" % i)
            batch = sub.recv_many(5, timeout=1)
            batch[1].release()  # seqs 0 and 1 released; 2-4 come again if not lapped
            sub.close(release=False)
        for i in range(5, 5000):
            pub.send(b"%d" % i)
        with shmbus.Consumer("o", durable="d") as again:
            first = again.recv(timeout=1).seq
            assert again.lost == first - 2
    shmbus.unlink("o")


def test_send_rejects_what_is_not_bytes(ns):
    with shmbus.Producer("r", capacity=4096) as pub, shmbus.Consumer("r") as sub:
        with pytest.raises(TypeError, match=r"bytes-like.*encode"):
            pub.send("text")
        with pytest.raises(TypeError, match="key must be"):
            pub.send(b"x", key=5)
        with pytest.raises(ValueError, match="2 messages and 1 keys"):
            pub.send_many([b"a", b"b"], keys=[b"k"])
        with pytest.raises(ValueError, match="1 messages and 2 keys"):
            pub.send_many(iter([b"a"]), keys=[b"k", b"l"])
        assert pub.seq == 0  # nothing was sent
        pub.send(b"ok", key=bytearray(b"k"))
        msg = sub.recv(timeout=1)
        assert (bytes(msg), msg.key) == (b"ok", b"k")
    shmbus.unlink("r")


def test_reopening_with_another_max_consumers_is_refused(ns):
    with shmbus.Producer("r", capacity=4096, max_consumers=4):
        pass
    with pytest.raises(shmbus.LayoutMismatch, match="4 consumer slots"):
        shmbus.Producer("r", max_consumers=8)
    with shmbus.Producer("r", max_consumers=4):
        pass
    with shmbus.Producer("r") as pub:  # not saying is fine
        assert pub._seg.slot_count == 4
    shmbus.unlink("r")


def test_a_producer_notices_its_ring_was_removed(ns, monkeypatch):
    monkeypatch.setattr(room, "LINK_CHECK_EVERY", 0.0)
    pub = shmbus.Producer("r", capacity=4096)
    try:
        posix_ipc.unlink_shared_memory(naming.segment_name(ns, "r"))  # an operator's rm
        with pytest.raises(shmbus.RingNotFound, match="removed"):
            for _ in range(200):  # 64-byte blocks: a check within a few sends
                pub.send(b"x" * 40)
    finally:
        pub.close()
        shmbus.unlink("r")


def test_timeout_names_the_consumer_furthest_behind(ns):
    """Both consumers hold the producer back; the one furthest behind is named first
    (it used to be the one in the lowest slot, with bytes counted from the position
    needed rather than from the producer's)."""
    with shmbus.Producer("r", capacity=4096) as pub:
        with shmbus.Consumer("r") as near, shmbus.Consumer("r") as far:
            for _ in range(31):
                pub.send(b"x" * 100)  # 128-byte records
            for _ in range(11):
                near.recv(timeout=1)  # releases 10
            with pytest.raises(shmbus.Timeout) as info:
                pub.send(b"y" * 1800, timeout=0)  # needs the first 1824 bytes freed
        msg = str(info.value)
        assert near.slot < far.slot  # so that naming the first slot found would fail
        first = msg.index("slot")
        assert msg[first:].startswith(f"slot {far.slot} "), msg
        assert f"{31 * 128} bytes behind" in msg, msg
        assert f"{21 * 128} bytes behind" in msg, msg
    shmbus.unlink("r")


def test_a_forked_child_holds_no_lease_and_says_so(ns):
    lease = shmbus.Lease("leader", ttl=30)
    lease.acquire(timeout=1)
    try:
        for fn, error in ((lease.check, shmbus.LeaseLost), (lease.renew, shmbus.LeaseLost),
                          (lease.release, shmbus.NotHeld)):
            err = _in_fork(fn)
            assert isinstance(err, error), err
            assert "fork" in str(err) and str(os.getpid()) in str(err), err
        lease.check()  # still ours in the parent
        assert lease.holder()["pid"] == os.getpid()
    finally:
        lease.release()
        lease.unlink()


def test_a_saved_send_is_refused_while_a_claim_is_open_and_in_a_fork(ns):
    """Claims, close and fork reach every reference to ``send`` (on both paths), not
    only the attribute: a saved one wrote over the claimed record, and a forked
    child's over the parent's messages."""
    with shmbus.Producer("r", capacity=4096) as pub, shmbus.Consumer("r") as sub:
        send = pub.send
        with pub.claim(4) as buf:
            buf[:] = b"mine"
            with pytest.raises(shmbus.ShmbusError, match="claim"):
                send(b"over")
        send(b"after")
        assert [bytes(sub.recv(timeout=1)) for _ in range(2)] == [b"mine", b"after"]
        err = _in_fork(lambda: send(b"child"))
        assert isinstance(err, shmbus.Closed) and "fork" in str(err), err
        send(b"parent")
        assert bytes(sub.recv(timeout=1)) == b"parent"
        with pytest.raises(shmbus.Timeout):
            sub.recv(timeout=0)
        pub.close()
        with pytest.raises(shmbus.Closed):
            send(b"closed")
    shmbus.unlink("r")
