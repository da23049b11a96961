"""Producer and consumer in one process: API behaviour of the ring."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

import shmbus


@pytest.fixture
def ring(ns):
    """A fresh 64 KiB block-mode ring named 'r'; removed after the test."""
    pub = shmbus.Producer("r", capacity=1 << 16)
    yield pub
    pub.unlink()


def test_send_recv_bytes_key_seq_timestamp(ring):
    with shmbus.Consumer("r") as sub:
        before = time.monotonic_ns()
        assert ring.send(b"hello", key="user-42") == 0
        assert ring.send(b"world") == 1
        m = sub.recv(timeout=1)
        assert (bytes(m), m.key, m.seq) == (b"hello", b"user-42", 0)
        assert before <= m.timestamp_ns <= time.monotonic_ns()
        assert isinstance(m.data, memoryview) and m.data.nbytes == 5
        m2 = sub.recv(timeout=1)
        assert (bytes(m2), m2.key, m2.seq) == (b"world", None, 1)
        assert m2.timestamp_ns >= m.timestamp_ns


def test_buffers_memoryview_and_numpy(ring):
    with shmbus.Consumer("r") as sub:
        arr = np.arange(10, dtype=np.float64)
        ring.send(arr)
        ring.send(memoryview(b"abcdef")[1:4])
        ring.send(np.arange(6, dtype=np.int32).reshape(2, 3))
        got = np.frombuffer(sub.recv(timeout=1).data, np.float64)
        assert np.array_equal(got, arr)
        assert bytes(sub.recv(timeout=1)) == b"bcd"
        assert np.array_equal(np.frombuffer(sub.recv(timeout=1).data, np.int32),
                              np.arange(6, dtype=np.int32))
        with pytest.raises(ValueError, match="contiguous"):
            ring.send(np.arange(10)[::2])


def test_zero_length_message(ring):
    with shmbus.Consumer("r") as sub:
        ring.send(b"")
        assert bytes(sub.recv(timeout=1)) == b""


def test_send_many_recv_many(ring):
    with shmbus.Consumer("r") as sub:
        seqs = ring.send_many([b"a", b"bb", b"ccc"], keys=["k1", None, b"k3"])
        assert list(seqs) == [0, 1, 2]
        batch = sub.recv_many(10, timeout=1)
        assert [bytes(m) for m in batch] == [b"a", b"bb", b"ccc"]
        assert [m.key for m in batch] == [b"k1", None, b"k3"]
        assert len({m.timestamp_ns for m in batch}) == 1  # one call, one time
        with pytest.raises(shmbus.Timeout):
            sub.recv_many(10, timeout=0.01)


def test_claim_zero_copy(ring):
    with shmbus.Consumer("r") as sub:
        with ring.claim(1000, key="frame") as buf:
            assert len(buf) == 1000
            np.frombuffer(buf, np.uint8)[:] = 7
        msg = sub.recv(timeout=1)
        assert msg.key == b"frame" and msg.seq == 0
        assert bytes(msg) == b"\x07" * 1000
        assert sub.try_recv() is None


def test_claim_abandoned_on_exception(ring):
    with shmbus.Consumer("r") as sub:
        with pytest.raises(RuntimeError):
            with ring.claim(100) as buf:
                buf[:3] = b"xyz"
                raise RuntimeError("fail while filling")
        ring.send(b"next")
        msg = sub.recv(timeout=1)
        assert (bytes(msg), msg.seq) == (b"next", 0)


def test_send_during_claim_is_an_error(ring):
    with ring.claim(10):
        with pytest.raises(shmbus.ShmbusError, match="claim"):
            ring.send(b"x")


def test_broadcast_each_consumer_gets_everything(ring):
    a, b = shmbus.Consumer("r"), shmbus.Consumer("r")
    try:
        for i in range(100):
            ring.send(str(i).encode())
        assert [bytes(a.recv(timeout=1)) for _ in range(100)] == \
            [str(i).encode() for i in range(100)]
        assert [bytes(m) for m in b.recv_many(1000, timeout=1)] == \
            [str(i).encode() for i in range(100)]
    finally:
        a.close()
        b.close()


def test_start_latest_and_earliest(ring):
    ring.send(b"old-1")
    ring.send(b"old-2")
    with shmbus.Consumer("r") as late, shmbus.Consumer("r", start="earliest") as early:
        ring.send(b"new")
        assert bytes(late.recv(timeout=1)) == b"new"
        assert [bytes(m) for m in early.recv_many(10, timeout=1)] == \
            [b"old-1", b"old-2", b"new"]


def test_iteration(ring):
    with shmbus.Consumer("r") as sub:
        ring.send_many([b"1", b"2", b"3"])
        got = []
        for msg in sub:
            got.append(bytes(msg))
            if len(got) == 3:
                break
        assert got == [b"1", b"2", b"3"]


def test_block_mode_times_out_and_keeps_data(ns):
    pub = shmbus.Producer("full", capacity=4096)
    try:
        with shmbus.Consumer("full") as sub:
            sent = 0
            with pytest.raises(shmbus.Timeout, match="full"):
                while True:
                    pub.send(b"x" * 100, timeout=0.05)
                    sent += 1
            assert sent > 10
            got = [sub.recv(timeout=1).seq for _ in range(sent)]
            assert got == list(range(sent))
            pub.send(b"after", timeout=1)  # room again
            assert bytes(sub.recv(timeout=1)) == b"after"
    finally:
        pub.unlink()


def test_overwrite_mode_counts_lost_and_never_blocks(ns):
    pub = shmbus.Producer("ow", capacity=4096, on_full="overwrite")
    try:
        with shmbus.Consumer("ow") as sub:
            for i in range(1000):
                pub.send(i.to_bytes(4, "little") * 25)
            seqs = []
            while (m := sub.try_recv()) is not None:
                assert bytes(m) == m.seq.to_bytes(4, "little") * 25
                seqs.append(m.seq)
            assert seqs == sorted(seqs) and seqs[-1] == 999
            assert sub.lost > 0 and sub.lost + len(seqs) == 1000  # every gap counted
            assert shmbus.inspect("ow")["consumers"][0]["lost"] == sub.lost
    finally:
        pub.unlink()


def test_durable_resumes_in_process(ns):
    pub = shmbus.Producer("d", capacity=1 << 14)
    try:
        with shmbus.Consumer("d", durable="billing") as sub:
            pub.send_many([b"1", b"2", b"3"])
            assert bytes(sub.recv(timeout=1)) == b"1"
            assert bytes(sub.recv(timeout=1)) == b"2"   # releases "1"
            sub.close(release=False)                    # "2" not acknowledged
        pub.send(b"4")
        with shmbus.Consumer("d", durable="billing") as again:
            got = [bytes(m) for m in again.recv_many(10, timeout=1)]
            assert got == [b"2", b"3", b"4"]
        with shmbus.Consumer("d", durable="billing") as third:
            assert third.try_recv() is None             # clean close released all
    finally:
        pub.unlink()


def test_durable_cursor_holds_back_the_producer(ns):
    pub = shmbus.Producer("dh", capacity=4096)
    try:
        shmbus.Consumer("dh", durable="slow").close()
        with pytest.raises(shmbus.Timeout, match="durable 'slow'"):
            for _ in range(200):
                pub.send(b"y" * 100, timeout=0.05)
        with shmbus.Consumer("dh", durable="slow") as sub:
            assert sub.recv(timeout=1).seq == 0
    finally:
        pub.unlink()


def test_durable_name_busy(ring):
    with shmbus.Consumer("r", durable="one"):
        with pytest.raises(shmbus.DurableBusy) as info:
            shmbus.Consumer("r", durable="one")
        assert "pid" in str(info.value)


def test_second_producer_is_busy(ring):
    with pytest.raises(shmbus.RingBusy) as info:
        shmbus.Producer("r")
    assert info.value.pid is not None and str(info.value.pid) in str(info.value)


def test_producer_continues_sequence_after_close(ring, ns):
    ring.send_many([b"a", b"b"])
    ring.close()
    with shmbus.Producer("r") as again:
        assert again.send(b"c") == 2


def test_timeout_is_a_timeouterror(ring):
    with shmbus.Consumer("r") as sub:
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0.01)


def test_errors_pickle():
    err = shmbus.RingBusy("busy", name="r", pid=42)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, shmbus.RingBusy) and again.pid == 42 and str(again) == "busy"


def test_list_rings_and_inspect(ring):
    with shmbus.Consumer("r", durable="audit") as sub:
        ring.send_many([b"x"] * 5)
        sub.recv(timeout=1)
        rings = shmbus.list_rings()
        assert [r["name"] for r in rings] == ["r"]
        assert rings[0]["messages"] == 5 and rings[0]["consumers"] == 1
        info = shmbus.inspect("r")
        assert info["producer"]["alive"] == "alive"
        (c,) = info["consumers"]
        assert c["durable"] == "audit" and c["lag_bytes"] > 0


def test_closed_handles(ring):
    sub = shmbus.Consumer("r")
    sub.close()
    sub.close()  # idempotent
    for call in (sub.recv, sub.try_recv, lambda: sub.recv_many(4), lambda: list(sub),
                 lambda: sub.recv_array("u1", 4)):
        with pytest.raises(shmbus.Closed, match="closed"):
            call()
    ring.close()
    ring.close()
    for call in (lambda: ring.send(b"x"), lambda: ring.send_many([b"x"]),
                 lambda: ring.claim(8), lambda: ring.send_array(np.zeros(4, "u1"))):
        with pytest.raises(shmbus.Closed, match="closed"):
            call()
