"""send_many / recv_many of many messages of one size take a numpy path: the same
messages, seqs, keys and positions as one by one, across wraps and mixed batches."""

from __future__ import annotations

import numpy as np
import pytest

import shmbus
from shmbus.arrays import BULK


@pytest.fixture
def ring(ns):
    pub = shmbus.Producer("r", capacity=1 << 14)  # 16 KiB: batches wrap often
    yield pub
    pub.unlink()


def test_uniform_batches_round_trip_across_wraps(ring):
    with shmbus.Consumer("r") as sub:
        sent, got = [], []
        for round_ in range(50):
            batch = [bytes([len(sent) + i & 255]) * 40 for i in range(BULK + round_ % 9)]
            seqs = ring.send_many(batch)
            assert seqs == range(len(sent), len(sent) + len(batch))
            sent += batch
            while len(got) < len(sent):  # batches end at the end of the data area
                got += [(m.seq, bytes(m)) for m in sub.recv_many(100, timeout=1)]
        assert got == list(enumerate(sent))


def test_keys_sizes_and_buffers_mixed_in_one_batch(ring):
    N = 2 * BULK  # enough to take the numpy path after each batch's first message
    with shmbus.Consumer("r") as sub:
        ring.send_many([b"a" * 8] * N, keys=[b"k%02d" % i for i in range(N)])
        ring.send_many([b"b" * 8] * (N + 3))
        ring.send_many([b"c" * 8] * 5 + [b"dd" * 8] * N)          # size changes
        ring.send_many([np.arange(2, dtype=np.float64)] * N)         # 16-byte arrays
        ring.send_many([memoryview(b"e" * 8)] + [b"f" * 8] * N)      # not all bytes
        varied = [b"k%d" % (i * 7) for i in range(N)]  # 2-4 byte keys: records of one size
        ring.send_many([b"g" * 64] * N, keys=varied)
        ring.send_many([np.full(8, i, np.float64) for i in range(N)], keys=varied)
        expect = ([(f"k{i:02d}".encode(), b"a" * 8) for i in range(N)]
                  + [(None, b"b" * 8)] * (N + 3) + [(None, b"c" * 8)] * 5
                  + [(None, b"dd" * 8)] * N
                  + [(None, np.arange(2, dtype=np.float64).tobytes())] * N
                  + [(None, b"e" * 8)] + [(None, b"f" * 8)] * N
                  + [(k, b"g" * 64) for k in varied]
                  + [(k, np.full(8, i, np.float64).tobytes()) for i, k in enumerate(varied)])
        got = []
        while len(got) < len(expect):
            for m in sub.recv_many(1000, timeout=1):
                got.append((m.key, bytes(m)))
                assert m.seq == len(got) - 1 and m.deliveries == 1
        assert got == expect


def test_one_timestamp_per_send_many_and_views_into_the_ring(ring):
    with shmbus.Consumer("r") as sub:
        ring.send_many([b"x" * 24] * 64)
        batch = sub.recv_many(64, timeout=1)
        assert len(batch) == 64 and len({m.timestamp_ns for m in batch}) == 1
        assert all(isinstance(m.data, memoryview) for m in batch)
        assert ring.unreleased(sub.slot) == 64
        batch[9].release()  # releasing a bulk-read message releases up to it
        assert ring.unreleased(sub.slot) == 54


def test_redelivered_messages_keep_their_count_in_bulk_batches(ns):
    from shmbus.forward import forward, take_run
    from shmbus.layout import REC_REDELIVERY_SHIFT
    with shmbus.Producer("in", capacity=1 << 14) as src, \
            shmbus.Producer("out", capacity=1 << 14) as dst, \
            shmbus.Consumer("in") as sub, shmbus.Consumer("out") as out:
        src.send_many([b"r" * 16] * 40)
        run = take_run(sub, 40)
        forward(dst, run, range(20), flags=1 << REC_REDELIVERY_SHIFT)
        forward(dst, run, range(20, 40))
        got = out.recv_many(100, timeout=1)
        assert [m.deliveries for m in got] == [2] * 20 + [1] * 20
    shmbus.unlink("in")
    shmbus.unlink("out")


def test_send_many_shows_only_its_public_parameters():
    """Flags and per-message timestamps are the balancer's business
    (``Producer._send_many``), not part of the public signature (issue 14 §6)."""
    import inspect
    sig = inspect.signature(shmbus.Producer.send_many)
    assert list(sig.parameters) == ["self", "messages", "keys", "timeout"]
    assert sig.parameters["keys"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["timeout"].kind is inspect.Parameter.KEYWORD_ONLY
    assert set(shmbus.Producer.send_many.__annotations__) == {
        "messages", "keys", "timeout", "return"}


def test_send_many_refuses_the_private_parameters(ring):
    with pytest.raises(TypeError):
        ring.send_many([b"x"], _flags=1)
    with pytest.raises(TypeError):
        ring.send_many([b"x"], _stamps=[1])
    assert ring.seq == 0
