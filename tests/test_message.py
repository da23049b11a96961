"""Messages on both hot paths: the compiled ``Message`` and its pure twin behave
alike, a released message's payload raises instead of returning other bytes (issue 14
section 5), and the compiled reader hands out what the pure one does, batches and
errors included, on block and overwrite rings (issue 13)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmbus
from shmbus import layout
from shmbus.message import PyMessage

from .paths import PATHS, native, needs_build, on_path, why
from .support import start



def _consumer(name: str, compiled: bool, **kw) -> shmbus.Consumer:
    sub = on_path(compiled, shmbus.Consumer, name, **kw)
    assert (type(sub._cur) is getattr(native, "Reader", None)) == compiled
    return sub


@pytest.fixture(params=PATHS)
def compiled(request) -> bool:
    return request.param


def _message_type(compiled: bool) -> type:
    return native.Message if compiled else PyMessage


# -- the interface ----------------------------------------------------------------------

def test_both_twins_have_the_same_interface(ns, compiled):
    with shmbus.Producer("r", capacity=4096) as pub, _consumer("r", compiled) as sub:
        pub.send(b"hello", key=b"k")
        msg = sub.recv(timeout=1)
        assert type(msg) is _message_type(compiled)
        assert (bytes(msg), msg.key, msg.seq, len(msg), msg.deliveries) == \
            (b"hello", b"k", 0, 5, 1)
        assert isinstance(msg.timestamp_ns, int) and msg.timestamp_ns > 0
        assert msg.data.tobytes() == b"hello"
        assert repr(msg) == "<Message seq=0 key=b'k' 5 bytes>"
        assert msg == msg and hash(msg) == hash(msg) and {msg: 1}[msg] == 1
        assert msg._consumer is sub and msg._end == layout.record_size(1, 5)
        assert msg._flags == 0 and msg.sender is None
        sub.sender = "worker-7"  # an Inbox names the sender of its per-sender consumers
        assert msg.sender == "worker-7"
        pub.send(b"hello", key=b"k")
        other = sub.recv(timeout=1)
        assert other != msg and hash(other) != hash(msg)  # equal only to itself
        assert repr(msg) == "<Message seq=0 key=b'k' released>"
    pub.unlink()


def test_both_paths_take_the_same_arguments(ns, compiled):
    with shmbus.Producer("r", capacity=4096) as pub, _consumer("r", compiled) as sub:
        for i in range(4):
            pub.send(b"%d" % i)
        assert bytes(sub.recv(timeout=0)) == b"0"
        assert [bytes(m) for m in sub.recv_many(max_messages=2, timeout=0)] == [b"1", b"2"]
        assert [bytes(m) for m in sub.recv_many(5, timeout=None)] == [b"3"]
        assert sub.try_recv() is None
        with pytest.raises(shmbus.Timeout):
            sub.recv_many(1, 0)
        saved = sub.try_recv, sub.recv, sub.recv_many  # kept past close: still refused

        with pytest.raises(ValueError, match="max_messages must be >= 1"):
            sub.recv_many(0)
        for bad in [lambda: sub.recv(1, 2), lambda: sub.recv(wait=1),
                    lambda: sub.recv_many(), lambda: sub.recv_many(timeout=1),
                    lambda: sub.recv_many(2, 1, 3),
                    lambda: sub.recv_many(2, max_messages=2), lambda: sub.try_recv(0)]:
            with pytest.raises(TypeError):
                bad()
    for call, args in zip(saved, [(), (0,), (1, 0)]):
        with pytest.raises(shmbus.Closed):
            call(*args)
    pub.unlink()


@needs_build
def test_the_compiled_module_agrees_with_the_layout():
    assert native.REDELIVERY_SHIFT == layout.REC_REDELIVERY_SHIFT
    assert shmbus.Message is (native.Message if shmbus.compiled else PyMessage)


# -- released messages (issue 14, section 5) --------------------------------------------

def _released(msg) -> None:
    with pytest.raises(shmbus.Released, match=rf"seq {msg.seq} .*bytes\(msg\)"):
        msg.data
    with pytest.raises(shmbus.Released):
        bytes(msg)
    with pytest.raises(shmbus.Released):
        len(msg)


def _view_released(view: memoryview) -> None:
    with pytest.raises(ValueError, match="released"):
        view.tobytes()
    with pytest.raises(ValueError, match="released"):
        view[0]


def _release_by(how: str, sub: shmbus.Consumer, msg) -> None:
    if how == "recv":
        sub.recv(timeout=1)
    elif how == "try_recv":
        sub.try_recv()
    elif how == "recv_many":
        sub.recv_many(10, timeout=1)
    elif how == "message":
        msg.release()
    elif how == "consumer":
        sub.release()
    else:
        sub.close()


@pytest.mark.parametrize("how", ["recv", "try_recv", "recv_many", "message", "consumer",
                                 "close"])
@pytest.mark.parametrize("on_full", ["block", "overwrite"])
def test_a_released_message_and_its_views_raise(ns, compiled, how, on_full):
    """The user's view must not show the next message's bytes: the ring is tiny, so
    the producer writes the next lap over it as soon as it is released."""
    with shmbus.Producer("r", capacity=4096, on_full=on_full) as pub:
        sub = _consumer("r", compiled)
        try:
            pub.send(b"a" * 1000, key=b"k")
            msg = sub.recv(timeout=1)
            view = msg.data
            assert bytes(view) == b"a" * 1000 and bytes(msg) == b"a" * 1000
            pub.send(b"b" * 1000)
            _release_by(how, sub, msg)
            _released(msg)
            _view_released(view)
            for _ in range(8):  # laps over it: nothing of it can be read any more
                pub.send(b"c" * 1000, timeout=1)
                if not sub.closed:
                    sub.recv_many(10, timeout=1)
            _released(msg)
            assert msg.seq == 0 and msg.key == b"k"  # what is not the payload stays
        finally:
            sub.close()
        pub.unlink()


def test_try_recv_on_an_empty_ring_releases_the_previous_message(ns, compiled):
    with shmbus.Producer("r", capacity=4096) as pub, _consumer("r", compiled) as sub:
        pub.send(b"only")
        msg = sub.recv(timeout=1)
        view = msg.data
        assert sub.try_recv() is None
        _released(msg)
        _view_released(view)
        assert sub._committed == msg._end == sub._pos
    pub.unlink()


@pytest.mark.parametrize("on_full", ["block", "overwrite"])
def test_a_message_from_the_slow_path_is_released_alike(ns, compiled, on_full):
    """After padding the slow path (Python) reads the record and makes the message:
    the compiled reader's messages made there behave as its own."""
    with shmbus.Producer("r", capacity=4096, on_full=on_full) as pub, \
            _consumer("r", compiled) as sub:
        for _ in range(3):
            pub.send(b"x" * 1000)
            sub.recv(timeout=1)
        pub.send(b"y" * 1500)  # does not fit before the end: padding, then index 0
        msg = sub.recv(timeout=1)
        assert type(msg) is _message_type(compiled) and sub._pos == 4096 + 1528
        view = msg.data
        assert bytes(view) == b"y" * 1500
        pub.send(b"z")
        assert bytes(sub.recv(timeout=1)) == b"z"
        _released(msg)
        _view_released(view)
    pub.unlink()


def test_releasing_a_message_releases_it_and_those_before_it_only(ns, compiled):
    with shmbus.Producer("r", capacity=1 << 16) as pub, _consumer("r", compiled) as sub:
        for i in range(5):
            pub.send(b"%d" % i)
        batch = sub.recv_many(5, timeout=1)
        views = [m.data for m in batch]
        batch[2].release()
        for msg, view in zip(batch[:3], views[:3]):
            _released(msg)
            _view_released(view)
        assert [bytes(m) for m in batch[3:]] == [b"3", b"4"]
        assert [bytes(v) for v in views[3:]] == [b"3", b"4"]
        assert views[3] is batch[3].data  # one view per message, kept once
        assert sub._committed == batch[2]._end
    pub.unlink()


def test_a_view_with_exports_of_its_own_is_the_callers_to_drop(ns, compiled):
    """numpy holds the view: it cannot be released; nothing breaks, and the message
    itself still refuses its payload."""
    with shmbus.Producer("r", capacity=4096) as pub, _consumer("r", compiled) as sub:
        pub.send(np.arange(4, dtype=np.int64))
        msg = sub.recv(timeout=1)
        array = np.frombuffer(msg.data, np.int64)
        pub.send(b"next")
        assert bytes(sub.recv(timeout=1)) == b"next"
        _released(msg)
        assert array.tolist() == [0, 1, 2, 3]  # still mapped: the caller's to drop
        del array
    pub.unlink()


def test_a_workers_try_recv_publishes_what_it_received(ns, compiled):
    """A balancer Worker records what it received in its slot (what counts one delivery
    more if it dies): try_recv too, not only recv and recv_many."""
    from shmbus.balancer import membership
    from shmbus.balancer.worker import Worker, received_position
    worker = on_path(compiled, Worker, "g", "w", capacity=4096)
    try:
        with shmbus.Producer(membership.worker_ring("g", "w")) as pub:
            pub.send(b"one")
            pub.send(b"two")
            msg = worker.try_recv()
            assert bytes(msg) == b"one" and received_position(worker) == msg._end
            assert worker.try_recv() is not None and worker.try_recv() is None
            assert received_position(worker) == worker._pos
    finally:
        worker.close()
        shmbus.unlink(membership.worker_ring("g", "w"))


# -- the same messages from both readers -------------------------------------------------

records = st.lists(st.tuples(st.binary(max_size=300),
                             st.one_of(st.none(), st.binary(min_size=1, max_size=20))),
                   max_size=80)


def _drain(sub: shmbus.Consumer, sizes: list[int]) -> list[list[tuple]]:
    """Batches of ``sizes`` (1: try_recv), as plain data; an error is its type."""
    out: list[list[tuple]] = []
    for n in sizes:
        try:
            got = [sub.try_recv()] if n == 1 else sub.recv_many(n, timeout=0)
        except (shmbus.Timeout, shmbus.CorruptRing) as e:
            out.append([type(e).__name__])
            continue
        out.append([None if m is None else (bytes(m), m.key, m.seq, m.timestamp_ns,
                                            m.deliveries) for m in got])
    return out


@needs_build
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=records, sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
       every=st.integers(1, 8), corrupt=st.one_of(st.none(), st.integers(0, 79)))
def test_compiled_and_pure_readers_give_the_same_batches_and_errors(
        ns, batch, sizes, every, corrupt):
    """One ring of 4 KiB (wraps, padding, keys), sent in steps of ``every`` messages,
    read by both readers with the same mix of recv_many sizes and try_recv; maybe one
    record's seq corrupted: both raise CorruptRing at the same place."""
    pub = shmbus.Producer("r", capacity=4096)
    fast, slow = _consumer("r", True), _consumer("r", False)
    try:
        for i in range(0, len(batch), every):
            for j, (data, key) in enumerate(batch[i:i + every], i):
                pub.send(data, key, timeout=0)
                if j == corrupt:  # a seq out of turn
                    at = (pub.position - layout.record_size(len(key or b""), len(data))) \
                        & (pub.capacity - 1)
                    seq = layout.RECORD.unpack_from(pub._data, at)[3]
                    pub._data[at + 8:at + 16] = (seq + 5).to_bytes(8, "little")
            assert _drain(fast, sizes) == _drain(slow, sizes)
            while fast._pos != pub.position:  # the rest, so that the producer has room
                rest = _drain(fast, [1000])
                assert rest == _drain(slow, [1000])
                if rest == [["CorruptRing"]]:
                    break
            assert (fast._pos, fast._expect) == (slow._pos, slow._expect)
            if fast._pos != pub.position:  # stopped at the corrupt record, both
                break
    finally:
        fast.close()
        slow.close()
        pub.unlink()


@needs_build
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 60), st.lists(st.integers(1, 40),
                                                             min_size=1, max_size=4)),
                      min_size=1, max_size=10),
       sizes=st.lists(st.integers(0, 700), min_size=1, max_size=16),
       durable=st.booleans())
def test_compiled_and_pure_readers_of_an_overwrite_ring_lose_the_same(ns, steps, sizes,
                                                                     durable):
    """An overwrite ring of 4 KiB that the producer laps between reads (checked reads,
    jumps to the oldest record, lost counts), read by both readers in step: the same
    messages, batches and ``lost``, and the same next seq stored at each release."""
    pub = shmbus.Producer("o", capacity=4096, on_full="overwrite")
    fast = _consumer("o", True, start="earliest", durable="f" if durable else None)
    slow = _consumer("o", False, start="earliest", durable="s" if durable else None)
    try:
        i, received = 0, False
        for count, reads in steps:
            for _ in range(count):
                n = sizes[i % len(sizes)]
                pub.send(bytes([i % 256]) * n, key=b"%d" % i if i % 3 else None)
                i += 1
            got = _drain(fast, reads)
            assert got == _drain(slow, reads)
            assert (fast.lost, fast._pos, fast._expect) == (slow.lost, slow._pos,
                                                            slow._expect)
            received = received or any(m and m[0] not in ("Timeout", None) for m in got)
        fast.release()
        slow.release()
        slots = {c["durable"] or c["slot"]: c for c in shmbus.inspect("o")["consumers"]}
        f, s = (slots["f"], slots["s"]) if durable else (slots[fast.slot], slots[slow.slot])
        assert f["lost"] == s["lost"] == fast.lost
        stored = [c._words[c._next_word] for c in (fast, slow)]  # the slots' next seq + 1
        assert stored[0] == stored[1]
        assert stored[0] == (fast._expect + 1 if received else 0)  # with the position
    finally:
        fast.close()
        slow.close()
        pub.unlink()


# -- overwrite rings: a producer lapping the reader in another process -------------------

def _lap(ns: str, count: int, pure: bool) -> None:
    os.environ["SHMBUS_NAMESPACE"] = ns
    import shmbus as bus
    assert bus.compiled is (not pure)
    with bus.Producer("ow", capacity=8192, on_full="overwrite") as pub:
        for i in range(count):
            n = 16 + (i * 37) % 3900
            pub.send(bytes([i % 251]) * n, key=b"%d" % i if i % 4 else None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("producer_pure", [False, True], ids=["compiled-producer",
                                                               "pure-producer"])
def test_a_lapping_producer_never_shows_a_torn_message(ns, procs, compiled,
                                                       producer_pure, monkeypatch):
    """The producer laps a slow reader many times over (8 KiB ring, messages up to
    3.9 KiB): every message read is intact (its bytes follow from its seq), seqs only
    grow, and what was skipped is exactly what ``lost`` counts."""
    if not producer_pure and native is None:
        pytest.skip(f"no compiled build: {why}")
    monkeypatch.delenv("SHMBUS_REQUIRE_COMPILED", raising=False)
    if producer_pure:
        monkeypatch.setenv("SHMBUS_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("SHMBUS_PURE_PYTHON", raising=False)
    count = 20000
    with shmbus.Producer("ow", capacity=8192, on_full="overwrite"):
        pass
    sub = _consumer("ow", compiled, start="earliest")
    try:
        procs.append(start(_lap, ns, count, producer_pure))
        seen, last = 0, -1
        while last < count - 1:
            batch = sub.recv_many(7, timeout=20) if seen % 2 else [sub.recv(timeout=20)]
            for msg in batch:
                i = msg.seq
                assert i > last, (i, last)
                n = 16 + (i * 37) % 3900
                assert bytes(msg) == bytes([i % 251]) * n, f"torn message seq {i}"
                assert msg.key == (b"%d" % i if i % 4 else None)
                seen += 1
                last = i
        assert sub.lost == count - seen and sub.lost > 0, (sub.lost, seen)
        assert shmbus.inspect("ow")["consumers"][0]["lost"] == sub.lost
    finally:
        sub.close()
    procs[0].join(20)
    assert procs[0].exitcode == 0
    shmbus.unlink("ow")
