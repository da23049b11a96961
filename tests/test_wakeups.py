"""The wake-up protocol between processes, with nothing else to wake the waiter.

Each waiter here uses a wait strategy whose sleeps last 30 s, and the periodic checks
that would otherwise end a sleep early (a consumer checks every second that its ring
still exists; a blocked producer looks for dead consumers every 50 ms) are stretched to
30 s too: only the other side's post can wake it before the 10 s deadline.  A side that
forgets to post leaves the waiter asleep until that deadline: the test fails (with
``Timeout``, or on the time it took).
"""

from __future__ import annotations

import time

import pytest

import shmbus
import shmbus.slowpath
import shmbus.room

from . import procs as P
from .support import SPAWN, start

pytestmark = pytest.mark.timeout(60)

# Sleep at once, for up to 30 s at a time.
LONG_SLEEPS = shmbus.Sleeping(max_sleep=30.0, long_sleep=30.0)


@pytest.mark.parametrize("how", ["send", "send_many", "claim", "send_array"])
def test_a_send_from_another_process_wakes_a_sleeping_consumer(ns, procs, monkeypatch,
                                                               how):
    monkeypatch.setattr(shmbus.slowpath, "_LINK_CHECK", 30.0)
    shmbus.Producer("wake", capacity=1 << 14).close()
    try:
        with shmbus.Consumer("wake", wait=LONG_SLEEPS) as sub:
            sent = SPAWN.Queue()
            procs.append(start(P.send_when_asleep, ns, "wake", sub.slot, b"wake up", how,
                               sent))
            msg = sub.recv(timeout=10)
            received = time.monotonic()
            assert bytes(msg) == b"wake up"
            latency = received - sent.get(timeout=10)
            assert latency < 5, f"woken {latency:.2f} s after the send: not by its post"
            procs[-1].join(10)
            assert procs[-1].exitcode == 0
    finally:
        shmbus.unlink("wake")


@pytest.mark.parametrize("how", ["recv", "recv_many", "release"])
def test_a_consumer_in_another_process_wakes_a_producer_blocked_on_a_full_ring(
        ns, procs, monkeypatch, how):
    monkeypatch.setattr(shmbus.room, "_RECLAIM_EVERY", 30.0)
    pub = shmbus.Producer("full", capacity=4096, wait=LONG_SLEEPS)
    try:
        go, attached, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
        procs.append(start(P.release_when_producer_sleeps, ns, "full", how, go, attached,
                           results))
        assert attached.wait(30)
        filled = 0
        with pytest.raises(shmbus.Timeout):
            while True:
                pub.send(b"f" * 100, timeout=0)
                filled += 1
        assert filled > 10
        go.set()  # from now on the consumer releases once this producer sleeps
        t0 = time.monotonic()
        pub.send(b"after the wait", timeout=10)
        waited = time.monotonic() - t0
        assert waited < 5, f"send returned after {waited:.2f} s: not woken by a post"
        assert results.get(timeout=10) == b"after the wait"
        procs[-1].join(10)
        assert procs[-1].exitcode == 0
    finally:
        pub.unlink()


# -- waking a waiter that watches its file descriptor (shmbus.wakefifo) -----------------

import os
import select
import signal
import stat

from shmbus import cleanup, naming, wakefifo
from shmbus.layout import S_SLEEP, slot_word
from shmbus.wakeup import FD_WAIT

from .security import OTHER_UID, needs_root, run_as
from .support import await_until


def _fifo_path(ns: str, ring: str, slot: int) -> str:
    return f"{naming.lock_dir(ns)}/{ring}@c{slot}.wake"


@pytest.mark.parametrize("how", ["send", "send_many", "claim", "send_array"])
def test_a_send_from_another_process_makes_an_armed_consumers_descriptor_readable(
        ns, procs, how):
    shmbus.Producer("fd", capacity=1 << 14).close()
    try:
        with shmbus.Consumer("fd", wait=LONG_SLEEPS) as sub:
            fd = sub.fileno()
            assert stat.S_ISFIFO(os.fstat(fd).st_mode)
            assert sub.arm() is False
            epoch = sub._words[slot_word(sub.slot) + S_SLEEP]
            assert epoch & 1 and epoch & FD_WAIT  # asleep, on the FIFO
            sent = SPAWN.Queue()
            procs.append(start(P.send_when_asleep, ns, "fd", sub.slot, b"wake up", how,
                               sent))
            readable, _, _ = select.select([fd], [], [], 10)
            assert readable == [fd], "the send did not write to the armed consumer's FIFO"
            sub.disarm()
            assert not sub._words[slot_word(sub.slot) + S_SLEEP] & 1
            assert select.select([fd], [], [], 0)[0] == []  # read empty
            assert bytes(sub.recv(timeout=0)) == b"wake up"
            sent.get(timeout=10)
            procs[-1].join(10)
            assert procs[-1].exitcode == 0
    finally:
        shmbus.unlink("fd")


def test_a_flowing_pipeline_writes_the_fifo_once_per_sleep_and_never_unarmed(ns):
    with shmbus.Producer("flow", capacity=1 << 16) as pub, shmbus.Consumer("flow") as sub:
        fd = sub.fileno()
        for i in range(100):  # not armed: the producer never touches the FIFO
            pub.send(b"x")
        assert select.select([fd], [], [], 0)[0] == []
        assert len(sub.recv_many(1000, timeout=0)) == 100
        assert sub.arm() is False
        for i in range(100):  # armed: one byte for the whole sleep, not one a message
            pub.send(b"y")
        assert os.read(fd, 4096) == b"\0"
        sub.disarm()
        assert len(sub.recv_many(1000, timeout=0)) == 100
    shmbus.unlink("flow")


def test_arm_says_ready_instead_of_arming_when_a_message_is_there(ns):
    with shmbus.Producer("r", capacity=4096) as pub, shmbus.Consumer("r") as sub:
        pub.send(b"m")
        word = slot_word(sub.slot) + S_SLEEP
        before = sub._words[word]
        assert sub.ready() and sub.arm() is True
        assert sub._words[word] == before  # never went to sleep
    shmbus.unlink("r")


def test_closing_from_another_thread_wakes_a_select_on_the_descriptor(ns):
    import threading
    with shmbus.Producer("r", capacity=4096):
        sub = shmbus.Consumer("r")
        fd = sub.fileno()
        assert sub.arm() is False
        t = threading.Thread(target=sub.close)
        t.start()
        assert select.select([fd], [], [], 10)[0] == [fd]
        t.join(10)
        assert sub.ready()  # closed: a receive would not wait (it raises Closed)
        with pytest.raises(shmbus.Closed):
            sub.recv(timeout=0)
        assert os.path.exists(_fifo_path(ns, "r", sub.slot))  # the armed one frees it
        sub.disarm()
        assert not os.path.exists(_fifo_path(ns, "r", sub.slot))
    shmbus.unlink("r")


def test_the_fifo_goes_when_its_consumer_closes_and_a_slot_reuser_gets_its_own(ns):
    with shmbus.Producer("r", capacity=4096) as pub:
        with shmbus.Consumer("r") as first:
            first.fileno()
            path = _fifo_path(ns, "r", first.slot)
            ino = os.stat(path).st_ino
            assert first.arm() is False
            pub.send(b"1")  # the producer's waker opens and keeps this FIFO
            first.disarm()
        assert not os.path.exists(path)
        with shmbus.Consumer("r") as second:
            assert second.slot == first.slot
            fd = second.fileno()
            assert os.fstat(fd).st_ino != ino or os.stat(path).st_ino == os.fstat(fd).st_ino
            assert second.arm() is False
            pub.send(b"2")  # the cached descriptor has no reader: the waker reopens
            assert select.select([fd], [], [], 10)[0] == [fd]
            second.disarm()
            assert bytes(second.recv(timeout=0)) == b"2"
    shmbus.unlink("r")


def _consumer_with_fifo_then_hang(ns: str, ring: str, ready) -> None:
    sub = shmbus.Consumer(ring, namespace=ns)
    sub.fileno()
    ready.put(sub.slot)
    signal.pause()


@pytest.mark.parametrize("remover", ["gc", "rm"])
def test_gc_and_rm_remove_the_fifo_of_a_dead_consumer_and_keep_a_live_ones(
        ns, procs, remover):
    pub = shmbus.Producer("g", capacity=4096)
    try:
        with shmbus.Consumer("g") as live:
            live.fileno()
            ready = SPAWN.Queue()
            procs.append(start(_consumer_with_fifo_then_hang, ns, "g", ready))
            slot = ready.get(timeout=20)
            dead = _fifo_path(ns, "g", slot)
            assert os.path.exists(dead)
            os.kill(procs[-1].pid, signal.SIGKILL)
            procs[-1].join(10)
            if remover == "gc":
                done = cleanup.collect(ns)
                assert {"kind": "fifo", "name": f"g@c{slot}.wake",
                        "reason": "wake-up FIFO nobody reads (its waiter is gone)"} in done
            else:
                pub.close()
                assert shmbus.unlink("g")
            assert not os.path.exists(dead)
            assert os.path.exists(_fifo_path(ns, "g", live.slot))  # read by a live one
            assert not any(lk["name"].endswith(".wake") for lk in shmbus.list_locks(ns))
    finally:
        pub.close()
        shmbus.unlink("g")


# -- nobody else's FIFO or symlink is ever opened -------------------------------------

def _try_plant(path: str) -> list[str]:
    refused = []
    for make in (lambda: os.mkfifo(path, 0o666), lambda: os.symlink("/tmp", path)):
        try:
            make()
        except PermissionError:
            refused.append("refused")
    return refused


@needs_root
def test_another_user_cannot_plant_a_fifo_or_symlink_in_the_lock_directory(ns):
    with shmbus.Producer("s", capacity=4096), shmbus.Consumer("s") as sub:
        sub.fileno()
        path = _fifo_path(ns, "s", sub.slot + 1)
        assert run_as(OTHER_UID, OTHER_UID, _try_plant, path) == ["refused", "refused"]
        assert run_as(OTHER_UID, OTHER_UID, _try_plant, _fifo_path(ns, "s", sub.slot)) \
            == ["refused", "refused"]
    shmbus.unlink("s")


@needs_root
@pytest.mark.parametrize("plant", ["other user's fifo", "open to all", "symlink"])
def test_a_planted_entry_is_refused_by_the_waiter_and_never_written_by_the_waker(
        ns, tmp_path, plant):
    """As if someone had put it there (a member of a shared namespace's group, or
    root): the consumer refuses to use it; the producer never writes to it."""
    target = str(tmp_path / "target")
    os.mkfifo(target, 0o600)
    watch = os.open(target, os.O_RDWR | os.O_NONBLOCK)
    pub = shmbus.Producer("s", capacity=4096)
    try:
        with shmbus.Consumer("s") as sub:
            path = _fifo_path(ns, "s", sub.slot)
            if plant == "symlink":
                os.symlink(target, path)
            else:
                os.mkfifo(path, 0o600)
                if plant == "open to all":
                    os.chmod(path, 0o666)
                else:
                    os.chown(path, OTHER_UID, OTHER_UID)
            with pytest.raises(shmbus.PermissionDenied):
                sub.fileno()
            # A reader, so that the waker's open succeeds and only its checks refuse:
            probe = None if plant == "symlink" else os.open(path, os.O_RDWR | os.O_NONBLOCK)
            # The waker, told by an epoch that the consumer waits on its FIFO:
            words, word = sub._words, slot_word(sub.slot) + S_SLEEP
            words[word] = (words[word] + 1) | FD_WAIT
            sub._sleeper.flag_buf[sub._sleeper.flag_index] = 1
            pub.send(b"m")  # must not raise either: the message is sent
            words[word] = (words[word] & ~FD_WAIT) + 1
            sub._sleeper.flag_buf[sub._sleeper.flag_index] = 0
            if probe is not None:
                try:
                    assert select.select([probe], [], [], 0)[0] == []  # nothing written
                finally:
                    os.close(probe)
            assert select.select([watch], [], [], 0)[0] == []  # nor through the link
            os.unlink(path)
            assert bytes(sub.recv(timeout=0)) == b"m"
    finally:
        os.close(watch)
        pub.close()
        shmbus.unlink("s")


def _send_twice_with_sigpipe_default(ns: str, ring: str, slot: int) -> None:
    """As the producer, with SIGPIPE's default action (which kills): send once the
    consumer of ``slot`` is armed, then again once it is armed anew (by then its first
    FIFO has no reader: the kept descriptor's write fails with EPIPE)."""
    from shmbus.segment import Segment
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    seg = Segment.open(ns, ring)
    try:
        words, word = seg.words, slot_word(slot) + S_SLEEP
        with shmbus.Producer(ring, namespace=ns) as pub:
            for data in (b"one", b"two"):
                await_until(lambda: words[word] & 1, 20, what="consumer armed")
                armed = words[word]
                pub.send(data)
                await_until(lambda: words[word] != armed, 20, what="consumer woken")
        del words
    finally:
        seg.close()


def test_a_waker_whose_waiter_went_away_does_not_die_of_sigpipe(ns, procs):
    shmbus.Producer("p", capacity=4096).close()
    try:
        first = shmbus.Consumer("p")
        fd = first.fileno()
        assert first.arm() is False
        procs.append(start(_send_twice_with_sigpipe_default, ns, "p", first.slot))
        assert select.select([fd], [], [], 20)[0] == [fd]
        first.disarm()
        assert bytes(first.recv(timeout=0)) == b"one"
        first.close()  # its FIFO loses its reader; the producer keeps a descriptor of it
        with shmbus.Consumer("p") as second:
            assert second.slot == first.slot
            fd = second.fileno()
            assert second.arm() is False
            assert select.select([fd], [], [], 20)[0] == [fd]
            second.disarm()
            assert bytes(second.recv(timeout=0)) == b"two"
        procs[-1].join(20)
        assert procs[-1].exitcode == 0, f"the producer died: exit {procs[-1].exitcode}"
    finally:
        shmbus.unlink("p")


SHARED_GID = 1500  # as in test_security_attacks: THIRD_UID is a member


@needs_root
def test_in_a_shared_namespace_the_fifo_is_the_groups_and_a_members_symlink_is_refused(
        ns, monkeypatch):
    from .security import THIRD_UID
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    with shmbus.Producer("s", capacity=4096), shmbus.Consumer("s") as sub:
        st = os.fstat(sub.fileno())
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == SHARED_GID
        planted = _fifo_path(ns, "s", sub.slot + 1)
        run_as(THIRD_UID, SHARED_GID, os.symlink, "/tmp", planted)  # members may write
        try:
            with shmbus.Consumer("s") as other:
                assert other.slot == sub.slot + 1
                with pytest.raises(shmbus.PermissionDenied, match="symbolic link"):
                    other.fileno()
        finally:
            os.unlink(planted)
    shmbus.unlink("s")
