"""Property tests of record framing and wrap-around on small rings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import shmbus
from shmbus import layout

CAP = 4096
MAX_PAYLOAD = layout.max_record(CAP) - layout.RECORD_HEADER

message = st.tuples(
    st.one_of(st.integers(min_value=0, max_value=64),           # payload size
              st.integers(min_value=0, max_value=MAX_PAYLOAD - 16)),
    st.one_of(st.none(), st.binary(min_size=0, max_size=16)),  # key
)
batches = st.lists(st.lists(message, min_size=1, max_size=8), min_size=1, max_size=40)

settings.register_profile("ring", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])


def payload(seq: int, size: int) -> bytes:
    return bytes((seq * 7 + i) & 0xFF for i in range(size))


@settings(settings.get_profile("ring"))
@given(batches=batches, use_claim=st.booleans())
def test_any_sizes_keys_and_batches_round_trip(ns, batches, use_claim):
    """Whatever the sizes, keys and batch splits (so records land at every offset,
    exactly at the end, and need padding), every message arrives intact and in order."""
    for batch in batches:  # a batch must fit: this test's consumer runs only between
        assume(sum(layout.record_size(len(k or b""), n) for n, k in batch) <= CAP // 2)
    pub = shmbus.Producer("prop", capacity=CAP)
    try:
        with shmbus.Consumer("prop") as sub:
            seq = 0
            for batch in batches:
                msgs = [payload(seq + i, size) for i, (size, _) in enumerate(batch)]
                keys = [key for _, key in batch]
                if len(batch) == 1 and use_claim:
                    with pub.claim(len(msgs[0]), key=keys[0], timeout=5) as buf:
                        buf[:] = msgs[0]
                else:
                    pub.send_many(msgs, keys=keys, timeout=5)
                got = []
                while len(got) < len(batch):
                    got.extend(sub.recv_many(len(batch) - len(got), timeout=1))
                for m, data, key in zip(got, msgs, keys):
                    assert m.seq == seq
                    assert bytes(m) == data
                    assert m.key == (key if key else None)
                    seq += 1
                sub.release()  # room for the next batch
            assert sub.try_recv() is None
    finally:
        pub.unlink()


@settings(settings.get_profile("ring"))
@given(sizes=st.lists(st.integers(min_value=0, max_value=MAX_PAYLOAD), min_size=1,
                      max_size=60))
def test_overwrite_never_returns_torn_data(ns, sizes):
    """A consumer that falls behind in overwrite mode gets only intact messages, in
    order, and counts exactly the ones it missed."""
    pub = shmbus.Producer("ow", capacity=CAP, on_full="overwrite")
    try:
        with shmbus.Consumer("ow") as sub:
            for seq, size in enumerate(sizes):
                pub.send(payload(seq, size))
            got = []
            while (m := sub.try_recv()) is not None:
                assert bytes(m) == payload(m.seq, sizes[m.seq])
                got.append(m.seq)
            assert got == sorted(got)
            assert got[-1] == len(sizes) - 1
            assert sub.lost + len(got) == len(sizes)
    finally:
        pub.unlink()


@pytest.mark.parametrize("size", [MAX_PAYLOAD, MAX_PAYLOAD - 1, 0])
def test_exact_fit_at_end_and_largest_message(ns, size):
    pub = shmbus.Producer("fit", capacity=CAP)
    try:
        with shmbus.Consumer("fit") as sub:
            for seq in range(10):
                pub.send(payload(seq, size), timeout=1)
                m = sub.recv(timeout=1)
                assert (m.seq, bytes(m)) == (seq, payload(seq, size))
            with pytest.raises(shmbus.MessageTooLarge, match="largest payload"):
                pub.send(b"x" * (MAX_PAYLOAD + 8))
    finally:
        pub.unlink()
