"""A corrupt ring is an error, never a hang or garbage.

Each test writes garbage into a real ring through a second, independent mapping of its
segment (what a stray writer or a bug in another process would do; offsets from
:mod:`shmbus.layout`) and checks that every way of reading records (recv, recv_many,
recv_array, forwarding, a resumed durable cursor, start="earliest", inspect) raises
:class:`shmbus.CorruptRing` within a bounded time, never hands out a message that
breaks the ring's rules, and never moves a cursor past the write position.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmbus
from shmbus import layout, naming
from shmbus.forward import forward, run_message, take_run

CAP = 4096
PAYLOAD = 16
STRIDE = layout.record_size(0, PAYLOAD)        # 40
ROW = np.dtype((np.uint8, PAYLOAD))
READERS = ["recv", "recv_many", "recv_array", "forward"]
FIELD = {name: layout.RECORD_DTYPE.fields[name][1] for name in layout.RECORD_DTYPE.names}


def body(seq: int) -> bytes:
    return bytes((seq * 7 + i) & 0xFF for i in range(PAYLOAD))


class Mapped:
    """A second mapping of a ring's segment, as numpy arrays: header words, slots and
    the data area (writing them writes the ring)."""

    def __init__(self, name: str):
        fd = os.open(naming.segment_path(naming.resolve_namespace(None), name), os.O_RDWR)
        try:
            self.mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        h = layout.read_header(self.mm)
        self.words = np.frombuffer(self.mm, "<u8", h["data_offset"] // 8)
        self.data = np.frombuffer(self.mm, np.uint8, CAP, h["data_offset"])

    def word(self, index: int, value: int | None = None) -> int:
        if value is not None:
            self.words[index] = value
        return int(self.words[index])

    def field(self, pos: int, name: str, value: int) -> None:
        """Set field ``name`` of the record header at ring position ``pos``."""
        dtype = layout.RECORD_DTYPE.fields[name][0]
        at = (pos & (CAP - 1)) + FIELD[name]
        self.data[at:at + dtype.itemsize] = np.frombuffer(
            np.array(value, dtype).tobytes(), np.uint8)

    def put(self, pos: int, raw: bytes) -> None:
        at = pos & (CAP - 1)
        self.data[at:at + len(raw)] = np.frombuffer(raw, np.uint8)

    def close(self) -> None:
        del self.words, self.data
        self.mm.close()


class Reader:
    """Reads a ring one way; ``take()`` returns the (seq, payload) of what it got now
    ([] when nothing is there), raising CorruptRing."""

    def __init__(self, how: str, name: str, **kwargs):
        self.how = how
        self.sub = shmbus.Consumer(name, **kwargs)
        if how == "forward":
            self.out_pub = shmbus.Producer(name + ".out", capacity=1 << 16)
            self.out = shmbus.Consumer(name + ".out")

    def take(self) -> list[tuple[int, bytes]]:
        sub = self.sub
        try:
            if self.how == "recv":
                m = sub.recv(timeout=0)
                return [(m.seq, bytes(m))]
            if self.how == "recv_many":
                return [(m.seq, bytes(m)) for m in sub.recv_many(1000, timeout=0)]
            if self.how == "recv_array":
                try:
                    view = sub.recv_array(ROW, 1000, timeout=0)
                except ValueError:  # a message of another size: recv takes it
                    m = sub.recv(timeout=0)
                    return [(m.seq, bytes(m))]
                end = sub._expect  # recv_array has no seqs: the consumer counted them
                return [(end - len(view) + i, row.tobytes()) for i, row in enumerate(view)]
            run = take_run(sub, 64)
            if run is None:  # the first record after joining: read as a message
                m = sub.recv(timeout=0)
                return [(m.seq, bytes(m))]
            if not run:
                return []
            n = len(run.bounds) - 1
            got = [(m.seq, bytes(m)) for m in (run_message(sub, run, i) for i in range(n))]
            assert forward(self.out_pub, run, range(n)) == n
            assert [bytes(m) for m in self.out.recv_many(n, timeout=0)] == \
                [data for _, data in got]
            return got
        except shmbus.Timeout:
            return []

    def read_all(self) -> tuple[list[tuple[int, bytes]], shmbus.CorruptRing | None]:
        """Everything it can read now, and the CorruptRing that stopped it, if any."""
        got: list[tuple[int, bytes]] = []
        for _ in range(1000):  # bounded: a reader that never stops is a failure
            try:
                more = self.take()
            except shmbus.CorruptRing as e:
                return got, e
            if not more:
                return got, None
            got += more
        raise AssertionError("the reader never stopped")

    def close(self) -> None:
        self.sub.close()
        if self.how == "forward":
            self.out.close()
            self.out_pub.unlink()


def send(pub: shmbus.Producer, seqs) -> None:
    for seq in seqs:
        assert pub.send(body(seq), timeout=1) == seq


def reader_for(how: str, name: str, **kwargs) -> Reader:
    if how == "durable":  # a resumed durable cursor, read with recv
        return Reader("recv", name, durable="d", **kwargs)
    return Reader(how, name, **kwargs)


def read_word(name: str, index: int) -> int:
    m = Mapped(name)
    try:
        return m.word(index)
    finally:
        m.close()


# Garbage in the header of the third of five 40-byte records (at position 80).
BAD_HEADERS = [
    ("length", 0xFFFF_FFF0),   # 4 GB: the "65 KB of garbage, cursor 4 GB on"
    ("length", 65000),         # more than the ring holds
    ("length", 1000),          # fits the ring, but ends after the write position
    ("key_length", 0xFFFF),
    ("flags", layout.REC_PAD),  # padding in the middle of the data area
    ("seq", 777777),
    ("seq", 1),                # backwards
    ("seq", 3),                # a skip on a block ring
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("field, value", BAD_HEADERS)
@pytest.mark.parametrize("how", READERS + ["durable"])
def test_a_corrupt_header_stops_every_reader_at_that_record(ns, how, field, value):
    pub = shmbus.Producer("c", capacity=CAP)
    reader = reader_for(how, "c")
    m = Mapped("c")
    try:
        send(pub, range(5))
        bad = 2 * STRIDE
        m.field(bad, field, value)
        got, err = reader.read_all()
        assert got == [(0, body(0)), (1, body(1))]
        assert err is not None and f"corrupt record at position {bad}" in str(err)
        assert "expected" in str(err) and "shmbus rm c" in str(err)
        with pytest.raises(shmbus.CorruptRing):  # again, at once: never a wait
            reader.take()
        assert reader.sub.position == bad         # not one byte past it
        slot = reader.sub.slot
        reader.close()
        assert m.word(layout.slot_word(slot) + layout.S_READ) <= bad
        if how == "durable":  # resuming there: an error too, at most one message late
            again = reader = reader_for("durable", "c")
            got, err = again.read_all()
            assert err is not None and len(got) <= 1
    finally:
        m.close()
        reader.close()
        pub.unlink()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("how", READERS)
def test_a_length_that_stays_inside_the_data_is_caught_at_the_next_record(ns, how):
    """A length a little off cannot be told from a real one by itself (a record of 48
    bytes instead of 40 still ends before the write position): the record after it
    then starts in the middle of a real one, and that is an error."""
    pub = shmbus.Producer("c", capacity=CAP)
    reader = Reader(how, "c")
    m = Mapped("c")
    try:
        send(pub, range(5))
        m.field(2 * STRIDE, "length", PAYLOAD + 8)
        got, err = reader.read_all()
        assert got[:2] == [(0, body(0)), (1, body(1))] and len(got) <= 3
        assert err is not None
        assert reader.sub.position <= 2 * STRIDE + 48
    finally:
        m.close()
        reader.close()
        pub.unlink()


def _forge(m: Mapped, pos: int, seq: int) -> None:
    """A well-formed record of 8 bytes with ``seq`` at ``pos``, and every checkpoint
    pointing at it."""
    m.put(pos, layout.RECORD.pack(8, 0, 0, seq, 0) + b"forged!!")
    for b in range(layout.CHECKPOINTS):
        m.word(layout.H_CHECKPOINTS + b, pos)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("how", READERS)
def test_a_forged_checkpoint_is_not_believed_by_start_earliest(ns, how):
    pub = shmbus.Producer("c", capacity=CAP)
    m = Mapped("c")
    try:
        send(pub, range(3))
        big = pub.position
        pub.send(bytes(64), timeout=1)            # seq 3: room for a forged record
        send(pub, range(4, 7))
        _forge(m, big + layout.RECORD_HEADER, 777777)
        reader = Reader(how, "c", start="earliest")
        try:
            got, err = reader.read_all()
        finally:
            reader.close()
        assert got == [] and err is not None and "777777" in str(err)
    finally:
        m.close()
        pub.unlink()


@pytest.mark.timeout(10)
def test_a_forged_checkpoint_is_not_believed_by_a_lapped_consumer(ns):
    pub = shmbus.Producer("c", capacity=CAP, on_full="overwrite")
    sub = shmbus.Consumer("c")
    m = Mapped("c")
    try:
        send(pub, range(300))                     # about three laps
        big = pub.position
        pub.send(bytes(64), timeout=1)            # seq 300: room for a forged record
        pub.send(b"last")
        assert big + layout.RECORD_HEADER >= m.word(layout.H_TAIL)
        _forge(m, big + layout.RECORD_HEADER, 777777)
        with pytest.raises(shmbus.CorruptRing, match="777777"):
            sub.recv(timeout=0)
        assert sub.lost == 0
    finally:
        m.close()
        sub.close()
        pub.unlink()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("cursor", ["past the write position", "misaligned",
                                    "inside a payload"])
@pytest.mark.parametrize("how", READERS)
def test_a_corrupt_durable_cursor_is_an_error_not_a_wait(ns, how, cursor):
    pub = shmbus.Producer("c", capacity=CAP)
    first = Reader("recv", "c", durable="d")
    m = Mapped("c")
    try:
        send(pub, range(5))
        assert first.take() + first.take() == [(0, body(0)), (1, body(1))]
        slot = first.sub.slot
        first.close()                               # the cursor: 80, record 2
        word = layout.slot_word(slot) + layout.S_READ
        bad = {"past the write position": pub.position + CAP * 1000,
               "misaligned": 2 * STRIDE + 3,
               "inside a payload": 2 * STRIDE + layout.RECORD_HEADER}[cursor]
        m.word(word, bad)
        reader = Reader(how, "c", durable="d")
        try:
            got, err = reader.read_all()            # recv(timeout=0): must not wait
            assert got == [] and err is not None
            with pytest.raises(shmbus.CorruptRing):
                reader.sub.recv(timeout=None)       # nor with no timeout
        finally:
            reader.close()
        assert m.word(word) == bad                  # never moved on
    finally:
        m.close()
        pub.unlink()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("move", [+STRIDE * 2, -STRIDE * 2])
@pytest.mark.parametrize("how", READERS)
def test_a_write_position_that_moved_is_an_error(ns, how, move):
    """Forward: the reader meets zeros where records should be.  Backward, behind
    the reader: waiting would never end."""
    pub = shmbus.Producer("c", capacity=CAP)
    reader = Reader(how, "c")
    m = Mapped("c")
    try:
        send(pub, range(5))
        got, err = reader.read_all()
        assert len(got) == 5 and err is None
        m.word(layout.H_WRITE, pub.position + move)
        got, err = reader.read_all()
        assert got == [] and err is not None
        assert reader.sub.position == pub.position
    finally:
        m.close()
        reader.close()
        pub.unlink()


@pytest.mark.timeout(20)
def test_inspecting_a_cursor_far_behind_the_tail_with_padding_at_index_0_ends(ns):
    """The issue's hang: inspect, ls, gc and doctor walked from a slot's cursor to the
    write position one padding record (one lap) at a time."""
    from click.testing import CliRunner

    from shmbus.tools.cli import main

    pub = shmbus.Producer("c", capacity=CAP, on_full="overwrite")
    shmbus.Consumer("c", durable="slow").close()   # its cursor stays at 0
    send(pub, range(200))
    pub.close()
    m = Mapped("c")
    try:
        for word in (layout.H_WRITE, layout.H_LAST, layout.H_TAIL):  # 2**40 laps on
            m.word(word, m.word(word) + (CAP << 40))
        m.put(0, layout.RECORD.pack(CAP - layout.RECORD_HEADER, 0, layout.REC_PAD, 0, 0))
        try:
            shmbus.inspect("c")
        except shmbus.CorruptRing:
            pass
        assert [r["name"] for r in shmbus.list_rings()] == ["c"]
        for args in (["ls"], ["inspect", "c"], ["doctor"], ["gc", "--dry-run"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code in (0, 1), (args, result.output)
    finally:
        m.close()
        shmbus.unlink("c")


# -- random corruption ---------------------------------------------------------------

SENT, READ = 150, 90   # messages sent; read and released by the durable cursor "d"


def _positions() -> list[int]:
    """Where each of the SENT records starts (the padding rule, written out)."""
    out, pos = [], 0
    for _ in range(SENT):
        rest = CAP - pos % CAP
        pos += rest if STRIDE > rest else 0
        out.append(pos)
        pos += STRIDE
    return out


def _changed_header(before: bytes, after: bytes) -> bool:
    """Whether garbage in a record header makes it a different record: another size,
    padding, or another seq (other changes, such as another key/payload split of the
    same size, cannot be told from a real record)."""
    old, new = layout.RECORD.unpack(before), layout.RECORD.unpack(after)
    return (layout.record_size(new[1], new[0]) != layout.record_size(old[1], old[0])
            or bool(new[2] & layout.REC_PAD) or new[3] != old[3])


def _check_stream(got: list[tuple[int, bytes]], first: int | None, touched: range,
                  lost: int | None = None):
    """Seqs go up by one (from ``first`` if given; on an overwrite ring, where ``lost``
    counts what was skipped, they may skip that many), no seq was never sent, and
    every message whose record the garbage did not touch is intact."""
    seqs = [s for s, _ in got]
    if lost is None:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
        if first is not None and seqs:
            assert seqs[0] == first
    else:
        assert all(a < b for a, b in zip(seqs, seqs[1:]))
        assert sum(b - a - 1 for a, b in zip(seqs, seqs[1:])) <= lost
    assert all(0 <= s < SENT for s in seqs)
    positions = _positions()
    for seq, data in got:
        at = positions[seq] % CAP
        if at + STRIDE <= touched.start or at >= touched.stop:
            assert data == body(seq), seq


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(target=st.sampled_from(["header", "anywhere", "cursor", "checkpoint", "last",
                               "write"]),
       record=st.integers(READ, SENT - 1), offset=st.integers(0, 15),
       garbage=st.binary(min_size=1, max_size=8), step=st.integers(-60, 60),
       how=st.sampled_from(READERS), on_full=st.sampled_from(["block", "overwrite"]))
@pytest.mark.timeout(60)
def test_random_garbage_is_an_error_or_a_consistent_stream(ns, target, record, offset,
                                                           garbage, step, how, on_full):
    """Whatever is scribbled where: no reader hangs, raises anything but CorruptRing,
    hands out a seq out of order or never sent, damages a message the garbage did not
    touch, or moves a cursor past the write position; garbage that makes a header
    another record is always reported; inspect finishes."""
    pub = shmbus.Producer("c", capacity=CAP, on_full=on_full)
    d = shmbus.Consumer("c", durable="d")
    slot = d.slot
    for round_ in range(SENT // 30):
        send(pub, range(round_ * 30, round_ * 30 + 30))
        if round_ * 30 < READ:
            assert len(d.recv_many(30, timeout=0)) == 30
    d.close()
    write, positions = pub.position, _positions()
    m = Mapped("c")
    touched, must_fail, first = range(0), False, READ
    try:
        if target in ("header", "anywhere"):
            at = (positions[record] + offset if target == "header"
                  else (step + 60) * 33 + offset * 7) % CAP
            raw = garbage[:CAP - at]
            if target == "header":
                raw = raw[:layout.RECORD_HEADER - 8 - offset] or raw[:1]
            head = positions[record] % CAP
            before = bytes(m.data[head:head + layout.RECORD_HEADER])
            m.put(at, raw)
            touched = range(at, at + len(raw))
            after = bytes(m.data[head:head + layout.RECORD_HEADER])
            must_fail = target == "header" and _changed_header(before, after)
        elif target == "cursor":
            m.word(layout.slot_word(slot) + layout.S_READ, positions[READ] + step * 4)
            first = None
        elif target == "checkpoint":
            m.word(layout.H_CHECKPOINTS + record % layout.CHECKPOINTS,
                   positions[record] + step * 4)
        elif target == "last":
            m.word(layout.H_LAST, positions[record] + step * 4)
        else:
            m.word(layout.H_WRITE, write + step * 8)
            must_fail = step > 0
        for kwargs in ({"durable": "d"}, {"start": "earliest"}):
            try:
                reader = Reader(how, "c", **kwargs)
            except shmbus.CorruptRing:  # the header does not add up: refused at once
                assert target in ("write", "last")
                continue
            try:
                got, err = reader.read_all()
                if reader.sub.position > m.word(layout.H_WRITE):
                    assert got == [] and err is not None  # it never moved
                if must_fail:
                    assert err is not None, (kwargs, got[-3:])
                lost = reader.sub.lost if on_full == "overwrite" else None
            finally:
                reader.close()
            _check_stream(got, first if "durable" in kwargs else None, touched, lost)
        assert m.word(layout.slot_word(slot) + layout.S_READ) <= max(
            m.word(layout.H_WRITE), positions[READ] + step * 4)
        try:
            shmbus.inspect("c")
        except shmbus.CorruptRing:
            pass
    finally:
        m.close()
        pub.unlink()


@pytest.mark.timeout(10)
def test_a_producer_taking_over_after_a_corrupt_last_record_refuses(ns):
    """The next producer recovers the seq from the last record: garbage there is an
    error, not a seq taken from garbage."""
    with shmbus.Producer("c", capacity=CAP) as pub:
        send(pub, range(3))
    m = Mapped("c")
    try:
        m.field(2 * STRIDE, "length", 0xFFFF_FFF0)
        with pytest.raises(shmbus.CorruptRing, match="corrupt record at position 80"):
            shmbus.Producer("c")
    finally:
        m.close()
        shmbus.unlink("c")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("field, value", [("seq", 1), ("length", 2000),
                                          ("flags", layout.REC_PAD)])
@pytest.mark.parametrize("how", ["recv_many", "recv_array", "forward"])
def test_runs_read_with_numpy_stop_at_a_corrupt_record(ns, how, field, value):
    """recv_many, recv_array and forwarding read runs of records of one size with one
    numpy pass over their headers: a record of the same size with a seq out of turn,
    or another size, or padding, ends the run, and reading it raises."""
    pub = shmbus.Producer("c", capacity=CAP)
    reader = Reader(how, "c")
    m = Mapped("c")
    try:
        send(pub, range(60))
        m.field(40 * STRIDE, field, value)
        got, err = reader.read_all()
        assert got == [(seq, body(seq)) for seq in range(40)]
        assert err is not None and reader.sub.position == 40 * STRIDE
    finally:
        m.close()
        reader.close()
        pub.unlink()


@pytest.mark.timeout(10)
def test_a_resumed_overwrite_cursor_is_not_called_corrupt_after_forwarding(ns):
    """No false alarm: the next seq an overwrite ring's durable cursor stores may lag
    behind its position (take_run released without it); resuming there reads on."""
    pub = shmbus.Producer("c", capacity=CAP, on_full="overwrite")
    try:
        with shmbus.Consumer("c", durable="d") as sub:
            send(pub, range(10))
            assert len(sub.recv_many(3, timeout=0)) == 3
            assert len(sub.recv_many(3, timeout=0)) == 3   # releases 0-2 and seq 3
            assert take_run(sub, 10) is None               # releases 3-5: checked reads
        with shmbus.Consumer("c", durable="d") as sub:
            assert [m.seq for m in sub.recv_many(10, timeout=0)] == [6, 7, 8, 9]
            assert sub.lost == 0
    finally:
        pub.unlink()
