"""The read-only Observer (and ``shmbus tail``, built on it) never holds back a producer,
says what it skipped, and never shows a torn or corrupt record."""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys

import pytest

import shmbus
from shmbus.observer import Observer

pytestmark = pytest.mark.timeout(60)

CAPACITY = 1 << 12


def payload(i: int) -> bytes:
    return i.to_bytes(8, "little") * 8  # 64 bytes that say which message they are


def test_a_stalled_observer_never_holds_back_a_block_producer(ns):
    with shmbus.Producer("r", capacity=CAPACITY) as pub:
        pub.send(payload(0))
        with Observer("r", start="earliest") as obs:
            first = obs.recv(timeout=1)
            assert (first.seq, bytes(first), first.skipped) == (0, payload(0), 0)
            n = 20 * CAPACITY // len(payload(0))  # many times the ring
            for i in range(1, n):  # the observer reads nothing meanwhile
                pub.send(payload(i), timeout=1)  # Timeout here: held back
            seen = []
            while (msg := obs.try_recv()) is not None:
                assert bytes(msg) == payload(msg.seq)  # never torn
                seen.append(msg)
            assert seen and seen[-1].seq == n - 1
            assert [m.seq for m in seen] == list(range(seen[0].seq, n))
            assert seen[0].skipped == seen[0].seq - 1 > 0 and obs.skipped == seen[0].skipped
            assert all(m.skipped == 0 for m in seen[1:])
    shmbus.unlink("r")


def test_a_stalled_consumer_does_hold_back_a_block_producer(ns):
    """The contrast that makes the test above meaningful."""
    with shmbus.Producer("r", capacity=CAPACITY) as pub, shmbus.Consumer("r"):
        with pytest.raises(shmbus.Timeout):
            for i in range(2 * CAPACITY // len(payload(0))):
                pub.send(payload(i), timeout=0.05)
    shmbus.unlink("r")


def test_observer_from_latest_sees_only_new_messages(ns):
    with shmbus.Producer("r", capacity=CAPACITY) as pub:
        pub.send(b"old")
        with Observer("r") as obs:
            assert obs.try_recv() is None
            pub.send(b"new", key=b"k")
            msg = obs.recv(timeout=1)
            assert (msg.seq, msg.key, bytes(msg)) == (1, b"k", b"new")
            with pytest.raises(shmbus.Timeout):
                obs.recv(timeout=0.01)
        with pytest.raises(shmbus.Closed):
            obs.try_recv()
        assert shmbus.inspect("r")["consumers"] == []  # it never took a slot
    shmbus.unlink("r")


def test_observer_raises_corrupt_ring_for_a_garbage_record(ns):
    with shmbus.Producer("r", capacity=CAPACITY) as pub:
        pub.send(b"fine")
        pub.send(b"to be damaged")
        with Observer("r", start="earliest") as obs:
            assert bytes(obs.recv(timeout=1)) == b"fine"
            second = len(b"fine") + 24 + 4  # 24-byte header, padded to 8: 32
            struct.pack_into("<I", pub._data, second, 0xFFFFFF00)  # its length field
            with pytest.raises(shmbus.CorruptRing):
                obs.recv(timeout=1)
    shmbus.unlink("r")


def test_observer_bad_arguments(ns):
    with pytest.raises(shmbus.RingNotFound):
        Observer("missing")
    with shmbus.Producer("r", capacity=CAPACITY):
        with pytest.raises(ValueError):
            Observer("r", start="middle")
        with Observer("r") as obs:
            for bad in (float("nan"), -1, float("inf")):
                with pytest.raises(ValueError):
                    obs.recv(timeout=bad)
    shmbus.unlink("r")


def _readline(stream, timeout: float) -> bytes:
    """One line from a child's stdout, or fail after ``timeout`` seconds."""
    fd, line = stream.fileno(), b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"no output within {timeout} s (got {line!r})"
        chunk = os.read(fd, 1)
        assert chunk, f"output ended (got {line!r})"
        line += chunk
    return line


@pytest.mark.timeout(90)
def test_a_tail_whose_output_is_never_read_does_not_hold_back_the_producer(ns):
    shmbus.Producer("r", capacity=CAPACITY).close()
    with shmbus.Producer("r") as pub:
        pub.send(b"first")
        env = {**os.environ, "SHMBUS_NAMESPACE": ns}
        tail = subprocess.Popen([sys.executable, "-m", "shmbus", "tail", "r", "--from",
                                 "earliest"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        try:
            assert _readline(tail.stdout, 60) == b"0\t-\tfirst\n"  # tail is reading
            big = b"x" * 1000  # the pipe (64 KiB) fills after ~65 of these
            for _ in range(200 * CAPACITY // len(big)):  # and nobody drains it
                pub.send(big, timeout=2)  # Timeout here: tail holds the producer back
        finally:
            tail.kill()
            tail.wait(30)
            tail.stdout.close()
    shmbus.unlink("r")


def test_an_observer_waiting_on_a_removed_ring_is_told_so(ns):
    with shmbus.Producer("r", capacity=CAPACITY):
        pass
    with Observer("r") as obs:
        shmbus.unlink("r")
        with pytest.raises(shmbus.RingNotFound):
            obs.recv(timeout=10)  # within about a second, not after the timeout
