"""Forwarding raw records between rings (what the balancer does), in one process."""

from __future__ import annotations

import struct

import pytest

import shmbus
from shmbus.forward import forward, give_back, run_message, take_run
from shmbus.layout import REC_REDELIVERY_SHIFT


@pytest.fixture
def rings(ns):
    """Input ring 'in' (64 KiB) with a consumer, output ring 'out' (8 KiB)."""
    src = shmbus.Producer("in", capacity=1 << 16)
    dst = shmbus.Producer("out", capacity=1 << 13)
    sub = shmbus.Consumer("in")
    yield src, sub, dst
    sub.close()
    src.unlink()
    dst.unlink()


def test_forward_copies_records_with_new_seq_and_original_timestamp(rings):
    src, sub, dst = rings
    dst.send(b"already there")  # the output's seqs go on from its own
    for i in range(10):
        src.send(f"m{i}".encode() * (i + 1), key=None if i % 3 else f"k{i}")
    sent = [m for m in shmbus.Consumer("in", start="earliest").recv_many(10)]
    run = take_run(sub, 100, keys=True)
    assert len(run.bounds) == 11
    assert run.keys == [b"k0", None, None, b"k3", None, None, b"k6", None, None, b"k9"]
    with shmbus.Consumer("out", start="earliest") as out:
        assert forward(dst, run, [1, 2, 3, 7], flags=2 << REC_REDELIVERY_SHIFT) == 4
        assert forward(dst, run, range(8, 10)) == 2
        got = out.recv_many(10, timeout=1)
        payloads = [bytes(m) for m in got]  # closing releases them
    assert payloads[1:] == [bytes(sent[i]) for i in (1, 2, 3, 7, 8, 9)]
    assert [m.key for m in got][1:] == [sent[i].key for i in (1, 2, 3, 7, 8, 9)]
    assert [m.seq for m in got] == list(range(7))
    assert [m.deliveries for m in got] == [1, 3, 3, 3, 3, 1, 1]
    assert [m.timestamp_ns for m in got][1:] == [sent[i].timestamp_ns
                                                 for i in (1, 2, 3, 7, 8, 9)]
    assert dst.seq == 7


def test_take_run_releases_the_previous_run_and_can_be_rewound(rings):
    src, sub, dst = rings
    for i in range(6):
        src.send(bytes([i]) * 40)
    assert take_run(sub, 4).position(0) == 0
    assert src.read_position(sub.slot) == 0       # nothing released yet
    run = take_run(sub, 4)                       # releases the first four
    assert src.read_position(sub.slot) == run.pos
    assert len(run.bounds) == 3                  # only two were left
    give_back(sub, run, 1)                       # as the balancer does: not taken
    again = take_run(sub, 4)
    assert again.pos == run.position(1)
    assert run_message(sub, again, 0).data.tobytes() == bytes([5]) * 40
    assert take_run(sub, 4) is False             # nothing more now


def test_runs_stop_at_the_end_of_the_data_area_and_forwarding_wraps(rings):
    src, sub, dst = rings
    payload = bytes(range(200)) * 5              # 1000 bytes: 1024 per record
    with shmbus.Consumer("out", start="earliest") as out:
        seen = 0
        for _ in range(200):                     # both rings wrap many times
            src.send_many([payload] * 3)
            while (run := take_run(sub, 100)):
                assert run.bounds[-1] <= src.capacity
                n = len(run.bounds) - 1
                done = 0
                while done < n:
                    done += forward(dst, run, range(done, n))
                    for m in out.recv_many(100, timeout=1):
                        assert (bytes(m), m.seq) == (payload, seen)
                        seen += 1
        assert seen == 600
    late = shmbus.Consumer("out", start="earliest")  # checkpoints lead to a record
    assert bytes(late.recv(timeout=1)) == payload
    late.close()


def test_a_full_output_takes_a_prefix(rings):
    src, sub, dst = rings
    with shmbus.Consumer("out"):                  # holds everything: the ring fills
        src.send_many([bytes(1000)] * 12)
        run = take_run(sub, 100)
        # 8 KiB ring: at most 4 KiB (its largest record) per call, then it is full.
        assert forward(dst, run, range(3)) == 3
        assert forward(dst, run, [4, 6, 7, 8, 9, 10]) == 4   # 4 KiB per call at most
        assert forward(dst, run, [9, 10]) == 1               # 1 KiB was left
        assert forward(dst, run, [10]) == 0
        assert dst.seq == 8


def test_overwrite_rings_and_empty_rings_are_left_to_recv(ns):
    with shmbus.Producer("ow", capacity=1 << 13, on_full="overwrite") as pub, \
            shmbus.Consumer("ow") as sub:
        assert take_run(sub, 10) is False
        pub.send(b"x")
        assert take_run(sub, 10) is None         # needs checked reads
        assert bytes(sub.recv(timeout=1)) == b"x"
    shmbus.unlink("ow")


def test_a_corrupt_record_is_reported_not_forwarded(rings):
    src, sub, dst = rings
    src.send(b"fine")
    struct.pack_into("<I", src._data, 0, 0xFFFF_FFF0)  # its length: impossible now
    with pytest.raises(shmbus.CorruptRing, match="corrupt record at position 0"):
        take_run(sub, 10)
    assert dst.seq == 0


def test_records_of_one_size_are_gathered_and_stamped_in_bulk(ns):
    """Both forwarding paths (one size: numpy; mixed sizes: per record) give the same
    records, across many wraps of both rings and the checkpoints of the output."""
    with shmbus.Producer("in", capacity=1 << 14) as src, \
            shmbus.Producer("out", capacity=1 << 13) as dst, \
            shmbus.Consumer("in") as sub, shmbus.Consumer("out") as out:
        sent, expect, got = 0, [], []
        for round_ in range(80):
            mixed = round_ % 4 == 3
            batch = [(f"k{(sent + i) % 7}".encode(),
                      bytes([sent + i & 255]) * (40 + (i % 3 if mixed else 0)))
                     for i in range(30)]
            src.send_many([b for _, b in batch], keys=[k for k, _ in batch])
            sent += len(batch)
            while (run := take_run(sub, 64, keys=True)):
                assert bool(run.stride) == (len({e - s for s, e in zip(
                    run.bounds, run.bounds[1:])}) == 1)
                odd = [i for i in range(len(run.bounds) - 1) if run.keys[i][-1] % 2]
                done = 0
                while done < len(odd):
                    done += forward(dst, run, odd[done:], flags=1 << REC_REDELIVERY_SHIFT)
                    got += [(m.key, bytes(m), m.seq, m.deliveries)
                            for m in out.recv_many(100, timeout=0)]
                expect += [(m.key, bytes(m)) for m in (run_message(sub, run, i)
                                                       for i in odd)]
        assert [(k, b) for k, b, _, _ in got] == expect
        assert [s for _, _, s, _ in got] == list(range(len(got)))
        assert {d for *_, d in got} == {2}
    with shmbus.Consumer("out", start="earliest") as late:  # checkpoints lead to records
        m = late.recv(timeout=1)
        assert m.key[-1] % 2 == 1
    shmbus.unlink("in")
    shmbus.unlink("out")
