"""Padding at the end of the data area, seen by every reader.

When a record does not fit before the end of the data area, the producer pads the
rest: with a padding record when at least a header's bytes (24) are left, with bare
bytes when 8 or 16 are.  A reader that gets this wrong by one header sees a bogus empty
message (zeros, or stale bytes, read as a record) or skips a real one.  These tests
leave exactly 0, 8, 16, 24 and 32 bytes before the end, on the first lap (fresh zeros
behind) and the second (stale records behind), then send messages that must wrap, and
check that recv, recv_many (both of its paths), recv_array and forwarding see exactly
the messages sent, and that every position is where the record descriptor puts it.
"""

from __future__ import annotations

import numpy as np
import pytest

import shmbus
from shmbus import layout, ring
from shmbus.forward import forward, take_run

CAP = 4096
PAYLOAD = 16                                  # the usual message: a 40-byte record
STRIDE = layout.record_size(0, PAYLOAD)
ROW = np.dtype((np.uint8, PAYLOAD))
READERS = ["recv", "recv_many", "recv_many_bulk", "recv_array", "forward"]


def body(seq: int, size: int) -> bytes:
    return bytes((seq * 31 + i) & 0xFF for i in range(size))


def plan(rest: int, exact: bool, then: int = PAYLOAD) -> list[int]:
    """Payload sizes that, on each of two laps, leave exactly ``rest`` bytes before the
    end of the data area, then (``exact``) send a record of exactly ``rest`` bytes or
    a message of ``then`` bytes, which must wrap; then a few usual ones."""
    sizes, pos = [], 0
    for _lap in range(2):
        gap = (CAP - rest - pos % CAP) % STRIDE
        if gap:  # one message of another size lines the usual ones up
            gap += STRIDE if gap < layout.RECORD_HEADER else 0
            sizes.append(gap - layout.RECORD_HEADER)
            pos += gap
        count = (CAP - rest - pos % CAP) // STRIDE
        sizes += [PAYLOAD] * count
        pos += count * STRIDE
        assert -pos % CAP == rest
        if exact:
            sizes.append(rest - layout.RECORD_HEADER)
            pos += rest
        else:
            sizes.append(then)
            pos += rest + layout.record_size(0, then)
        sizes += [PAYLOAD] * 4
        pos += 4 * STRIDE
    return sizes


def expected_position(sizes: list[int]) -> int:
    """Where the write position must be after those messages: an oracle written
    independently of the code under test (a record that does not fit before the end
    starts the next lap; one that fits exactly does not)."""
    pos = 0
    for size in sizes:
        record = (layout.RECORD_HEADER + size + 7) // 8 * 8
        rest = CAP - pos % CAP
        pos += (rest if record > rest else 0) + record
    return pos


class Reader:
    """One of the ways to read a ring, collecting (seq, payload) of what it got."""

    def __init__(self, how: str, name: str):
        self.how, self.got = how, []
        self.sub = shmbus.Consumer(name)
        if how == "forward":
            self.out_pub = shmbus.Producer(name + ".out", capacity=1 << 16)
            self.out = shmbus.Consumer(name + ".out")

    def drain(self) -> None:
        sub, got = self.sub, self.got
        if self.how == "recv":
            while (m := sub.try_recv()) is not None:
                got.append((m.seq, bytes(m)))
        elif self.how in ("recv_many", "recv_many_bulk"):
            n = 1000 if self.how == "recv_many_bulk" else 3  # bulk: the numpy path
            while True:
                try:
                    got += [(m.seq, bytes(m)) for m in sub.recv_many(n, timeout=0)]
                except shmbus.Timeout:
                    break
        elif self.how == "recv_array":
            while True:
                try:
                    view = sub.recv_array(ROW, 1000, timeout=0)
                except shmbus.Timeout:
                    break
                except ValueError:  # a message of another size: recv takes it
                    m = sub.recv(timeout=0)
                    got.append((m.seq, bytes(m)))
                    continue
                first = len(got) and got[-1][0] + 1
                got += [(first + i, row.tobytes()) for i, row in enumerate(view)]
        else:
            while (run := take_run(sub, 64)):
                assert forward(self.out_pub, run, range(len(run.bounds) - 1)) == \
                    len(run.bounds) - 1
            assert run is False  # never "needs checked reads" here
            while (m := self.out.try_recv()) is not None:
                got.append((m.seq, bytes(m)))
        sub.release()

    def close(self) -> None:
        self.sub.close()
        if self.how == "forward":
            self.out.close()
            self.out_pub.unlink()


def run_scenario(name: str, how: str, rest: int, exact: bool, then: int = PAYLOAD) -> None:
    sizes = plan(rest, exact, then)
    pub = shmbus.Producer(name, capacity=CAP)
    reader = Reader(how, name)
    try:
        for seq, size in enumerate(sizes):
            pub.send(body(seq, size), timeout=1)
            if seq % 16 == 15:
                reader.drain()
        reader.drain()
        assert reader.got == [(seq, body(seq, size)) for seq, size in enumerate(sizes)]
        assert pub.position == expected_position(sizes)
        assert reader.sub.position == pub.position
    finally:
        reader.close()
        pub.unlink()


@pytest.mark.parametrize("how", READERS)
@pytest.mark.parametrize("rest", [0, 8, 16, 24, 32])
def test_messages_that_must_wrap_after_exactly_rest_bytes(ns, how, rest):
    run_scenario("pad", how, rest, exact=False)


@pytest.mark.parametrize("how", READERS)
def test_padding_the_size_of_a_usual_record_is_not_a_message(ns, how):
    """Padding of exactly one usual record (40 bytes: its header says 16 bytes, no
    key) before a larger message: recv_array took it for a message."""
    run_scenario("pad40", how, STRIDE, exact=False, then=100)


@pytest.mark.parametrize("how", [r for r in READERS if r != "recv_array"])
@pytest.mark.parametrize("rest", [24, 32])
def test_a_record_that_fits_exactly_before_the_end_is_not_padding(ns, how, rest):
    run_scenario("fit", how, rest, exact=True)


def _no_header_when_exactly_24_left(data, pos, capacity):
    idx = pos & (capacity - 1)
    if capacity - idx > layout.RECORD_HEADER:  # off by one: 24 bytes get no header
        ring.RECORD.pack_into(data, idx, capacity - idx - layout.RECORD_HEADER, 0,
                              layout.REC_PAD, 0, 0)


def _never_a_header(data, pos, capacity):
    pass


def _pads_8_too_far(pos, capacity, size):
    idx = pos & (capacity - 1)
    return capacity - idx + 8 if idx + size > capacity else 0


def _padding_8_short(data, pos, capacity):
    idx = pos & (capacity - 1)
    if capacity - idx >= layout.RECORD_HEADER:
        ring.RECORD.pack_into(data, idx, capacity - idx - layout.RECORD_HEADER - 8, 0,
                              layout.REC_PAD, 0, 0)


@pytest.mark.parametrize("broken, rest", [
    (("write_padding", _no_header_when_exactly_24_left), 24),
    (("write_padding", _never_a_header), 32),
    (("padding_at", _pads_8_too_far), 16),
    (("write_padding", _padding_8_short), 32),
])
@pytest.mark.parametrize("how", ["recv", "recv_many_bulk", "forward"])
def test_these_tests_catch_a_producer_that_pads_wrongly(ns, monkeypatch, broken, rest,
                                                        how):
    """The scenario above fails when the producer's padding is broken on purpose."""
    monkeypatch.setattr(ring, *broken)
    with pytest.raises((AssertionError, shmbus.CorruptRing)):
        run_scenario("bad", how, rest, exact=False)


@pytest.mark.parametrize("klen", [0, 1, 7, 8, 9])
def test_inlined_sizes_and_padding_agree_with_the_descriptor(ns, klen):
    """send, recv and recv_many inline the record size and the padding rule; they
    must put every record where layout.record_size / padding_before say."""
    pub = shmbus.Producer("agree", capacity=CAP)
    try:
        with shmbus.Consumer("agree") as one, shmbus.Consumer("agree") as many:
            pos = 0
            for n in list(range(0, 41)) + [2000, 2048 - 24 - klen]:
                size = layout.record_size(klen, n)
                pos += layout.padding_before(pos % CAP, CAP, size) + size
                pub.send(bytes(n), key=b"k" * klen if klen else None, timeout=1)
                assert len(one.recv(timeout=0)) == n
                assert len(many.recv_many(5, timeout=0)) == 1
                assert pub.position == one.position == many.position == pos
                one.release()
                many.release()
            assert one._pad_limit == layout.pad_limit(CAP)
    finally:
        pub.unlink()
