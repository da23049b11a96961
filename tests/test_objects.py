"""Python objects through rings: send_obj / recv_obj, object frames and their codecs.

Run on both hot paths (CI runs this file with SHMBUS_PURE_PYTHON=1 and with
SHMBUS_REQUIRE_COMPILED=1); one test also talks to a process of the other path.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmbus
from shmbus import codecs, hotpath, naming
from shmbus.objects import decode, frame_bytes

from .support import SPAWN, start

CODECS = ["pickle", "json", "msgpack", "msgspec"]
DOC = {"id": 7, "name": "ünïcode", "tags": ["a", "b"], "nested": {"x": 1.5, "y": None},
       "flag": True}


@pytest.fixture
def ring(ns):
    with shmbus.Producer("obj", capacity=1 << 22) as pub, \
            shmbus.Consumer("obj") as sub:
        yield pub, sub
    shmbus.unlink("obj")


def ring_mappings(ns: str, name: str) -> list[tuple[int, int]]:
    """The address ranges at which this process maps ring ``name``."""
    path = naming.segment_path(ns, name)
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(path):
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    assert out, f"{path} is not mapped"
    return out


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def inside(a: np.ndarray, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= address(a) and address(a) + a.nbytes <= hi for lo, hi in ranges)


# -- round trips ----------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_a_dict_round_trips_with_every_codec(ring, codec):
    pub, sub = ring
    seq = pub.send_obj(DOC, key="user-1", codec=codec)
    assert pub.send_obj({"n": 2}, codec=codec) == seq + 1
    msg = sub.recv(timeout=5)
    assert (msg.seq, msg.key) == (seq, b"user-1")
    assert decode(msg) == DOC
    assert sub.recv_obj(timeout=5) == {"n": 2}  # the codec is in the frame


def test_codecs_keep_their_own_types(ring):
    pub, sub = ring
    value = {"t": (1, 2), "b": b"\x00\xff", "i": {1: "int key"}, "s": {3}}
    pub.send_obj(value)
    assert sub.recv_obj(timeout=5) == value  # pickle: everything
    pub.send_obj({"t": (1, 2), "i": {1: "x"}}, codec="json")
    assert sub.recv_obj(timeout=5) == {"t": [1, 2], "i": {"1": "x"}}  # JSON's types
    for codec in ("msgpack", "msgspec"):
        pub.send_obj({"b": b"\x00\xff", "i": {1: "x"}}, codec=codec)
        assert sub.recv_obj(timeout=5) == {"b": b"\x00\xff", "i": {1: "x"}}


def test_arrays_are_copied_once_into_the_ring_and_received_as_read_only_views(ring, ns):
    pub, sub = ring
    big = np.arange(1 << 17, dtype=np.float64)  # 1 MiB
    obj = {"big": big, "grid": np.arange(35, dtype=np.int32).reshape(5, 7),
           "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
           "cplx": np.arange(5) * (1 + 2j), "bytes": np.frombuffer(b"odd", np.uint8),
           "strided": big[:100:3], "label": "frame"}
    for key in (None, "k", "odd-key", b"12345678"):  # every alignment of the payload
        pub.send_obj(obj, key=key)
        msg = sub.recv(timeout=5)
        # Not pickled inline: the payload is the arrays' bytes and a little more.
        assert len(msg) < big.nbytes + 2048
        got = decode(msg)
        assert got["label"] == "frame" and got["strided"].tolist() == big[:100:3].tolist()
        ranges = ring_mappings(ns, "obj")
        for name in ("big", "grid", "fortran", "cplx", "bytes"):
            a = got[name]
            assert a.dtype == obj[name].dtype and a.shape == obj[name].shape
            assert np.array_equal(a, obj[name])
            assert inside(a, ranges), f"{name} is not a view into the ring"
            assert not a.flags.writeable, name
            assert address(a) % 8 == 0 and a.flags.aligned, name
            with pytest.raises(ValueError, match="read-only"):
                a[...] = 0
        assert got["fortran"].flags.f_contiguous


def test_copy_gives_writable_arrays_that_outlive_the_message(ns):
    with shmbus.Producer("small", capacity=1 << 16) as pub, \
            shmbus.Consumer("small") as sub:
        pub.send_obj({"a": np.full(4096, 7, np.uint8)})
        kept = sub.recv_obj(timeout=5, copy=True)["a"]
        assert kept.flags.writeable and not inside(kept, ring_mappings(ns, "small"))
        for i in range(40):  # the ring goes round many times over the first message
            pub.send_obj({"a": np.full(4096, i, np.uint8)})
            assert sub.recv_obj(timeout=5)["a"][0] == i
        assert (kept == 7).all()
        kept[0] = 1
    shmbus.unlink("small")


def test_a_released_message_is_not_decoded_again_and_copies_outlive_it(ring):
    """What the reader side guarantees (msg.data raises Released once released) holds
    for objects: decode(msg) raises; recv_obj(copy=True) and np.array() keep data.
    (Arrays handed out as views cannot be made to raise: numpy reads through a
    pointer; they are valid until the release, as documented.)"""
    pub, sub = ring
    pub.send_obj({"a": np.arange(4)})
    pub.send(b"not an object")
    pub.send_obj("last")
    msg = sub.recv(timeout=5)
    kept, view = decode(msg, copy=True)["a"], decode(msg)["a"]
    copied = np.array(view)
    msg.release()
    with pytest.raises(shmbus.Released, match="seq 0"):
        decode(msg)
    with pytest.raises(shmbus.FrameError) as err:
        sub.recv_obj(timeout=5)
    assert sub.recv_obj(timeout=5) == "last"  # releases the one err.msg holds
    with pytest.raises(shmbus.Released):
        bytes(err.value.msg)
    assert kept.tolist() == copied.tolist() == [0, 1, 2, 3]
    assert kept.flags.writeable and copied.flags.writeable


def test_a_received_view_holds_back_the_producer_until_it_is_released(ns):
    with shmbus.Producer("held", capacity=1 << 16) as pub, \
            shmbus.Consumer("held") as sub:
        pub.send_obj({"a": np.full(20_000, 1, np.uint8)})
        view = sub.recv_obj(timeout=5)["a"]
        with pytest.raises(shmbus.Timeout):
            for i in range(10):  # 64 KiB: the third one finds no room
                pub.send_obj({"a": np.full(20_000, 2, np.uint8)}, timeout=0.05)
        assert (view == 1).all()  # still the message's own bytes
        assert sub.recv_obj(timeout=5)["a"][0] == 2  # releases the first: room again
        pub.send_obj({"a": np.zeros(1, np.uint8)}, timeout=5)
    shmbus.unlink("held")


def test_large_objects_without_arrays_and_overwrite_rings(ns):
    with shmbus.Producer("ow", capacity=1 << 20, on_full="overwrite") as pub, \
            shmbus.Consumer("ow") as sub:
        text = "x" * 100_000  # a stream larger than what send_obj joins in memory
        pub.send_obj({"text": text, "a": np.arange(10)})
        got = sub.recv_obj(timeout=5)
        assert got["text"] == text and got["a"].tolist() == list(range(10))
        pub.send_obj(list(range(50_000)), codec="json")
        assert sub.recv_obj(timeout=5) == list(range(50_000))
    shmbus.unlink("ow")


def test_frame_bytes_for_send_many(ring):
    pub, sub = ring
    pub.send_many([frame_bytes({"i": i}) for i in range(3)] +
                  [frame_bytes({"a": np.arange(3)})])
    assert [decode(m)["i"] for m in sub.recv_many(3, timeout=5)] == [0, 1, 2]
    as_array = np.frombuffer(frame_bytes([5]), np.uint8).reshape(1, -1)  # any buffer
    assert decode(as_array) == decode(bytes(frame_bytes([5]))) == [5]
    assert sub.recv_obj(timeout=5)["a"].tolist() == [0, 1, 2]


# -- errors ---------------------------------------------------------------------------

def test_a_message_that_is_not_an_object_says_so_and_is_not_lost(ring):
    pub, sub = ring
    pub.send(b"hello", key="k")
    pub.send_obj("next")
    with pytest.raises(shmbus.FrameError) as err:
        sub.recv_obj(timeout=5)
    assert isinstance(err.value, shmbus.ShmbusError) and isinstance(err.value, ValueError)
    text = str(err.value)
    assert "not an object frame" in text and "b'hello'" in text and "'obj'" in text
    assert "recv()" in text and "SBOF" in text
    assert bytes(err.value.msg) == b"hello" and err.value.msg.key == b"k"
    assert sub.recv_obj(timeout=5) == "next"
    again = pickle.loads(pickle.dumps(err.value))  # fields pickle, the message does not
    assert type(again) is shmbus.FrameError and again.seq == err.value.seq
    assert not hasattr(again, "msg")


def _frame(obj, key_length=0) -> bytearray:
    return frame_bytes(obj, "pickle", key_length)


def _corruptions() -> list[tuple[str, bytes]]:
    good = _frame({"a": np.arange(16, dtype=np.int64), "b": np.arange(3.0)})
    _, _, _, nbuf, slen = codecs.HEAD.unpack_from(good)
    assert nbuf == 2
    table = codecs.HEAD_SIZE

    def patched(offset: int, fmt: str, value: int) -> bytes:
        out = bytearray(good)
        struct.pack_into(fmt, out, offset, value)
        return bytes(out)
    return [
        ("truncated header", bytes(good[:10])),
        ("truncated buffer", bytes(good[:-1])),
        ("version", patched(4, "<B", 9)),
        ("codec id", patched(5, "<B", 77)),
        ("stream past the end", patched(8, "<Q", len(good))),
        ("huge stream", patched(8, "<Q", 1 << 62)),
        ("more buffers than bytes", patched(6, "<H", 0xFFFF)),
        ("buffer past the end", patched(table + 8, "<Q", len(good))),
        ("buffer offset past the end", patched(table, "<Q", 1 << 63)),
        ("buffer inside the stream", patched(table, "<Q", 0)),
        ("overlapping buffers", patched(table + 16, "<Q", 0)),
        ("fewer buffers than the stream uses", patched(6, "<H", 1)),
        ("buffers on a json frame", patched(5, "<B", 2)),
        ("stream cut short", patched(8, "<Q", slen - 5)),
    ]


@pytest.mark.parametrize("name,frame", _corruptions(), ids=[c[0] for c in _corruptions()])
def test_corrupt_frames_raise_frame_error(ring, name, frame):
    pub, sub = ring
    assert decode(_frame([1]), accept=None) == [1]
    pub.send(frame)
    pub.send_obj("after")
    with pytest.raises(shmbus.FrameError, match="ring 'obj'"):
        sub.recv_obj(timeout=5)
    assert sub.recv_obj(timeout=5) == "after"


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_damage_to_a_frame_decodes_or_raises_frame_error(data):
    """Bytes changed anywhere in the header, the table or the stream: the frame
    decodes to something, or raises FrameError; never another error, and never an
    array that reaches outside the message (it sits in a larger buffer, between
    guard bytes that no decoded array may show)."""
    frame = _frame({"a": np.full(64, 3, np.int64), "s": "text"})
    head = codecs.HEAD_SIZE + 2 * codecs.ENTRY_SIZE + 40
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, min(head, len(frame) - 1)))
        frame[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 8))
    guard = b"\xee" * 256
    whole = bytearray(guard + bytes(frame) + guard)
    view = memoryview(whole)[len(guard):len(guard) + len(frame) - cut]
    try:
        got = decode(view)
    except shmbus.FrameError:
        return
    a = got.get("a") if isinstance(got, dict) else None
    if isinstance(a, np.ndarray) and a.nbytes:
        lo = address(np.frombuffer(view, np.uint8))
        start, end = lo - len(guard), lo + len(frame) + len(guard)
        if address(a) < end and address(a) + a.nbytes > start:  # a view of `whole`
            assert lo <= address(a) and address(a) + a.nbytes <= lo + len(view)


def test_too_large_objects_raise_message_too_large_and_leave_the_ring_usable(ns):
    with shmbus.Producer("tiny", capacity=1 << 16) as pub, \
            shmbus.Consumer("tiny") as sub:
        with pytest.raises(shmbus.MessageTooLarge, match="capacity") as err:
            pub.send_obj({"a": np.zeros(40_000, np.uint8)})
        assert isinstance(err.value, ValueError) and err.value.limit < 40_000
        with pytest.raises(shmbus.MessageTooLarge):
            pub.send_obj("x" * 40_000, codec="json")
        assert pub.seq == 0
        pub.send_obj({"a": np.zeros(1000, np.uint8)})
        assert sub.recv_obj(timeout=5)["a"].nbytes == 1000
    shmbus.unlink("tiny")


def test_unknown_and_unencodable_send_nothing(ring):
    pub, sub = ring
    with pytest.raises(ValueError, match="unknown codec 'yaml'.*json"):
        pub.send_obj(1, codec="yaml")
    with pytest.raises(TypeError, match="ndarray"):
        pub.send_obj({"a": np.zeros(3)}, codec="json")
    assert pub.seq == 0 and sub.try_recv() is None


@pytest.mark.parametrize("codec", ["msgpack", "msgspec"])
def test_a_codec_whose_package_is_missing_is_a_clear_error(ring, codec, monkeypatch):
    pub, sub = ring
    pub.send_obj({"sent": "while installed"}, codec=codec)
    monkeypatch.setattr(codecs.CODECS[codec], "_ready", None)  # look it up again
    for mod in [m for m in sys.modules if m == codec or m.startswith(codec + ".")]:
        monkeypatch.setitem(sys.modules, mod, None)  # imports now fail
    monkeypatch.setitem(sys.modules, codec, None)
    with pytest.raises(shmbus.CodecUnavailable, match=f"pip install {codec}") as err:
        pub.send_obj(1, codec=codec)
    assert isinstance(err.value, ImportError) and err.value.codec == codec
    with pytest.raises(shmbus.CodecUnavailable, match=f"seq 0 on ring 'obj'.*{codec}"):
        sub.recv_obj(timeout=5)


def test_pickle_is_refused_on_a_namespace_shared_with_a_group(ring, monkeypatch):
    pub, sub = ring
    pub.send_obj({"p": 1})
    pub.send_obj({"j": 1}, codec="json")
    pub.send_obj({"p": 2})
    with monkeypatch.context() as env:
        env.setenv("SHMBUS_GROUP", str(os.getgid()))
        shared = shmbus.Consumer("obj", start="earliest")
        try:
            with pytest.raises(shmbus.PermissionDenied, match="codec='json'") as err:
                shared.recv_obj(timeout=5)
            assert "unpickling runs code" in str(err.value)
            assert shared.recv_obj(timeout=5) == {"j": 1}
            assert shared.recv_obj(timeout=5, accept={"pickle"}) == {"p": 2}
        finally:
            env.delenv("SHMBUS_GROUP")
            shared.close()
    assert sub.recv_obj(timeout=5) == {"p": 1}  # a private namespace: pickle is fine


def test_timeouts_and_closed_objects(ns):
    pub = shmbus.Producer("c", capacity=1 << 16)
    sub = shmbus.Consumer("c")
    with pytest.raises(shmbus.Timeout):
        sub.recv_obj(timeout=0.01)
    pub.close()
    sub.close()
    with pytest.raises(shmbus.Closed):
        pub.send_obj({"a": 1})
    with pytest.raises(shmbus.Closed):
        pub.send_obj({"a": np.zeros(10)})
    with pytest.raises(shmbus.Closed):
        sub.recv_obj(timeout=1)
    shmbus.unlink("c")


# -- other consumers, other processes ---------------------------------------------------

def test_a_balancer_worker_receives_objects(ns):
    from shmbus.balancer import Balancer, Worker
    from shmbus.cleanup import collect
    shmbus.Producer("in", capacity=1 << 20).close()
    try:
        with Worker("g", "w1") as w, Balancer("g", ["in"], poll=0.005), \
                shmbus.Producer("in") as pub:
            for i in range(5):
                pub.send_obj({"i": i, "a": np.full(100, i, np.int16)}, key=f"k{i}")
            for i in range(5):
                got = w.recv_obj(timeout=20)
                assert got["i"] == i and (got["a"] == i).all()
                assert not got["a"].flags.writeable and got["a"].flags.aligned
    finally:
        shmbus.unlink("in")
        collect(force=True)


def test_objects_through_an_outbox_to_an_inbox(ns):
    """An Outbox has no ring before its first send: a first object with an array
    still goes (its claim checks the size), and the Inbox receives objects."""
    from shmbus.cleanup import collect
    with shmbus.Outbox("results") as out, \
            shmbus.Inbox("results", capacity=1 << 20) as inbox:
        out.send_obj({"i": 0, "a": np.arange(1000)})
        out.send_obj({"i": 1}, codec="json")
        with pytest.raises(shmbus.MessageTooLarge):
            out.send_obj({"a": np.zeros(1 << 20, np.uint8)})
        first = inbox.recv_obj(timeout=10)
        assert first["i"] == 0 and first["a"].tolist() == list(range(1000))
        assert not first["a"].flags.writeable
        assert inbox.recv_obj(timeout=10) == {"i": 1}
    collect(ns)  # the Outbox closed before the Inbox: its ring stayed


def _echo(ns: str, pure: bool, ready) -> None:
    """Receive objects on "to" and send back what was found in them on "back"."""
    assert shmbus.compiled is (not pure)
    with shmbus.Consumer("to", namespace=ns) as sub, \
            shmbus.Producer("back", namespace=ns) as pub:
        ready.set()
        while True:
            obj = sub.recv_obj(timeout=30)
            if obj is None:
                break
            a = obj["a"]
            mapped = ring_mappings(ns, "to")
            pub.send_obj({"i": obj["i"], "sum": int(a.sum()), "view": inside(a, mapped),
                          "writeable": a.flags.writeable, "echo": a})
        pub.send_obj(None)


@pytest.mark.skipif(hotpath.load_native()[0] is None, reason="no compiled build")
@pytest.mark.timeout(60)
def test_objects_cross_to_a_process_of_the_other_path_and_back(ns, procs, monkeypatch):
    other_is_pure = shmbus.compiled
    monkeypatch.delenv("SHMBUS_REQUIRE_COMPILED", raising=False)
    if other_is_pure:
        monkeypatch.setenv("SHMBUS_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("SHMBUS_PURE_PYTHON", raising=False)
    shmbus.Producer("to", capacity=1 << 18).close()
    shmbus.Producer("back", capacity=1 << 18).close()
    try:
        with shmbus.Consumer("back", start="earliest") as back:
            ready = SPAWN.Event()
            procs.append(start(_echo, ns, other_is_pure, ready))
            assert ready.wait(30)
            with shmbus.Producer("to") as pub:
                for i in range(60):  # 1.4 MB each way: wraps both 256 KiB rings
                    pub.send_obj({"i": i, "a": np.arange(i * 100, dtype=np.int64)},
                                 key="x" * (i % 9))
                    got = back.recv_obj(timeout=20)
                    assert got["i"] == i and got["sum"] == sum(range(i * 100))
                    assert got["view"] and not got["writeable"]
                    assert got["echo"].tolist() == list(range(i * 100))
                pub.send_obj(None)
                assert back.recv_obj(timeout=20) is None
        procs[0].join(20)
        assert procs[0].exitcode == 0
    finally:
        shmbus.unlink("to")
        shmbus.unlink("back")


def test_the_benchmark_program_reports_both_transports(tmp_path):
    from bench import objects_throughput
    out = tmp_path / "r.json"
    objects_throughput.main(["--count", "300", "--arrays", "20", "--repeats", "1",
                             "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    for case in ("dict", "1MiB array"):
        for transport in ("shmbus", "multiprocessing.Queue"):
            assert results[f"{case} {transport}"]["rate"]["median"] > 0
