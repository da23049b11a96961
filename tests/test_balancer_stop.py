"""``Balancer.stop()`` from another thread ends ``run()`` promptly, in every state."""

from __future__ import annotations

import threading
import time

import pytest

import shmbus
from shmbus.balancer import Balancer, Worker
from shmbus.cleanup import collect

from .support import await_until

pytestmark = pytest.mark.timeout(60)

PROMPT = 0.5  # seconds: much less than the poll interval and lease waits below


@pytest.fixture
def inputs(ns):
    shmbus.Producer("in", capacity=1 << 16).close()
    yield
    shmbus.unlink("in")
    collect(force=True)  # worker ring with unacknowledged messages, lease file


def run_in_thread(b: Balancer) -> threading.Thread:
    """``b.run()`` in a thread of our own (not ``b.start()``)."""
    t = threading.Thread(target=b.run, daemon=True)
    t.start()
    return t


def stop_promptly(b: Balancer, t: threading.Thread) -> None:
    began = time.monotonic()
    b.stop(timeout=10)
    took = time.monotonic() - began
    assert not t.is_alive(), "stop() returned while run() was still running"
    assert took < PROMPT, f"stop() took {took:.2f} s"
    assert not b.leading.is_set()


def test_stop_an_idle_leader(inputs):
    """It sleeps on its input, for up to its poll interval."""
    b = Balancer("g", ["in"], poll=5.0)
    with Worker("g", "w"):
        t = run_in_thread(b)
        await_until(lambda: "w" in b.members, 30, what="w joined")
        stop_promptly(b, t)


def test_stop_a_leader_whose_workers_are_full(inputs):
    """Input waits (back-pressure) while the balancer polls for room."""
    b = Balancer("g", ["in"], poll=5.0, prefetch=4)
    with Worker("g", "w") as w:
        t = run_in_thread(b)
        with shmbus.Producer("in") as pub:
            for i in range(50):
                pub.send(b"m")
        await_until(lambda: b.counters["dispatched"] == 4, 30, what="w full")
        stop_promptly(b, t)
        assert w.recv(timeout=1) is not None  # what it was given is still there


def test_stop_a_standby(inputs):
    leader = Balancer("g", ["in"], poll=0.01)
    leader.start()
    standby = Balancer("g", ["in"], poll=5.0)
    waiting = threading.Event()
    acquire = standby.lease.acquire

    def acquire_and_say_so(*args, **kwargs):
        waiting.set()
        return acquire(*args, **kwargs)
    standby.lease.acquire = acquire_and_say_so
    try:
        assert leader.leading.wait(10)
        t = run_in_thread(standby)
        assert waiting.wait(10)  # it waits for the lease now
        stop_promptly(standby, t)
        assert leader.leading.is_set()
    finally:
        leader.stop()


def test_stop_before_run_and_from_inside_run(inputs):
    b = Balancer("g", ["in"], poll=5.0)
    b.stop()  # not running: returns at once, and a later run() returns at once
    t = run_in_thread(b)
    t.join(PROMPT)
    assert not t.is_alive()
