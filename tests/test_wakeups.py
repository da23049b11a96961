"""The wake-up protocol between processes, with nothing else to wake the waiter.

Each waiter here uses a wait strategy whose sleeps last 30 s, and the periodic checks
that would otherwise end a sleep early (a consumer checks every second that its ring
still exists; a blocked producer looks for dead consumers every 50 ms) are stretched to
30 s too: only the other side's post can wake it before the 10 s deadline.  A side that
forgets to post leaves the waiter asleep until that deadline: the test fails (with
``Timeout``, or on the time it took).
"""

from __future__ import annotations

import time

import pytest

import shmbus
import shmbus.consumer
import shmbus.room

from . import procs as P
from .support import SPAWN, start

pytestmark = pytest.mark.timeout(60)

# Sleep at once, for up to 30 s at a time.
LONG_SLEEPS = shmbus.Sleeping(max_sleep=30.0, long_sleep=30.0)


@pytest.mark.parametrize("how", ["send", "send_many", "claim", "send_array"])
def test_a_send_from_another_process_wakes_a_sleeping_consumer(ns, procs, monkeypatch,
                                                               how):
    monkeypatch.setattr(shmbus.consumer, "_LINK_CHECK", 30.0)
    shmbus.Producer("wake", capacity=1 << 14).close()
    try:
        with shmbus.Consumer("wake", wait=LONG_SLEEPS) as sub:
            sent = SPAWN.Queue()
            procs.append(start(P.send_when_asleep, ns, "wake", sub.slot, b"wake up", how,
                               sent))
            msg = sub.recv(timeout=10)
            received = time.monotonic()
            assert bytes(msg) == b"wake up"
            latency = received - sent.get(timeout=10)
            assert latency < 5, f"woken {latency:.2f} s after the send: not by its post"
            procs[-1].join(10)
            assert procs[-1].exitcode == 0
    finally:
        shmbus.unlink("wake")


@pytest.mark.parametrize("how", ["recv", "recv_many", "release"])
def test_a_consumer_in_another_process_wakes_a_producer_blocked_on_a_full_ring(
        ns, procs, monkeypatch, how):
    monkeypatch.setattr(shmbus.room, "_RECLAIM_EVERY", 30.0)
    pub = shmbus.Producer("full", capacity=4096, wait=LONG_SLEEPS)
    try:
        go, attached, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
        procs.append(start(P.release_when_producer_sleeps, ns, "full", how, go, attached,
                           results))
        assert attached.wait(30)
        filled = 0
        with pytest.raises(shmbus.Timeout):
            while True:
                pub.send(b"f" * 100, timeout=0)
                filled += 1
        assert filled > 10
        go.set()  # from now on the consumer releases once this producer sleeps
        t0 = time.monotonic()
        pub.send(b"after the wait", timeout=10)
        waited = time.monotonic() - t0
        assert waited < 5, f"send returned after {waited:.2f} s: not woken by a post"
        assert results.get(timeout=10) == b"after the wait"
        procs[-1].join(10)
        assert procs[-1].exitcode == 0
    finally:
        pub.unlink()
