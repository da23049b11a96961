"""A consumer that joins a block ring with ``start="earliest"`` is handed zero-copy data
only where the producer is sure to honour its slot (the epoch handshake of
``Consumer._join`` against the producer's scan in ``shmbus/room.py``): below that,
messages are copied and checked, so the producer overwriting them cannot change what
the consumer holds.

Each test plays the producer's part in the race by hand, in one process: the producer
overwrites data below the gate it cached before the consumer joined (it rescans only
when that gate says the ring is full), or is in the middle of a scan.
"""

from __future__ import annotations

import pytest

import shmbus
from shmbus.layout import H_GATE, H_SCAN, H_TAIL, RECORD_HEADER
from shmbus.segment import Segment

pytestmark = pytest.mark.timeout(30)

CAPACITY = 4096


def payload(seq: int) -> bytes:
    return bytes([seq & 0xFF]) * 100  # one record of 128 bytes each


@pytest.fixture
def ring(ns):
    """The ring's producer, and the ring's words and data mapped a second time."""
    pub = shmbus.Producer("j", capacity=CAPACITY)
    seg = Segment.open(ns, "j")
    yield pub, seg
    seg.close()
    pub.unlink()


def test_data_below_the_producers_cached_gate_is_copied_for_a_joining_consumer(ring):
    pub, seg = ring
    words = seg.words
    with shmbus.Consumer("j") as ahead:
        while pub.position < CAPACITY:  # fill the ring
            pub.send(payload(pub.seq), timeout=0)
        ahead.recv_many(1000, timeout=5)
        ahead.release()
        pub.send(payload(pub.seq), timeout=0)  # full: rescans, caches ahead's position
        gate, tail = words[H_GATE], words[H_TAIL]
        assert tail < gate, (tail, gate)
        with shmbus.Consumer("j", start="earliest") as late:
            first = late.recv(timeout=5)
            end = late.position
            assert tail < end <= gate, (tail, end, gate)  # read below the cached gate
            original = bytes(first)
            assert original == payload(first.seq)
            # The producer may overwrite `first` without a rescan (its cached gate is
            # above it) and does; a zero-copy view would now show another message.
            while pub.position < end + CAPACITY:
                pub.send(payload(pub.seq), timeout=0)
            assert bytes(first) == original, (first.seq, bytes(first)[:4])
            del first
    del words


def test_a_consumer_joining_while_the_producer_scans_copies_what_it_reads(ring):
    pub, seg = ring
    words = seg.words
    for _ in range(3):
        pub.send(payload(pub.seq))
    assert words[H_GATE] == 0  # the producer's last scan was before any consumer
    words[H_SCAN] += 1  # the (live) producer is in the middle of a scan
    try:
        late = shmbus.Consumer("j", start="earliest")
    finally:
        words[H_SCAN] += 1  # the scan ends
    with late:
        first = late.recv(timeout=5)
        assert (first.seq, bytes(first)) == (0, payload(0))
        # That scan may have missed our slot: the producer may overwrite anything.
        seg.data[RECORD_HEADER:RECORD_HEADER + 100] = b"X" * 100
        assert bytes(first) == payload(0)
        del first
    del words
