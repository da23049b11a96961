"""The compiled hot path and the pure-Python one write the same bytes, share their
state, and interoperate across processes; which one runs is what the environment
asks for (issue 13)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmbus
from shmbus import hotpath, layout, ring
from shmbus.message import PyMessage

from .paths import native, needs_build, on_path
from .support import start



def test_the_environment_chooses_the_path():
    if os.environ.get("SHMBUS_REQUIRE_COMPILED") == "1":
        assert shmbus.compiled is True
    if os.environ.get("SHMBUS_PURE_PYTHON") == "1":
        assert shmbus.compiled is False
    assert shmbus.compiled == (hotpath.native is not None)


def _records(pub: shmbus.Producer) -> bytes:
    """The data area with every timestamp zeroed (the only field that differs)."""
    data = bytearray(pub._data)
    pos, end, cap = 0, pub.position, pub.capacity
    while pos < end:
        idx = pos & (cap - 1)
        if cap - idx < layout.RECORD_HEADER:
            pos += cap - idx
            continue
        length, klen, flags, seq, ts = layout.RECORD.unpack_from(data, idx)
        size = cap - idx if flags & layout.REC_PAD else layout.record_size(klen, length)
        if not flags & layout.REC_PAD:
            struct.pack_into("<Q", data, idx + 16, 0)
        pos += size
    return bytes(data)


messages = st.lists(st.tuples(st.binary(max_size=300),
                              st.one_of(st.none(), st.binary(max_size=20),
                                        st.text(max_size=8))), max_size=120)


def _producer(name: str, compiled: bool, **kw) -> shmbus.Producer:
    return on_path(compiled, shmbus.Producer, name, **kw)


def _consumer(name: str, compiled: bool, **kw) -> shmbus.Consumer:
    return on_path(compiled, shmbus.Consumer, name, **kw)


@needs_build
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=messages)
def test_compiled_and_pure_send_write_the_same_bytes(ns, batch):
    fast = _producer("c", True, capacity=4096, on_full="overwrite")
    slow = _producer("p", False, capacity=4096, on_full="overwrite")
    try:
        assert type(fast._cur) is native.Sequencer and type(slow._cur) is not native.Sequencer
        for data, key in batch:
            assert fast.send(data, key) == slow.send(data, key)
            assert (fast.position, fast.seq) == (slow.position, slow.seq)
        assert _records(fast) == _records(slow)
        words_f, words_s = fast._seg.words, slow._seg.words
        for word in (layout.H_WRITE, layout.H_LAST, layout.H_TAIL):
            assert words_f[word] == words_s[word]
        cps = slice(layout.H_CHECKPOINTS, layout.H_CHECKPOINTS + layout.CHECKPOINTS)
        assert words_f[cps].tolist() == words_s[cps].tolist()  # start=earliest's table
        assert (fast._cp_next, fast._room) == (slow._cp_next, slow._room)
    finally:
        fast.unlink()
        slow.unlink()


@needs_build
def test_compiled_send_takes_buffers_and_hands_the_rest_over(ns):
    pub = _producer("c", True, capacity=4096)
    got: list[bytes] = []
    with shmbus.Consumer("c") as sub:
        sent = [(b"bytes", None), (bytearray(b"array"), b"k"), (memoryview(b"view"), "s"),
                (np.arange(3, dtype=np.uint16), None)]
        for data, key in sent:
            pub.send(data, key=key)
            got.append(bytes(sub.recv(timeout=1)))
        with pytest.raises(TypeError, match="bytes-like"):
            pub.send("text")  # handed over: the pure path explains
        with pytest.raises(TypeError, match="key must be"):
            pub.send(b"x", 5)
        with pytest.raises(TypeError):
            pub.send(b"x", b"k", key=b"k")
        with pytest.raises(shmbus.MessageTooLarge):
            pub.send(b"x" * 4096)
        for _ in range(100):  # wraps and checkpoints: the slow path, same cursor
            pub.send(b"y" * 100, timeout=1)
            got.append(bytes(sub.recv(timeout=1)))
        with pub.claim(3) as buf:  # a claim open: sends refused by the pure path
            buf[:] = b"abc"
            with pytest.raises(shmbus.ShmbusError, match="claim"):
                pub.send(b"z")
        pub.send(b"after")
        got += [bytes(m) for m in sub.recv_many(2, timeout=1)]
    pub.close()
    with pytest.raises(shmbus.Closed):
        pub.send(b"closed")
    assert got[:4] == [b"bytes", b"array", b"view", np.arange(3, dtype=np.uint16).tobytes()]
    assert got[4:] == [b"y" * 100] * 100 + [b"abc", b"after"]
    pub.unlink()


@needs_build
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=messages, timeouts=st.integers(0, 3))
def test_compiled_and_pure_recv_hand_out_the_same_messages(ns, batch, timeouts):
    """Both readers of one ring (4 KiB: wraps, padding, checkpoints), in step."""
    pub = shmbus.Producer("r", capacity=4096)
    fast = _consumer("r", True)
    slow = _consumer("r", False)
    try:
        assert type(fast._cur) is native.Reader and type(slow._cur) is not native.Reader
        for data, key in batch:
            pub.send(data, key, timeout=0)
            a, b = fast.recv(timeout=0), slow.recv(timeout=0)
            assert type(a) is native.Message and type(b) is PyMessage
            assert (bytes(a), a.key, a.seq, a.timestamp_ns, a.deliveries) == \
                (bytes(b), b.key, b.seq, b.timestamp_ns, b.deliveries)
            assert a.data.readonly == b.data.readonly and len(a) == len(data)
            assert (fast._pos, fast._committed, fast._expect) == \
                (slow._pos, slow._committed, slow._expect)
        for _ in range(timeouts):  # nothing more: both wait and time out alike
            for sub in (fast, slow):
                with pytest.raises(shmbus.Timeout):
                    sub.recv(0)
    finally:
        fast.close()
        slow.close()
        pub.unlink()


def _produce(ns: str, pure: bool, count: int) -> None:
    os.environ["SHMBUS_NAMESPACE"] = ns
    import shmbus as bus
    assert bus.compiled is (not pure)
    with bus.Producer("x", capacity=8192) as pub:
        for i in range(count):
            pub.send(b"%d" % i * (i % 7), key=b"k%d" % (i % 5) if i % 3 else None)


def _children_run_the_other_path(monkeypatch) -> bool:
    """Make the processes this test starts run the path this one does not; True if
    that is the pure one."""
    other_is_pure = shmbus.compiled
    monkeypatch.delenv("SHMBUS_REQUIRE_COMPILED", raising=False)
    if other_is_pure:
        monkeypatch.setenv("SHMBUS_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("SHMBUS_PURE_PYTHON", raising=False)
    return other_is_pure


@needs_build
@pytest.mark.timeout(60)
def test_a_producer_of_the_other_path_in_another_process_interoperates(ns, procs,
                                                                         monkeypatch):
    """A ring of 8 KiB and 3,000 messages: wraps, padding and checkpoints many times
    over, written by the other path than this process's."""
    other_is_pure = _children_run_the_other_path(monkeypatch)
    with shmbus.Producer("x", capacity=8192):
        pass  # created here, produced there
    with shmbus.Consumer("x", start="earliest") as sub:
        procs.append(start(_produce, ns, other_is_pure, 3000))
        for i in range(3000):
            msg = sub.recv(timeout=20)
            assert (msg.seq, bytes(msg), msg.key) == (
                i, b"%d" % i * (i % 7), b"k%d" % (i % 5) if i % 3 else None)
    procs[0].join(20)
    assert procs[0].exitcode == 0
    shmbus.unlink("x")


@needs_build
def test_compiled_types_refuse_misuse_without_crashing(ns):
    with pytest.raises(TypeError, match="not initialised"):
        native.Sequencer.__new__(native.Sequencer).send(b"x")
    with pytest.raises(TypeError, match="not initialised"):
        native.Reader.__new__(native.Reader).recv()
    pub = _producer("r", True, capacity=4096)
    sub = _consumer("r", True)
    try:
        with pytest.raises(TypeError):
            sub.recv(1, 2)
        with pytest.raises(TypeError):
            sub.recv(wait=1)
        with pytest.raises(ValueError, match="data area"):
            native.Reader(
                segment=sub._seg.buf, data_view=memoryview(bytearray(4096)),
                data_offset=sub._seg.data_offset, capacity=4096, pad_limit=4072,
                write_word=layout.H_WRITE, tail_word=layout.H_TAIL,
                producer_sleep_word=layout.H_PRODUCER_SLEEP, read_word=0, next_word=0,
                safe_from=0, pos=0, committed=0, expect=None, owner=sub,
                take=sub._take, take_next=sub._take_next, try_take=sub._try_take,
                wake=print)
        data = pub.send(b"x" * 100)  # the payload may be the ring itself
        msg = sub.recv(timeout=1)
        pub.send(msg.data)
        assert bytes(sub.recv(timeout=1)) == b"x" * 100 and data == 0
    finally:
        sub.close()
        pub.unlink()


@needs_build
@pytest.mark.timeout(30)
def test_the_compiled_spin_lets_other_threads_run_and_stops_when_asked():
    import threading
    segment = memoryview(bytearray(64))
    words = segment.cast("Q")
    assert native.spin_above(segment, 2, 0, 1000) is False  # bounded: gives up
    words[2] = 5
    assert native.spin_above(segment, 2, 4, 1) is True
    assert native.spin_above(segment, 2, 5, 10) is False
    # A Python thread can publish while we spin: the GIL is released.  (At ~1e9 spins
    # the loop would otherwise run for many seconds and the timeout would fail it.)
    t = threading.Thread(target=lambda: words.__setitem__(3, 1))
    t.start()
    assert native.spin_above(segment, 3, 0, 10 ** 10) is True
    t.join(10)
    with pytest.raises(ValueError, match="outside"):
        native.spin_above(segment, 8, 0, 1)
    with pytest.raises(TypeError):
        native.spin_above(segment, 1, 0)


# -- send_many: the compiled loop, the pure loop and the pure numpy path ---------------

any_key = st.one_of(st.none(), st.binary(max_size=20), st.text(max_size=8),
                    st.binary(max_size=5).map(bytearray))  # bytearray: handed over
mixed_batch = st.tuples(st.just("many"), st.lists(st.tuples(st.binary(max_size=300).map(
    lambda b: b[:1] * len(b)), any_key), max_size=40), st.booleans())  # short reprs
uniform_batch = st.builds(  # one record size: the pure path writes them with numpy
    lambda size, count, klen, keyed: ("many", [
        (bytes([i & 255]) * size, (b"%0*d" % (klen, i))[-klen:]) for i in range(count)],
        keyed), st.integers(1, 200), st.integers(16, 60), st.integers(1, 6), st.booleans())
single = st.tuples(st.just("send"), st.binary(max_size=300), any_key)


def _zero_stamps(pub: shmbus.Producer, pos: int) -> None:
    """Zero the timestamps of the records from ``pos`` to the write position."""
    while pos < pub.position:
        rec = ring.read(pub._data, pos, pub.capacity, pub.position)
        if not rec.flags & layout.REC_PAD:
            struct.pack_into("<Q", pub._data, (pos & (pub.capacity - 1)) + 16, 0)
        pos += rec.size


def _apply(pub: shmbus.Producer, op) -> object:
    if op[0] == "send":
        return pub.send(op[1], op[2])
    batch, keyed = op[1], op[2]
    return pub.send_many([d for d, _ in batch],
                         keys=[k for _, k in batch] if keyed else None)


@needs_build
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(single, mixed_batch, uniform_batch), max_size=12))
def test_compiled_and_pure_send_many_write_the_same_ring(ns, ops):
    """Any sequence of send and send_many calls (mixed sizes, keys of every kind,
    uniform batches) through a 16 KiB ring (wraps, padding, checkpoints every 256
    bytes, the tail moving) leaves the same bytes, header words and cursor on both
    paths (but for the timestamps, zeroed after each call: each call is smaller than
    the ring, so all its records are still there)."""
    fast = _producer("c", True, capacity=1 << 14, on_full="overwrite")
    slow = _producer("p", False, capacity=1 << 14, on_full="overwrite")
    try:
        for op in ops:
            before = fast.position
            assert _apply(fast, op) == _apply(slow, op)
            assert (fast.position, fast.seq) == (slow.position, slow.seq)
            _zero_stamps(fast, before)
            _zero_stamps(slow, before)
        assert bytes(fast._data) == bytes(slow._data)
        words_f, words_s = fast._seg.words, slow._seg.words
        for word in (layout.H_WRITE, layout.H_LAST, layout.H_TAIL, layout.H_COUNT):
            assert words_f[word] == words_s[word]
        cps = slice(layout.H_CHECKPOINTS, layout.H_CHECKPOINTS + layout.CHECKPOINTS)
        assert words_f[cps].tolist() == words_s[cps].tolist()
        assert (fast._cp_next, fast._room, fast._limit) == \
            (slow._cp_next, slow._room, slow._limit)
    finally:
        fast.unlink()
        slow.unlink()


@needs_build
def test_compiled_send_many_hands_over_what_it_does_not_take(ns):
    """A key or payload the compiled loop does not take (a bytearray key, a text
    payload) goes to the pure loop at that message: the messages before it are sent
    once, errors are the pure path's, and flags and stamps reach every record."""
    pub = _producer("c", True, capacity=4096)
    try:
        _hand_over(pub)
    finally:
        pub.unlink()


def _hand_over(pub: shmbus.Producer) -> None:
    with shmbus.Consumer("c") as sub:
        seqs = pub.send_many([b"a", b"b", b"c", b"d"],
                             keys=[b"1", bytearray(b"2"), "3", None])
        assert seqs == range(0, 4)
        got = sub.recv_many(10, timeout=1)
        assert [(bytes(m), m.key) for m in got] == [
            (b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", None)]
        assert len({m.timestamp_ns for m in got}) == 1
        with pytest.raises(TypeError, match="bytes-like"):
            pub.send_many([b"e", "text", b"f"])
        assert bytes(sub.recv(timeout=1)) == b"e" and pub.seq == 5  # one, sent once
        with pytest.raises(ValueError, match="2 keys"):
            pub.send_many([b"x"], keys=[b"1", b"2"])
        pub._send_many([b"g", b"h"], None, None, 3 << layout.REC_REDELIVERY_SHIFT,
                       [11, 12])
        got = sub.recv_many(10, timeout=1)
        assert [(bytes(m), m.timestamp_ns, m.deliveries) for m in got] == [
            (b"g", 11, 4), (b"h", 12, 4)]  # 3 earlier deliveries, and this one
        with pytest.raises(shmbus.MessageTooLarge):
            pub.send_many([b"i", b"x" * 4096])
        assert bytes(sub.recv(timeout=1)) == b"i"  # published before the slow path
    pub.close()
    with pytest.raises(shmbus.Closed):
        pub.send_many([b"closed"])


def _produce_many(ns: str, pure: bool, count: int) -> None:
    os.environ["SHMBUS_NAMESPACE"] = ns
    import shmbus as bus
    assert bus.compiled is (not pure)
    with bus.Producer("x", capacity=8192) as pub:
        for start in range(0, count, 50):
            batch = range(start, min(start + 50, count))
            if start % 200 == 100:  # one size: the pure path's numpy writer
                pub.send_many([b"%06d" % i for i in batch])
                continue
            pub.send_many([b"%d" % i * (i % 7) for i in batch],
                          keys=[b"k%d" % (i % 5) if i % 3 else None for i in batch],
                          timeout=20)


def _expected(i: int) -> tuple:
    if i // 50 * 50 % 200 == 100:
        return (i, b"%06d" % i, None)
    return (i, b"%d" % i * (i % 7), b"k%d" % (i % 5) if i % 3 else None)


@needs_build
@pytest.mark.timeout(60)
def test_send_many_of_the_other_path_in_another_process_interoperates(ns, procs,
                                                                      monkeypatch):
    """Batches through an 8 KiB ring (wraps, padding, checkpoints, waiting for room)
    from a producer of the other path than this process's consumer."""
    other_is_pure = _children_run_the_other_path(monkeypatch)
    with shmbus.Producer("x", capacity=8192):
        pass  # created here, produced there
    with shmbus.Consumer("x", start="earliest") as sub:
        procs.append(start(_produce_many, ns, other_is_pure, 3000))
        for i in range(3000):
            msg = sub.recv(timeout=20)
            assert (msg.seq, bytes(msg), msg.key) == _expected(i)
    procs[0].join(20)
    assert procs[0].exitcode == 0
    shmbus.unlink("x")
