"""send_array / recv_array: fixed-size messages in bulk as numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest

import shmbus

POINT = np.dtype([("t", "<f8"), ("x", "<f4"), ("y", "<f4"), ("id", "<u4")])  # 20 bytes


def points(first: int, n: int) -> np.ndarray:
    a = np.zeros(n, POINT)
    a["id"] = np.arange(first, first + n)
    a["t"] = a["id"] * 0.5
    return a


@pytest.fixture
def ring(ns):
    pub = shmbus.Producer("r", capacity=1 << 13)  # 8 KiB: batches wrap around often
    yield pub
    pub.unlink()


def test_arrays_round_trip_across_many_wraps(ring):
    with shmbus.Consumer("r") as sub:
        got, sent = [], 0
        for round_ in range(60):
            seqs = ring.send_array(points(sent, 37 + round_ % 5))
            assert seqs == range(sent, sent + 37 + round_ % 5)
            sent += len(seqs)
            while len(got) < sent:
                view = sub.recv_array(POINT, 50, timeout=1)
                assert not view.flags.writeable  # a view into the ring
                got.extend(view["id"].tolist())
        assert got == list(range(sent))


def test_messages_of_the_size_interoperate_with_send_and_recv(ring):
    with shmbus.Consumer("r") as sub:
        ring.send_many([points(i, 1).tobytes() for i in range(3)])
        ring.send_array(points(3, 2))
        assert sub.recv_array(POINT, 10, timeout=1)["id"].tolist() == [0, 1, 2, 3, 4]
        ring.send_array(points(5, 1))
        m = sub.recv(timeout=1)
        assert (m.seq, m.key) == (5, None)
        assert np.frombuffer(m.data, POINT)["id"][0] == 5


def test_a_message_of_another_size_or_with_a_key_stops_the_batch(ring):
    with shmbus.Consumer("r") as sub:
        ring.send_array(points(0, 2))
        ring.send(b"not a point")
        ring.send(points(3, 1).tobytes(), key="k")
        assert sub.recv_array(POINT, 10, timeout=1)["id"].tolist() == [0, 1]
        with pytest.raises(ValueError, match="has 11 bytes, not the 20 .* recv()"):
            sub.recv_array(POINT, 10, timeout=1)
        assert bytes(sub.recv(timeout=1)) == b"not a point"  # still there for recv
        with pytest.raises(ValueError, match="key"):
            sub.recv_array(POINT, 10, timeout=1)
        assert sub.recv(timeout=1).key == b"k"


def test_waits_and_times_out_like_recv(ring):
    with shmbus.Consumer("r") as sub:
        with pytest.raises(shmbus.Timeout):
            sub.recv_array(POINT, 10, timeout=0.01)
        # A consumer that does not read blocks the producer: Timeout names it.
        with pytest.raises(shmbus.Timeout, match="full"):
            ring.send_array(points(0, 1000), timeout=0.05)
        assert sub.recv_array(POINT, 1000, timeout=1)["id"][0] == 0  # sent before it


def test_bad_arrays_are_refused(ring):
    with pytest.raises(shmbus.MessageTooLarge, match="largest payload is 4072 bytes"):
        ring.send_array(np.zeros(2, dtype=(np.uint8, 8192)))
    with pytest.raises(ValueError, match="0-d"):
        ring.send_array(np.float64(1.0))
    with pytest.raises(ValueError, match="Python objects"):
        ring.send_array(np.array([object()]))
    with shmbus.Consumer("r") as sub:
        with pytest.raises(ValueError, match="fixed-size"):
            sub.recv_array(object, 1, timeout=0)
        with pytest.raises(ValueError, match="max_messages"):
            sub.recv_array(POINT, 0, timeout=0)
    assert ring.seq == 0


def test_overwrite_rings_hand_out_checked_copies(ns):
    with shmbus.Producer("o", capacity=1 << 13, on_full="overwrite") as pub, \
            shmbus.Consumer("o") as sub:
        pub.send_array(points(0, 3))
        one = sub.recv_array(POINT, 10, timeout=1)
        assert one["id"].tolist() == [0]   # one message per call, copied and checked
        pub.send_array(points(3, 2000))     # laps the reader many times
        rest = sub.recv_array(POINT, 10, timeout=1)
        assert sub.lost > 0 and rest["id"][0] > 2
    shmbus.unlink("o")


def test_a_late_consumer_finds_a_record_boundary_after_array_batches(ring):
    with shmbus.Consumer("r") as sub:
        for i in range(20):
            ring.send_array(points(i * 50, 50))
            got = 0
            while got < 50:  # a batch may stop at the end of the data area
                got += len(sub.recv_array(POINT, 50, timeout=1))
        sub.release()
    with shmbus.Consumer("r", start="earliest") as late:
        m = late.recv(timeout=1)
        assert np.frombuffer(m.data, POINT)["id"][0] == m.seq  # an intact record
