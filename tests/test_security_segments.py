"""Segments and semaphores in /dev/shm that another user made first (issue 12, hole 4).

``/dev/shm`` is world-writable: another user can create a ring's segment (or a
symbolic link, or a semaphore) under our name before we do.  shmbus must refuse what
is not ours with :class:`shmbus.PermissionDenied` (also a ``PermissionError``), never
attach to it, never write through a link.
"""

from __future__ import annotations

import os
import stat

import posix_ipc
import psutil
import pytest

import shmbus
from shmbus import layout, liveness, naming
from shmbus.segment import Segment
from shmbus.slots import SlotTable

from .security import (OTHER_GID, OTHER_UID, THIRD_GID, THIRD_UID, needs_root, purge,
                       run_as)

pytestmark = [needs_root, pytest.mark.timeout(30)]

CAP = 1 << 16
SECRET = b"card 4111-1111-1111-1111"


def _valid_ring_bytes(capacity: int = CAP) -> bytes:
    """The bytes of a freshly created, empty shmbus ring (what an attacker who runs
    shmbus himself would have in his squatted segment)."""
    size = layout.segment_size(capacity, layout.DEFAULT_SLOTS)
    buf = bytearray(size)
    layout.init_header(memoryview(buf), capacity=capacity, flags=0,
                       slot_count=layout.DEFAULT_SLOTS, created_at_ns=1)
    return bytes(buf)


def _squat(path: str, content: bytes, mode: int) -> None:
    """(As the attacker) create ``path`` first, world-readable and writable."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _semaphore_path(name: str) -> str:
    return f"{naming.SHM_DIR}/sem.{name[1:]}"


def _make_semaphore(name: str, mode: int) -> None:
    sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode, 0)
    sem.close()
    os.chmod(_semaphore_path(name), mode)  # whatever the umask


def test_squatted_segment_is_refused_and_nothing_is_sent_to_it(ns):
    path = naming.segment_path(ns, "orders")
    run_as(OTHER_UID, OTHER_GID, _squat, path, _valid_ring_bytes(), 0o666)
    try:
        with pytest.raises(shmbus.PermissionDenied) as caught:
            with shmbus.Producer("orders", capacity=CAP, namespace=ns) as pub:
                pub.send(SECRET)
        err = caught.value
        assert isinstance(err, PermissionError) and isinstance(err, shmbus.ShmbusError)
        assert err.path == path and err.owner == OTHER_UID
        assert path in str(err) and f"uid {OTHER_UID}" in str(err)
        assert "another namespace" in str(err)
        # What the attacker can read holds nothing of ours.
        assert SECRET not in run_as(OTHER_UID, OTHER_GID, _read, path)
        with pytest.raises(shmbus.PermissionDenied):
            shmbus.Consumer("orders", namespace=ns)
    finally:
        _remove(path)
        shmbus.unlink("orders", namespace=ns)


def test_foreign_private_segment_is_a_permission_error_for_a_normal_user(ns):
    """A segment of uid A with mode 0600: uid B cannot even open it; that is a
    PermissionDenied naming the owner, not a bare ShmbusError or a traceback."""
    path = naming.segment_path(ns, "orders")
    run_as(OTHER_UID, OTHER_GID, _squat, path, _valid_ring_bytes(), 0o600)

    def consume():
        try:
            shmbus.Consumer("orders", namespace=ns)
        except Exception as e:  # noqa: BLE001 - the test looks at what it was
            return type(e).__name__, isinstance(e, PermissionError), getattr(e, "owner", None)
        return "no error", False, None

    try:
        name, is_permission_error, owner = run_as(THIRD_UID, THIRD_GID, consume)
        assert (name, is_permission_error, owner) == ("PermissionDenied", True, OTHER_UID)
    finally:
        _remove(path)


def test_symlink_in_place_of_a_segment_is_never_followed(ns, tmp_path):
    victim = tmp_path / "passwd"
    victim.write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    os.chmod(tmp_path, 0o755)
    dangling = tmp_path / "created-by-root"
    path = naming.segment_path(ns, "orders")
    other = naming.segment_path(ns, "invoices")
    run_as(OTHER_UID, OTHER_GID, os.symlink, str(victim), path)
    run_as(OTHER_UID, OTHER_GID, os.symlink, str(dangling), other)
    try:
        for ring in ("orders", "invoices"):
            with pytest.raises(shmbus.PermissionDenied) as caught:
                shmbus.Producer(ring, capacity=CAP, namespace=ns)
            assert "symbolic link" in str(caught.value)
            with pytest.raises(shmbus.PermissionDenied):
                shmbus.Consumer(ring, namespace=ns)
        assert victim.read_bytes() == b"root:x:0:0::/root:/bin/sh\n"
        assert not dangling.exists()
        with pytest.raises(shmbus.PermissionDenied):  # rm removes only what is ours
            shmbus.unlink("orders", namespace=ns)
        assert os.path.islink(path)
    finally:
        _remove(path)
        _remove(other)
        shmbus.unlink("orders", namespace=ns)
        shmbus.unlink("invoices", namespace=ns)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606])
def test_our_segment_with_extra_permission_bits_is_refused(ns, mode):
    path = naming.segment_path(ns, "orders")
    with shmbus.Producer("orders", capacity=CAP, namespace=ns):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    try:
        os.chmod(path, mode)
        with pytest.raises(shmbus.PermissionDenied) as caught:
            shmbus.Consumer("orders", namespace=ns)
        assert oct(mode) in str(caught.value) and caught.value.found == mode
    finally:
        shmbus.unlink("orders", namespace=ns)  # a damaged ring of ours can be removed
    assert not os.path.exists(path)


def test_segments_are_created_0600_whatever_the_umask(ns):
    old = os.umask(0)
    try:
        with shmbus.Producer("orders", capacity=CAP, namespace=ns) as pub:
            with shmbus.Consumer("orders", namespace=ns):
                pub.send(b"x")
            assert stat.S_IMODE(os.stat(naming.segment_path(ns, "orders")).st_mode) == 0o600
            for entry in os.listdir(naming.SHM_DIR):
                if entry.startswith(f"sem.{ns}.orders@"):
                    mode = stat.S_IMODE(os.stat(f"{naming.SHM_DIR}/{entry}").st_mode)
                    assert mode == 0o600, (entry, oct(mode))
    finally:
        os.umask(old)
        shmbus.unlink("orders", namespace=ns)


@pytest.mark.parametrize("which", ["consumer", "producer"])
def test_foreign_semaphore_is_refused(ns, which):
    """A wake-up semaphore made first by another user (mode 0666): the producer or
    consumer that would sleep on it refuses it instead of sharing its wake-ups."""
    name = (naming.consumer_semaphore_name(ns, "orders", 0) if which == "consumer"
            else naming.producer_semaphore_name(ns, "orders"))
    run_as(OTHER_UID, OTHER_GID, _make_semaphore, name, 0o666)
    try:
        if which == "consumer":
            with shmbus.Producer("orders", capacity=CAP, namespace=ns):
                with pytest.raises(shmbus.PermissionDenied) as caught:
                    shmbus.Consumer("orders", namespace=ns)
        else:
            with pytest.raises(shmbus.PermissionDenied) as caught:
                shmbus.Producer("orders", capacity=CAP, namespace=ns)
        err = caught.value
        assert isinstance(err, PermissionError)
        assert err.path == _semaphore_path(name) and err.owner == OTHER_UID
        # Removing the ring leaves the other user's semaphore alone (and does not crash).
        shmbus.unlink("orders", namespace=ns)
        assert os.stat(_semaphore_path(name)).st_uid == OTHER_UID
    finally:
        _remove(_semaphore_path(name))
        shmbus.unlink("orders", namespace=ns)


def test_a_refused_consumer_leaves_no_slot_behind(ns):
    """A Consumer refused because its semaphore is not ours must give its slot back:
    a slot held by our live pid would block the producer for as long as we live."""
    name = naming.consumer_semaphore_name(ns, "orders", 0)
    run_as(OTHER_UID, OTHER_GID, _make_semaphore, name, 0o666)
    try:
        with shmbus.Producer("orders", capacity=4096, namespace=ns) as pub:
            with pytest.raises(shmbus.PermissionDenied):
                shmbus.Consumer("orders", namespace=ns)
            assert shmbus.inspect("orders", namespace=ns)["consumers"] == []
            for _ in range(8):  # four times what the ring holds: nobody holds it back
                pub.send(b"x" * 1000, timeout=2)
    finally:
        _remove(_semaphore_path(name))
        shmbus.unlink("orders", namespace=ns)


def test_foreign_private_semaphore_is_a_permission_error_for_a_normal_user(ns):
    """uid B cannot open uid A's 0600 semaphore: PermissionDenied, not posix_ipc's
    PermissionsError."""
    name = naming.producer_semaphore_name(ns, "orders")
    run_as(OTHER_UID, OTHER_GID, _make_semaphore, name, 0o600)

    def produce():
        try:
            shmbus.Producer("orders", capacity=CAP, namespace=ns)
        except Exception as e:  # noqa: BLE001 - the test looks at what it was
            return type(e).__name__, isinstance(e, PermissionError), getattr(e, "owner", None)
        return "no error", False, None

    try:
        assert run_as(THIRD_UID, THIRD_GID, produce) == ("PermissionDenied", True, OTHER_UID)
    finally:
        _remove(_semaphore_path(name))
        for entry in naming.owned_entries(ns, os.listdir(naming.SHM_DIR)):
            p = f"{naming.SHM_DIR}/{entry}"
            if os.path.isdir(p):
                for f in os.listdir(p):
                    _remove(f"{p}/{f}")
                os.rmdir(p)
            else:
                _remove(p)


# -- containers: processes in another PID namespace sharing /dev/shm (hole 9) ----------

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONSUMER = """
import sys, shmbus
ns, ring = sys.argv[1], sys.argv[2]
with shmbus.Consumer(ring, namespace=ns) as sub:
    print("ready", flush=True)
    msg = sub.recv(timeout=20)
    first = bytes(msg)
    print("holding", msg.seq, flush=True)
    sys.stdin.readline()
    print("intact" if bytes(msg) == first else "overwritten", flush=True)
"""

_PRODUCER = """
import sys, shmbus
ns, ring = sys.argv[1], sys.argv[2]
with shmbus.Producer(ring, capacity=4096, namespace=ns) as pub:
    pub.send(b"from the container")
    print("ready", flush=True)
    sys.stdin.readline()
"""


class _InPidNamespace:
    """A Python child in a new PID namespace with its own /proc (``unshare -p -f
    --mount-proc``), like a container that shares the host's /dev/shm; talks through
    its stdin/stdout, dies with us (``--kill-child``)."""

    def __init__(self, code: str, *args: str, mount_proc: bool = True) -> None:
        import subprocess
        import sys
        env = dict(os.environ, PYTHONPATH=_REPO)
        unshare = ["unshare", "--pid", "--fork", "--kill-child"]
        if mount_proc:
            unshare.append("--mount-proc")
        self.proc = subprocess.Popen(
            [*unshare, sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def expect(self, word: str, timeout: float = 20) -> str:
        import select
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise AssertionError(f"child said nothing within {timeout} s")
        line = self.proc.stdout.readline().strip()
        assert line.split()[:1] == [word], line
        return line

    def release(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        import subprocess
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # unshare --kill-child takes its child along
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.mark.parametrize("mount_proc", [True, False], ids=["own-proc", "host-proc"])
def test_consumer_in_another_pid_namespace_is_never_taken_for_dead(ns, mount_proc):
    """The host's producer must not reclaim the slot of a live consumer that runs in
    a container (its pid means nothing on the host): a full ring makes send time out
    instead of overwriting the message the consumer still holds; gc keeps the ring.
    Also when the container sees the host's /proc (where its pid 1 is the host's
    init, whose start time is not the consumer's)."""
    from shmbus.cleanup import collect
    child = None
    try:
        with shmbus.Producer("orders", capacity=4096, namespace=ns) as pub:
            child = _InPidNamespace(_CONSUMER, ns, "orders", mount_proc=mount_proc)
            child.expect("ready")
            pub.send(b"A" * 1000)
            assert child.expect("holding") == "holding 0"
            info = shmbus.inspect("orders", namespace=ns)
            assert [c["alive"] for c in info["consumers"]] == ["alive"]
            assert info["consumers"][0]["pid"] == 1  # its pid in the container
            # Signalling it (e.g. a lease's kill) must go to its pid here, not to pid 1.
            seg = Segment.open(ns, "orders")
            try:
                slot = SlotTable(seg).info(0)
            finally:
                seg.close()
            [here] = psutil.Process(child.proc.pid).children()
            assert liveness.local_pid(slot.pid, slot.start_time, slot.pid_ns) == here.pid
            with pytest.raises(shmbus.Timeout):
                for _ in range(8):  # the ring holds 4 such messages
                    pub.send(b"B" * 1000, timeout=0.3)
        removed = collect(ns)
        assert not [r for r in removed if r["kind"] == "ring"], removed
        assert os.path.exists(naming.segment_path(ns, "orders"))
        child.release()
        assert child.expect("intact") == "intact"
    finally:
        if child is not None:
            child.close()
        shmbus.unlink("orders", namespace=ns)


def test_producer_in_another_pid_namespace_keeps_its_ring(ns):
    from shmbus.cleanup import collect
    child = _InPidNamespace(_PRODUCER, ns, "orders")
    try:
        child.expect("ready")
        info = shmbus.inspect("orders", namespace=ns)
        assert info["producer"]["alive"] == "alive"
        removed = collect(ns)
        assert not [r for r in removed if r["kind"] == "ring"], removed
        with shmbus.Consumer("orders", namespace=ns, start="earliest") as sub:
            assert bytes(sub.recv(timeout=5)) == b"from the container"
        child.release()
    finally:
        child.close()
        shmbus.unlink("orders", namespace=ns)


# -- sharing a namespace with a group, on purpose ----------------------------------------

SHARE_GID = 4242
OUTSIDER_UID = OUTSIDER_GID = 1003


def _modes(namespace: str, ring: str) -> dict:
    """{entry: (mode, gid)} of the ring's segment and semaphores."""
    out = {}
    for entry in os.listdir(naming.SHM_DIR):
        if entry == f"{namespace}.{ring}" or entry.startswith(f"sem.{namespace}.{ring}@"):
            st = os.lstat(f"{naming.SHM_DIR}/{entry}")
            out[entry] = (stat.S_IMODE(st.st_mode), st.st_gid)
    return out


def _publish(shared_ns: str, private_ns: str) -> None:
    """(As the owner) create one ring in the shared namespace and one in a private
    one, and send a message to each."""
    with shmbus.Producer("r", capacity=CAP, namespace=shared_ns) as pub:
        pub.send(b"for the group")
    os.environ.pop("SHMBUS_GROUP")  # this forked child only
    with shmbus.Producer("r", capacity=CAP, namespace=private_ns) as pub:
        pub.send(b"for me alone")


def _read_both(shared_ns: str, private_ns: str) -> tuple:
    """(As a member of the group) read the shared ring, try the private one; then
    check that the ring's producer could wake us: our semaphore opens for the group."""
    with shmbus.Consumer("r", namespace=shared_ns, start="earliest") as sub:
        got = bytes(sub.recv(timeout=5))
    try:
        shmbus.Consumer("r", namespace=private_ns, start="earliest")
        private = "opened"
    except shmbus.PermissionDenied as e:
        private = e.owner
    return got, private


def _post(name: str) -> bool:
    from shmbus import ownership
    sem = ownership.open_semaphore(name, create=False)
    if sem is None:
        return False
    sem.release()
    sem.close()
    return True


def _try_consume(namespace: str) -> str:
    try:
        shmbus.Consumer("r", namespace=namespace, start="earliest")
    except Exception as e:  # noqa: BLE001 - the test looks at what it was
        return type(e).__name__
    return "opened"


def test_a_namespace_shared_with_a_group_is_shared_with_it_alone(ns, monkeypatch):
    """uid A shares namespace ``ns`` with group G ($SHMBUS_GROUP): its ring and
    semaphores are 0660 of group G; uid B, a member, reads it and its own semaphore
    can be posted by A; B cannot open A's ring in a private namespace, and uid C,
    not a member, cannot open the shared one."""
    private = ns + "p"
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARE_GID))
    try:
        run_as(OTHER_UID, SHARE_GID, _publish, ns, private)
        assert set(_modes(ns, "r").values()) == {(0o660, SHARE_GID)}, _modes(ns, "r")
        assert {m for m, _ in _modes(private, "r").values()} == {0o600}
        got, private_owner = run_as(THIRD_UID, SHARE_GID, _read_both, ns, private)
        assert got == b"for the group"
        assert private_owner == OTHER_UID
        assert set(_modes(ns, "r").values()) == {(0o660, SHARE_GID)}, _modes(ns, "r")
        sem = naming.consumer_semaphore_name(ns, "r", 0)
        assert os.stat(_semaphore_path(sem)).st_uid == THIRD_UID
        assert run_as(OTHER_UID, SHARE_GID, _post, sem)
        assert run_as(OUTSIDER_UID, OUTSIDER_GID, _try_consume, ns) == "PermissionDenied"
    finally:
        purge(ns)
        purge(private)
