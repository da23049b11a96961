"""shmbus.Poller: waiting on many consumers at once, asleep while nothing arrives."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

import shmbus
import shmbus.poller
from shmbus.layout import S_SLEEP, slot_word

from .support import SPAWN, await_until, start

pytestmark = pytest.mark.timeout(60)


def _rings(n: int) -> list[shmbus.Producer]:
    return [shmbus.Producer(f"r{i}", capacity=1 << 14) for i in range(n)]


def _unlink(n: int) -> None:
    for i in range(n):
        shmbus.unlink(f"r{i}")


def test_poll_returns_the_consumers_with_messages_in_registration_order(ns):
    pubs = _rings(3)
    subs = [shmbus.Consumer(f"r{i}") for i in range(3)]
    try:
        poller = shmbus.Poller()
        for sub in reversed(subs):
            poller.register(sub)
        poller.register(subs[0])  # twice: harmless
        assert len(poller) == 3 and subs[1] in poller
        assert poller.poll(timeout=0) == []
        pubs[2].send(b"two")
        pubs[0].send(b"zero")
        assert poller.poll(timeout=5) == [subs[2], subs[0]]
        assert bytes(subs[0].recv(timeout=0)) == b"zero"
        assert poller.poll(timeout=5) == [subs[2]]
        assert bytes(subs[2].recv(timeout=0)) == b"two"
        t0 = time.monotonic()
        assert poller.poll(timeout=0.05) == []
        assert time.monotonic() - t0 >= 0.05
        poller.unregister(subs[2])
        pubs[2].send(b"again")
        assert poller.poll(timeout=0.01) == []
        with pytest.raises(KeyError):
            poller.unregister(subs[2])
        for sub in subs:  # disarmed after every poll: no sleep epoch left odd
            assert not sub._words[slot_word(sub.slot) + S_SLEEP] & 1
    finally:
        for sub in subs:
            sub.close()
        for pub in pubs:
            pub.close()
        _unlink(3)


def _send_when_polled(ns: str, ring: str, slot: int, data: bytes) -> None:
    """As ``ring``'s producer: once the consumer of ``slot`` is armed, send."""
    from shmbus.segment import Segment
    seg = Segment.open(ns, ring)
    try:
        words, epoch = seg.words, slot_word(slot) + S_SLEEP
        with shmbus.Producer(ring, namespace=ns) as pub:
            await_until(lambda: words[epoch] & 1, 10, what="consumer armed")
            pub.send(data)
        del words
    finally:
        seg.close()


def test_a_send_in_another_process_wakes_the_poller(ns, procs, monkeypatch):
    # Sleeps of 30 s: only the producer's write to the FIFO can end the poll early.
    monkeypatch.setattr(shmbus.poller, "MAX_SLEEP", 30.0)
    monkeypatch.setattr(shmbus.poller, "LONG_SLEEP", 30.0)
    for pub in _rings(3):
        pub.close()
    subs = [shmbus.Consumer(f"r{i}") for i in range(3)]
    try:
        poller = shmbus.Poller()
        for sub in subs:
            poller.register(sub)
        procs.append(start(_send_when_polled, ns, "r1", subs[1].slot, b"hello"))
        t0 = time.monotonic()
        assert poller.poll(timeout=20) == [subs[1]]
        assert time.monotonic() - t0 < 10
        assert bytes(subs[1].recv(timeout=0)) == b"hello"
        procs[-1].join(10)
        assert procs[-1].exitcode == 0
    finally:
        for sub in subs:
            sub.close()
        _unlink(3)


def test_an_idle_poller_sleeps(ns):
    pubs = _rings(3)
    subs = [shmbus.Consumer(f"r{i}") for i in range(3)]
    try:
        poller = shmbus.Poller()
        for sub in subs:
            poller.register(sub)
        cpu0, t0 = time.thread_time(), time.monotonic()
        assert poller.poll(timeout=1.0) == []
        cpu, wall = time.thread_time() - cpu0, time.monotonic() - t0
        assert wall >= 1.0
        assert cpu < 0.05 * wall, f"an idle poll used {cpu / wall:.1%} of a core"
    finally:
        for sub in subs:
            sub.close()
        for pub in pubs:
            pub.close()
        _unlink(3)


def test_closing_a_registered_consumer_from_another_thread_wakes_the_poll(ns,
                                                                         monkeypatch):
    monkeypatch.setattr(shmbus.poller, "MAX_SLEEP", 30.0)
    monkeypatch.setattr(shmbus.poller, "LONG_SLEEP", 30.0)
    pub = shmbus.Producer("r0", capacity=4096)
    sub = shmbus.Consumer("r0")
    try:
        poller = shmbus.Poller()
        poller.register(sub)
        word = slot_word(sub.slot) + S_SLEEP
        words = sub._words
        closer = threading.Thread(target=lambda: (
            await_until(lambda: words[word] & 1, 10, what="armed"), sub.close()))
        closer.start()
        t0 = time.monotonic()
        assert poller.poll(timeout=20) == [sub]
        assert time.monotonic() - t0 < 10
        closer.join(10)
        with pytest.raises(shmbus.Closed):
            sub.recv(timeout=0)
        with pytest.raises(shmbus.Closed):
            shmbus.Poller().register(sub)
        del words
    finally:
        sub.close()
        pub.close()
        shmbus.unlink("r0")


class PipeWaitable:
    """Anything with fileno/arm/disarm/ready can be polled: here, a pipe."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.armed = 0

    def fileno(self) -> int:
        return self.r

    def arm(self) -> bool:
        if self.ready():
            return True
        self.armed += 1
        return False

    def disarm(self) -> None:
        self.armed -= 1

    def ready(self) -> bool:
        return bool(select.select([self.r], [], [], 0)[0])


def test_the_poller_waits_on_any_waitable_with_consumers(ns, monkeypatch):
    monkeypatch.setattr(shmbus.poller, "MAX_SLEEP", 30.0)
    monkeypatch.setattr(shmbus.poller, "LONG_SLEEP", 30.0)
    pub = shmbus.Producer("r0", capacity=4096)
    sub = shmbus.Consumer("r0")
    other = PipeWaitable()
    try:
        poller = shmbus.Poller()
        poller.register(sub)
        poller.register(other)
        threading.Timer(0.0, os.write, (other.w, b"x")).start()
        assert poller.poll(timeout=20) == [other]
        assert other.armed == 0  # disarmed again
        with pytest.raises(TypeError, match="fileno"):
            poller.register(object())
        with pytest.raises(ValueError, match="forever"):
            shmbus.Poller().poll()
    finally:
        os.close(other.r)
        os.close(other.w)
        sub.close()
        pub.close()
        shmbus.unlink("r0")
