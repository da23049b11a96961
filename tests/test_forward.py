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


# -- the compiled forwarding and routing against their pure-Python twins ---------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shmbus import layout, ring  # noqa: E402
from shmbus.balancer.policies import ConsistentHash, hash64  # noqa: E402
from shmbus.balancer.routing import KeyRouter, router  # noqa: E402

from .paths import native, needs_build, on_path  # noqa: E402


def _stampless(pub: shmbus.Producer, pos: int, out: list) -> None:
    """Append (record header fields but the timestamp... and bytes) of the records
    from ``pos`` to the write position to ``out``."""
    while pos < pub.position:
        rec = ring.read(pub._data, pos, pub.capacity, pub.position)
        out.append(rec._replace(pos=pos))
        pos += rec.size


@needs_build
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.tuples(
    st.integers(0, 200), st.one_of(st.none(), st.binary(min_size=1, max_size=9))),
    min_size=1, max_size=40), min_size=1, max_size=8),
    choose=st.randoms(use_true_random=False), flags=st.integers(0, 3))
def test_compiled_forward_writes_what_the_pure_forward_writes(ns, batches, choose, flags):
    """Records taken from one input (mixed sizes, keys, wraps) and forwarded, the same
    indexes each time, into a compiled and a pure output ring of 4 KiB (wraps,
    padding, checkpoints, the tail moving): the same bytes (timestamps included: the
    originals are kept), header words and cursors, and take_run's C walk takes the
    runs the Python walk takes."""
    src = shmbus.Producer("in", capacity=1 << 14)
    fast = on_path(True, shmbus.Producer, "c", capacity=4096, on_full="overwrite")
    slow = on_path(False, shmbus.Producer, "p", capacity=4096, on_full="overwrite")
    a, b = shmbus.Consumer("in"), shmbus.Consumer("in")
    try:
        for batch in batches:
            src.send_many([bytes([n & 255]) * n for n, _ in batch],
                          keys=[k for _, k in batch])
            while True:
                run = take_run(a, 64)  # the C walk (this process may run either path)
                again = on_path(False, take_run, b, 64)  # the Python walk
                assert bool(run) == bool(again)
                if not run:
                    break
                assert (run.pos, run.bounds, run.stride) == \
                    (again.pos, again.bounds, again.stride)
                count = len(run.bounds) - 1
                picked = sorted(choose.sample(range(count), choose.randint(0, count)))
                for indexes in (picked, range(0, count)):
                    assert forward(fast, run, indexes, flags) == \
                        forward(slow, run, indexes, flags)
                    assert (fast.position, fast.seq) == (slow.position, slow.seq)
        assert bytes(fast._data) == bytes(slow._data)
        wf, ws = fast._seg.words, slow._seg.words
        for word in (layout.H_WRITE, layout.H_LAST, layout.H_TAIL):
            assert wf[word] == ws[word]
        cps = slice(layout.H_CHECKPOINTS, layout.H_CHECKPOINTS + layout.CHECKPOINTS)
        assert wf[cps].tolist() == ws[cps].tolist()
        assert (fast._cp_next, fast._room, fast._limit) == \
            (slow._cp_next, slow._room, slow._limit)
    finally:
        a.close()
        b.close()
        for p in (src, fast, slow):
            p.unlink()


@needs_build
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_the_compiled_hash64_is_the_policies_hash64(data):
    """BLAKE2b-64 in C, across block boundaries (128 bytes), equals hashlib's."""
    assert native.hash64(data) == hash64(data)
    assert native.hash64(memoryview(data)) == hash64(data)


@needs_build
@settings(max_examples=30, deadline=None)
@given(workers=st.sets(st.text("abcxyz", min_size=1, max_size=4), min_size=1, max_size=6),
       keys=st.lists(st.one_of(st.none(), st.binary(max_size=70)), max_size=80))
def test_both_routers_give_each_key_its_consistent_hash_owner(workers, keys):
    """The compiled KeyRouter (cached or not: every key twice, keys over its cache's
    48 bytes) and the pure one route each key to ConsistentHash.owner(key)."""
    policy = ConsistentHash(sorted(workers), vnodes=50)
    fast, slow = router(policy, native), router(policy, None)
    assert fast.names == slow.names == sorted(workers)
    run = _run_of_keys(keys + keys)
    expect = [fast.names.index(policy.owner(k)) for k in keys + keys]
    for r in (fast, slow):
        owners, picks = r.route(run)
        assert list(owners) == expect
        assert picks == [[i for i, w in enumerate(expect) if w == n]
                         for n in range(len(fast.names))]
    assert all(run.key(i) == k for i, k in enumerate(keys + keys))
    assert KeyRouter(*policy.ring()[:1], [fast.names.index(o) for o in policy.ring()[1]]
                     ).owner(b"x") == fast.names.index(policy.owner(b"x"))


@needs_build
def test_compiled_forwarding_refuses_what_is_not_a_run(rings):
    src, sub, _ = rings
    dst = on_path(True, shmbus.Producer, "c", capacity=4096)
    cur = dst._cur
    src.send(b"x" * 40)
    run = on_path(True, take_run, sub, 10)
    try:
        _refuse(cur, run)
    finally:
        dst.unlink()


def _refuse(cur, run) -> None:
    with pytest.raises(ValueError, match="bounds"):
        cur.forward(run.data, [0, 8], [0], 0)  # < a header
    with pytest.raises(ValueError, match="bounds"):
        cur.forward(run.data, [0, 1 << 20], [0], 0)  # past the end
    with pytest.raises(ValueError, match="ascend"):
        cur.forward(run.data, run.bounds, [1], 0)
    with pytest.raises(TypeError, match="not initialised"):
        native.Sequencer.__new__(native.Sequencer).forward(run.data, run.bounds, [0], 0)
    with pytest.raises(ValueError, match="within"):
        native.scan_records(run.data, 0, 1 << 20, 1 << 20, 10, 0, 4096, 1)
    with pytest.raises(ValueError, match="key"):  # a key longer than its record
        bad = bytearray(run.data[:run.bounds[1]])
        struct.pack_into("<H", bad, 4, 500)
        router(ConsistentHash(["w"]), native).route(
            shmbus.forward.Run(memoryview(bytes(bad)), 0, [0, len(bad)], None, 0))


def _run_of_keys(keys: list) -> shmbus.forward.Run:
    """A run of 3-byte records with these keys, as take_run hands it out."""
    data, bounds = bytearray(), [0]
    for key in keys:
        k = key or b""
        record = bytearray(layout.record_size(len(k), 3))
        layout.RECORD.pack_into(record, 0, 3, len(k), 0, len(bounds) - 1, 0)
        record[layout.RECORD_HEADER:layout.RECORD_HEADER + len(k)] = k
        data += record
        bounds.append(len(data))
    return shmbus.forward.Run(memoryview(bytes(data)), 0, bounds, keys, 0)


@needs_build
def test_keys_above_the_last_point_wrap_to_the_first_points_owner():
    policy = ConsistentHash(["a", "b", "c"], vnodes=2)
    points, owners = policy.ring()
    assert owners[0] != owners[-1]  # else the wrap would not show
    keys = [b"%d" % i for i in range(2000) if hash64(b"%d" % i) >= points[-1]]
    assert len(keys) > 100
    for r in (router(policy, native), router(policy, None)):
        ids, _ = r.route(_run_of_keys(keys))
        assert {r.names[w] for w in ids} == {owners[0]} == {policy.owner(k) for k in keys}
