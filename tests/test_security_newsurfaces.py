"""Attacks on the surfaces added on 2026-11-29 (wake-up FIFOs, fan-in, objects, metrics,
the bridge, gc and rm of the new objects), from a second uid
(:func:`tests.security.run_as`), with symlinks, FIFOs, wrong types and modes.

Who attacks: ``OTHER_UID``, a user outside the namespace (a private namespace: he can
only plant names directly in ``/dev/shm``), or ``THIRD_UID``, a member of the group a
namespace is shared with (he can also add, remove and replace entries of its lock
directory, which is group-writable without the sticky bit).  Sharing means trusting a
member with the ring's contents; it never means that a member runs code in our process
(pickle) or makes us follow a link, block, or remove what is not ours.
"""

from __future__ import annotations

import os
import stat

import pytest

import shmbus
from shmbus import fanin, naming, wakefifo

from .nats_server import nats_server  # noqa: F401 - a fixture
from .security import (OTHER_GID, OTHER_UID, THIRD_UID, needs_root, purge, run_as)
from .support import await_until

pytestmark = [needs_root, pytest.mark.timeout(30)]

SHARED_GID = 1500  # the group a shared namespace is shared with; THIRD_UID is a member
CAP = 1 << 16


class _Pwned:
    """Unpickling this makes directory ``marker``: proof that code of the sender ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _ring_bytes_holding(obj: object, scratch_ns: str) -> bytes:
    """The bytes of a ring (made in ``scratch_ns``, then removed) whose one message is
    ``obj`` sent with ``send_obj``: what an attacker running shmbus himself would copy
    under a name of ours."""
    with shmbus.Producer("scratch", capacity=CAP, namespace=scratch_ns) as pub:
        pub.send_obj(obj)
    try:
        with open(naming.segment_path(scratch_ns, "scratch"), "rb") as f:
            return f.read()
    finally:
        shmbus.unlink("scratch", namespace=scratch_ns)


def _plant(path: str, content: bytes, mode: int) -> None:
    """(As the attacker) create ``path`` with ``content`` and ``mode``."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
    finally:
        os.close(fd)


def _symlink(target: str, path: str) -> None:
    os.symlink(target, path)


def _mkfifo(path: str, mode: int) -> None:
    os.mkfifo(path, mode)
    os.chmod(path, mode)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- fan-in: a sender ring planted by another user ------------------------------------


def test_a_sender_ring_planted_by_another_user_is_never_read(ns, tmp_path):
    """Another user creates ``{ns}.X.from.evil`` (a valid ring, mode 0666, holding a
    pickle that runs code): the Inbox refuses it (``inbox.refused`` says why), hands
    out only what our Outbox sent, and neither it nor ``shmbus gc`` removes it."""
    marker = str(tmp_path / "pwned")
    planted = naming.segment_path(ns, "X.from.evil")
    content = _ring_bytes_holding(_Pwned(marker), ns + "s")
    run_as(OTHER_UID, OTHER_GID, _plant, planted, content, 0o666)
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            with shmbus.Outbox("X", sender="good") as box:
                box.send_obj({"n": 1}, timeout=5)
                assert inbox.recv_obj(timeout=5) == {"n": 1}
                with pytest.raises(shmbus.Timeout):
                    inbox.recv_obj(timeout=0.3)
            assert "X.from.evil" in inbox.refused
            assert inbox.senders == ["good"]
        assert not os.path.exists(marker)
        from shmbus.cleanup import collect
        collect(ns)
        assert os.lstat(planted).st_uid == OTHER_UID  # still there: not ours to remove
    finally:
        _remove(planted)
        purge(ns)


@pytest.mark.parametrize("kind", ["file", "symlink", "fifo"])
def test_a_registry_planted_by_another_user_is_refused_and_left_alone(ns, kind, tmp_path):
    """Another user puts a registry (a file of his, a symlink to a file of ours, a FIFO
    nobody writes) under ``{ns}.X@inbox``: the Inbox and the Outbox refuse it at once
    (never blocking on the FIFO); gc and ``shmbus rm X`` leave it (and the symlink's
    target) alone."""
    from click.testing import CliRunner

    from shmbus.cleanup import collect
    from shmbus.tools.cli import main
    path = fanin.registry_path(ns, "X")
    target = str(tmp_path / "ours")
    with open(target, "wb") as f:
        f.write(b"\0" * 128)
    os.chmod(tmp_path, 0o755)
    if kind == "file":
        run_as(OTHER_UID, OTHER_GID, _plant, path, b"\0" * 128, 0o666)
    elif kind == "fifo":
        run_as(OTHER_UID, OTHER_GID, _mkfifo, path, 0o666)
    else:
        run_as(OTHER_UID, OTHER_GID, _symlink, target, path)
    try:
        with pytest.raises(shmbus.PermissionDenied):
            shmbus.Inbox("X")
        with shmbus.Outbox("X") as box, pytest.raises(shmbus.PermissionDenied):
            box.send(b"x", timeout=1)
        collect(ns)
        r = CliRunner().invoke(main, ["rm", "X"])
        assert "Traceback" not in r.output, r.output
        st = os.lstat(path)
        assert st.st_uid == OTHER_UID
        assert os.path.getsize(target) == 128
    finally:
        _remove(path)
        purge(ns)


def test_rm_of_an_inbox_never_removes_a_sender_ring_of_another_user(ns):
    """``shmbus rm X`` removes our Inbox's rings and registry, and leaves a sender ring
    another user planted among them (it is not ours: PermissionDenied names it)."""
    from click.testing import CliRunner

    from shmbus.tools.cli import main
    planted = naming.segment_path(ns, "X.from.evil")
    with shmbus.Inbox("X", capacity=CAP), shmbus.Outbox("X", sender="good") as box:
        box.send(b"x", timeout=5)
    run_as(OTHER_UID, OTHER_GID, _plant, planted, b"\0" * 4096, 0o666)
    try:
        r = CliRunner().invoke(main, ["rm", "X"])
        assert "Traceback" not in r.output, r.output
        assert os.lstat(planted).st_uid == OTHER_UID
    finally:
        _remove(planted)
        purge(ns)


# -- objects: pickle from a member of a shared namespace never runs here ---------------


def _send_obj_as_member(name: str, obj: object) -> None:
    with shmbus.Outbox(name, sender="member") as box:
        box.send_obj(obj, timeout=10)


def test_an_inbox_on_a_shared_namespace_refuses_a_members_pickle(ns, monkeypatch,
                                                                  tmp_path):
    """A member's Outbox sends a pickle that runs code: the Inbox's ``recv_obj``
    refuses it (PermissionDenied), blocking and asyncio alike; json still passes."""
    import asyncio

    import shmbus.asyncio
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    marker = str(tmp_path / "pwned")
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            run_as(THIRD_UID, SHARED_GID, _send_obj_as_member, "X", _Pwned(marker))
            with pytest.raises(shmbus.PermissionDenied):
                inbox.recv_obj(timeout=5)
        assert not os.path.exists(marker)

        inbox = shmbus.asyncio.Inbox("X", capacity=CAP)
        try:
            run_as(THIRD_UID, SHARED_GID, _send_obj_as_member, "X", _Pwned(marker))
            with pytest.raises(shmbus.PermissionDenied):
                asyncio.run(inbox.recv_obj(timeout=5))
        finally:
            inbox.close()
        assert not os.path.exists(marker)
    finally:
        purge(ns)


# -- fan-in: a corrupt registry ---------------------------------------------------------


@pytest.mark.parametrize("capacity", [3, 1 << 63])
def test_an_outbox_says_a_corrupt_registry_is_corrupt(ns, capacity):
    """A registry whose capacity word no Inbox wrote (damaged, or written by a member
    of a shared namespace) is a ShmbusError for the Outbox, never a ValueError (a
    programming error: a retry loop would not expect it)."""
    with shmbus.Inbox("X", capacity=CAP) as inbox:
        inbox._words[fanin.W_CAPACITY] = capacity
        with shmbus.Outbox("X") as box:
            with pytest.raises(shmbus.ShmbusError):
                box.send(b"x", timeout=2)


# -- wake-up FIFOs: a member replaces the FIFO a producer writes to -------------------


def _replace_entry(namespace: str, name: str, kind: str, target: str) -> None:
    """(As a member: the shared lock directory is group-writable, not sticky) remove
    entry ``name`` of the lock directory and put ``kind`` in its place."""
    directory = naming.lock_dir(namespace)
    os.unlink(f"{directory}/{name}")
    if kind == "symlink":
        os.symlink(target, f"{directory}/{name}")
    elif kind == "file":
        fd = os.open(f"{directory}/{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o660)
        os.write(fd, b"member's file")
        os.close(fd)
    else:
        os.mkfifo(f"{directory}/{name}", 0o660)


def _fill(fifo: str) -> tuple[int, int]:
    """Hold FIFO ``fifo`` open for reading, never read, and fill it: (reader, writer)."""
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"\0" * 65536)
    except BlockingIOError:
        pass
    return r, w


def _unread(fd: int) -> bytes:
    try:
        return os.read(fd, 1)  # b"": no writer at all
    except BlockingIOError:
        return b""  # a writer, nothing written


@pytest.mark.parametrize("kind", ["symlink", "file", "full-fifo"])
@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_a_replaced_wake_fifo_is_never_followed_written_or_waited_on(
        ns, monkeypatch, tmp_path, kind, side):
    """A member replaces the wake-up FIFO of an armed waiter (a consumer's, or a
    producer's waiting for room) with a symlink to a file of ours, a file of his, or a
    FIFO someone holds open and full: the waking side never writes through the link
    or into the file, and never blocks on the full FIFO."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    ours = tmp_path / "ours"
    ours.write_bytes(b"our data")
    our_fifo = str(tmp_path / "our-fifo")  # a FIFO of ours that a process of ours reads
    os.mkfifo(our_fifo, 0o600)
    reader = os.open(our_fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.chmod(tmp_path, 0o755)
    held: tuple[int, int] | None = None
    try:
        with shmbus.Producer("r", capacity=CAP) as pub, shmbus.Consumer("r") as sub:
            waiter = sub._sleeper if side == "consumer" else pub._sleeper
            waiter.fileno()
            name = wakefifo.name_for(waiter.sem_name)[1]
            run_as(THIRD_UID, SHARED_GID, _replace_entry, ns, name, kind,
                   our_fifo if kind == "symlink" else str(ours))
            path = f"{naming.lock_dir(ns)}/{name}"
            if kind == "full-fifo":
                held = _fill(path)
            if side == "consumer":
                assert not sub.arm()
                pub.send(b"x", timeout=5)  # wakes the armed consumer
                sub.disarm()
            else:
                assert not waiter.arm(lambda: False)
                pub.send(b"x" * 100, timeout=5)
                sub.recv(timeout=5)
                sub.release()  # wakes the armed producer
                waiter.disarm()
            assert ours.read_bytes() == b"our data"
            assert _unread(reader) == b""  # nothing was written through the link
            if kind == "file":
                with open(path, "rb") as f:
                    assert f.read() == b"member's file"
    finally:
        os.close(reader)
        if held is not None:
            os.close(held[0])
            os.close(held[1])
        purge(ns)


def _plant_in_lock_dir(namespace: str, name: str, kind: str, target: str) -> None:
    directory = naming.lock_dir(namespace)
    if kind == "symlink":
        os.symlink(target, f"{directory}/{name}")
    else:
        os.mkfifo(f"{directory}/{name}", 0o666)


@pytest.mark.parametrize("kind", ["symlink", "fifo-for-everyone"])
def test_a_wake_fifo_planted_before_the_waiter_is_refused_and_left(ns, monkeypatch,
                                                                  tmp_path, kind):
    """A member plants a symlink (to a FIFO of ours elsewhere) or a FIFO open to every
    user under a consumer's FIFO name before it first waits on a descriptor: the
    consumer refuses it (PermissionDenied), removes nothing, follows nothing; gc and
    rm leave it too."""
    from shmbus.cleanup import collect
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    target = str(tmp_path / "fifo")
    os.mkfifo(target, 0o600)
    try:
        with shmbus.Producer("r", capacity=CAP), shmbus.Consumer("r") as sub:
            name = wakefifo.name_for(sub._sleeper.sem_name)[1]
            run_as(THIRD_UID, SHARED_GID, _plant_in_lock_dir, ns, name, kind, target)
            with pytest.raises(shmbus.PermissionDenied):
                sub.fileno()
            path = f"{naming.lock_dir(ns)}/{name}"
            assert os.lstat(path).st_uid == THIRD_UID
            collect(ns)
            assert os.lstat(path).st_uid == THIRD_UID
        shmbus.unlink("r")  # shmbus rm: the ring and what of its companions is ours
        assert os.lstat(path).st_uid == THIRD_UID
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    finally:
        purge(ns)


# -- fan-in: entries another user plants cost the Inbox one look each, not one a second


def _plant_many(namespace: str, names: list[str]) -> None:
    for name in names:
        _plant(naming.segment_path(namespace, name), b"", 0o666)


def _replant(namespace: str, name: str) -> None:
    path = naming.segment_path(namespace, name)
    os.unlink(path)
    _plant(path, b"", 0o666)


def test_entries_another_user_planted_are_opened_once_not_at_every_rescan(
        ns, monkeypatch):
    """Another user plants sender-ring names for our Inbox (thousands cost it half a
    second of every second when each rescan opens each again): an entry refused once
    is not opened again while it is the same file; a replaced one is, and one that is
    gone is forgotten."""
    from shmbus import inbox as inbox_module
    names = [f"X.from.evil{i}" for i in range(3)]
    run_as(OTHER_UID, OTHER_GID, _plant_many, ns, names)
    opened: list[str] = []
    real = inbox_module.Consumer

    def counting(ring, **kwargs):
        opened.append(ring)
        return real(ring, **kwargs)
    monkeypatch.setattr(inbox_module, "Consumer", counting)
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            assert sorted(opened) == names and sorted(inbox.refused) == names
            opened.clear()
            inbox._maintain()
            assert opened == []  # nothing changed: nothing opened again
            run_as(OTHER_UID, OTHER_GID, _replant, ns, names[0])
            _remove(naming.segment_path(ns, names[1]))
            inbox._maintain()
            assert opened == [names[0]]
            assert sorted(inbox.refused) == [names[0], names[2]]
    finally:
        purge(ns)


# -- wake-up FIFOs: a byte nobody should have written never makes a waiter spin --------


def _write_byte(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"\0")
    finally:
        os.close(fd)


def _write_byte_as(who: str, path: str) -> None:
    """A member writes the byte, or (a wake-up meant for an earlier arming, written
    late) a producer of ours."""
    if who == "member":
        run_as(THIRD_UID, SHARED_GID, _write_byte, path)
    else:
        _write_byte(path)


class _Counting:
    """Wraps a poll or epoll object, counting its polls."""

    def __init__(self, inner) -> None:
        self.inner, self.polls = inner, 0

    def poll(self, *args):
        self.polls += 1
        return self.inner.poll(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("who", ["member", "stale wake-up"])
def test_a_byte_a_member_writes_into_a_wake_fifo_never_makes_a_poller_spin(
        ns, monkeypatch, who):
    """A member writes one byte into the wake-up FIFO of a consumer a Poller waits on
    (a producer of ours writing late, for an earlier arming, does the same): the Poller
    reads it empty and sleeps again, instead of returning from poll(2) at once until
    its deadline (forever, with no timeout)."""
    if who == "member":
        monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    try:
        with shmbus.Producer("r", capacity=CAP), shmbus.Consumer("r") as sub:
            poller = shmbus.Poller()
            poller.register(sub)
            name = wakefifo.name_for(sub._sleeper.sem_name)[1]
            _write_byte_as(who, f"{naming.lock_dir(ns)}/{name}")
            poller._poll = counting = _Counting(poller._poll)
            assert poller.poll(timeout=0.6) == []
            assert counting.polls < 20, f"{counting.polls} polls in 0.6 s: it spins"
    finally:
        purge(ns)


@pytest.mark.parametrize("who", ["member", "stale wake-up"])
def test_a_byte_a_member_writes_into_a_wake_fifo_never_makes_an_inbox_spin(
        ns, monkeypatch, who):
    """The same for an Inbox waiting on its senders' FIFOs and its doorbell."""
    if who == "member":
        monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            inbox.fileno()
            inbox._epoll = counting = _Counting(inbox._epoll)
            name = wakefifo.name_for(inbox._bell.sem_name)[1]
            _write_byte_as(who, f"{naming.lock_dir(ns)}/{name}")
            with pytest.raises(shmbus.Timeout):
                inbox.recv(timeout=0.6)
            assert counting.polls < 20, f"{counting.polls} polls in 0.6 s: it spins"
    finally:
        purge(ns)


@pytest.mark.parametrize("who", ["member", "stale wake-up"])
def test_a_byte_a_member_writes_into_a_wake_fifo_never_makes_asyncio_spin(
        ns, monkeypatch, who):
    """The same for a ``shmbus.asyncio`` consumer awaiting its FIFO in the loop."""
    import asyncio

    import shmbus.asyncio
    if who == "member":
        monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    try:
        with shmbus.Producer("r", capacity=CAP):
            sub = shmbus.asyncio.Consumer("r")
            try:
                looks = []
                real = sub.sync.ready
                sub.sync.ready = lambda: looks.append(1) or real()
                name = wakefifo.name_for(sub.sync._sleeper.sem_name)[1]
                _write_byte_as(who, f"{naming.lock_dir(ns)}/{name}")
                with pytest.raises(shmbus.Timeout):
                    asyncio.run(sub.recv(timeout=0.6))
                assert len(looks) < 40, f"{len(looks)} looks in 0.6 s: it spins"
            finally:
                sub.close()
    finally:
        purge(ns)


# -- the bridge never relays a ring of another user -------------------------------------


@pytest.mark.parametrize("direction", ["out", "in"])
def test_a_bridge_never_relays_a_ring_another_user_made(ns, direction, monkeypatch):
    """Another user makes ring ``r`` of our namespace first (a valid ring, 0666): a
    bridge out never reads it, a bridge in never writes it; both stop with
    PermissionDenied before they connect to any server."""
    pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")
    from shmbus.bridge import Inbound, Outbound
    from shmbus.bridge.relay import Relay
    path = naming.segment_path(ns, "r")
    content = _ring_bytes_holding({"secret": 1}, ns + "s")
    run_as(OTHER_UID, OTHER_GID, _plant, path, content, 0o666)
    connects = []

    async def no_connect(self, on_lost):
        connects.append(self)
        return None
    monkeypatch.setattr(Relay, "_connect", no_connect)
    try:
        relay = (Outbound("r", "nats://127.0.0.1:1", "s.out") if direction == "out" else
                 Inbound("nats://127.0.0.1:1", "s.in", "r", capacity=CAP))
        with pytest.raises(shmbus.PermissionDenied):
            relay.run(duration=5)
        assert connects == []
        with open(path, "rb") as f:
            assert f.read() == content  # no slot taken, nothing written
    finally:
        _remove(path)
        purge(ns)


def test_a_bridge_out_names_the_ring_it_reads_not_a_later_one_of_that_name(
        ns, monkeypatch):
    """The ring is removed and made again under its name just after the bridge opened
    it (by a process of ours, or a member of a shared namespace): the bridge's
    ``Nats-Msg-Id`` identity is still the one of the ring it reads.  (Another
    identity would make a later bridge of the new ring skip that many of its
    messages as already stored.)"""
    pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")
    from shmbus import layout
    from shmbus.bridge import Outbound, outbound
    from shmbus.bridge.relay import Relay
    named: list[int] = []
    read: list[int] = []
    real_identity, real_consumer = outbound.ring_identity, shmbus.Consumer
    monkeypatch.setattr(outbound, "ring_identity",
                        lambda n, r, created: named.append(created) or
                        real_identity(n, r, created))

    def replaced_meanwhile(ring, **kwargs):
        consumer = real_consumer(ring, **kwargs)
        read.append(layout.read_header(consumer._seg.buf)["created_at_ns"])
        shmbus.unlink(ring)
        shmbus.Producer(ring, capacity=CAP).close()
        return consumer
    monkeypatch.setattr(shmbus, "Consumer", replaced_meanwhile)

    async def stop_instead(self, on_lost):
        self._stop.set()
        return None
    monkeypatch.setattr(Relay, "_connect", stop_instead)
    shmbus.Producer("r", capacity=CAP).close()
    try:
        Outbound("r", "nats://127.0.0.1:1", "s.out").run(duration=5)
        assert len(read) == 1 and named == read
    finally:
        purge(ns)


# -- shmbus metrics ---------------------------------------------------------------------


def _scrape(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_metrics_listen_on_loopback_and_export_nothing_of_another_users_ring(ns):
    """``shmbus metrics`` listens on 127.0.0.1 unless told otherwise, and a ring another
    user planted in our namespace (claiming 12345 messages) is counted as skipped,
    its figures never exported."""
    pytest.importorskip("prometheus_client", reason="the metrics extra")
    from shmbus import layout
    from shmbus.tools import metrics
    addr = next(p for p in metrics.command.params if p.name == "addr")
    assert addr.default == "127.0.0.1"
    path = naming.segment_path(ns, "planted")
    content = bytearray(_ring_bytes_holding({"x": 1}, ns + "s"))
    header = layout.read_header(content)
    assert header["write"] > 0
    run_as(OTHER_UID, OTHER_GID, _plant, path, bytes(content), 0o666)
    server, thread = metrics.serve(ns, "127.0.0.1", 0)
    try:
        with shmbus.Producer("ours", capacity=CAP) as pub:
            pub.send(b"x")
            text = _scrape(f"http://127.0.0.1:{server.server_address[1]}/metrics")
        assert 'ring="ours"' in text
        assert 'ring="planted"' not in text
        assert f'shmbus_skipped_entries{{namespace="{ns}"}} 1.0' in text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        _remove(path)
        purge(ns)


# -- fan-in: another user squats the ring name of our default sender id ---------------


def test_another_user_cannot_stop_our_outbox_by_squatting_its_default_ring(ns):
    """The default sender id PID.STARTTIME is public (/proc): a ring planted under it
    makes the Outbox take an unpredictable id instead of being refused for good."""
    path = naming.segment_path(ns, fanin.sender_ring("X", fanin.current_sender_id()))
    run_as(OTHER_UID, OTHER_GID, _plant, path, b"", 0o666)
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox, shmbus.Outbox("X") as box:
            box.send(b"hello", timeout=5)
            assert bytes(inbox.recv(timeout=5)) == b"hello"
    finally:
        _remove(path)
        purge(ns)


# -- objects through a bridge: the subject's publishers write the ring ------------------


def _publish(url: str, subject: str, payload: bytes) -> None:
    import asyncio

    import nats

    async def send() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="s-" + subject, subjects=[subject])
            await js.publish(subject, payload)
        finally:
            await nc.close()
    asyncio.run(send())


def test_bridge_in_keeps_pickles_from_outside_out_of_the_ring(ns, nats_server, tmp_path):
    """A ring that ``bridge in`` writes would hold what anyone allowed to publish on
    the subject sent (other hosts, other users of the NATS account), and recv_obj
    unpickles what is in a ring: by default the bridge refuses pickled object frames
    (counted, never written) and lets everything else through, object frames of
    other codecs included; ``accept_pickle=True`` lets them in."""
    pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")
    from shmbus.bridge import Inbound
    from shmbus.objects import frame_bytes
    marker = str(tmp_path / "pwned")
    for payload in (bytes(frame_bytes(_Pwned(marker))), bytes(frame_bytes({"a": 1}, codec="json")),
                    bytes(frame_bytes({"b": 2}))):
        _publish(nats_server.url, "jobs", payload)
    try:
        with Inbound(nats_server.url, "jobs", "r", capacity=CAP) as inbound:
            await_until(lambda: inbound.stats["written"] + inbound.stats["refused"] == 3,
                        20, what="the three messages relayed or refused")
            assert inbound.stats["refused"] == 2 and inbound.stats["written"] == 1
            with shmbus.Consumer("r", start="earliest") as sub:
                assert sub.recv_obj(timeout=5) == {"a": 1}
                assert sub.try_recv() is None
        assert not os.path.exists(marker)
        shmbus.unlink("r")
        with Inbound(nats_server.url, "jobs", "r", capacity=CAP, accept_pickle=True,
                     durable="trusting") as inbound:
            await_until(lambda: inbound.stats["written"] == 3, 20,
                        what="the three messages relayed")
            assert inbound.stats["refused"] == 0
            with shmbus.Consumer("r", start="earliest") as sub:
                first = sub.recv(timeout=5)
                assert bytes(first)[:4] == b"SBOF"  # the pickle is there, as asked
                assert sub.recv(timeout=5) and sub.recv_obj(timeout=5) == {"b": 2}
    finally:
        purge(ns)


# -- fan-in: what an Inbox takes for a sender ring -------------------------------------


def test_an_inbox_never_removes_a_ring_whose_other_durable_cursors_have_not_read_it(ns):
    """A ring of ours named like a sender ring (``X.from.eu``) but with a durable
    consumer of its own: once its producer is gone and the Inbox has read it all, the
    Inbox leaves it, as gc does, for the durable consumer that has not read it."""
    with shmbus.Producer("X.from.eu", capacity=CAP) as pub:
        shmbus.Consumer("X.from.eu", durable="billing").close()
        for i in range(3):
            pub.send(b"%d" % i)
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            assert [bytes(inbox.recv(timeout=5)) for _ in range(3)] == [b"0", b"1", b"2"]
            with pytest.raises(shmbus.Timeout):
                inbox.recv(timeout=0.1)
            inbox._maintain()
        with shmbus.Consumer("X.from.eu", durable="billing") as billing:
            assert [bytes(billing.recv(timeout=5)) for _ in range(3)] == \
                [b"0", b"1", b"2"]
    finally:
        purge(ns)


def test_an_inbox_never_takes_the_sender_rings_of_an_inbox_named_below_it(ns):
    """Inbox ``X.from.a`` (an inbox name may hold dots) has sender ring
    ``X.from.a.from.s``: while it is closed, Inbox ``X`` neither receives its messages
    nor removes its ring; the next ``X.from.a`` receives them."""
    with shmbus.Inbox("X.from.a", capacity=CAP), \
            shmbus.Outbox("X.from.a", sender="s") as box:
        box.send(b"for X.from.a", timeout=5)
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            with pytest.raises(shmbus.Timeout):
                inbox.recv(timeout=0.3)
            assert inbox.senders == []
        with shmbus.Inbox("X.from.a", capacity=CAP) as inbox:
            assert bytes(inbox.recv(timeout=5)) == b"for X.from.a"
        with pytest.raises(shmbus.InvalidName):
            shmbus.Outbox("X", sender="a.from.s")  # its ring would be X.from.a's
    finally:
        purge(ns)


def _consumer_name(namespace: str, ring: str) -> str:
    from shmbus.bridge.headers import consumer_name
    return consumer_name(namespace, ring)


def test_bridges_in_of_two_users_never_share_a_jetstream_consumer(ns):
    """Two users of one host each run ``bridge in`` into ring ``orders`` of a namespace
    they both name ``shmbus`` (explicit names are private per user, and may collide):
    their default JetStream consumers differ.  (One name would make each bridge
    delete and recreate the other's consumer at every connect, and the two would
    fetch from one cursor: each user's ring would get part of the subject, the rest
    relayed into the other user's ring.)"""
    pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")
    mine = _consumer_name("shmbus", "orders")
    theirs = run_as(OTHER_UID, OTHER_GID, _consumer_name, "shmbus", "orders")
    assert mine != theirs
