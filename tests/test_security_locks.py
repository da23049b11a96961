"""Locks, leases and the balancer's stats file against another user of the host
(issue 12, items 1, 2, 3, 5, 10, sharing a namespace with a group, and the lease's part
of item 9: a holder in another PID namespace).

Each attack runs as a second uid (:func:`tests.security.run_as`), the victim is this
(root) process, as in CI.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import stat
import struct
import threading
import time

import pytest

import shmbus
from shmbus.balancer import stats
from shmbus import naming

from .security import (OTHER_GID, OTHER_UID, THIRD_GID, THIRD_UID, Victim, needs_root,
                       run_as)

pytestmark = [needs_root, pytest.mark.timeout(60)]

SHARED_GID = 1500  # a group both OTHER_UID and THIRD_UID are given as their gid

_LEASE_RECORD = struct.Struct("<8sQQQQQQ")  # the record a forger writes: see lease.py


def _squat(directory: str, links: dict[str, str] | None = None) -> None:
    """As the attacker: make the lock directory first, open to all, with symlinks."""
    os.mkdir(directory)
    os.chmod(directory, 0o777)
    for name, target in (links or {}).items():
        os.symlink(target, f"{directory}/{name}")


def _remove_tree(path: str) -> None:
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _record(token: int, pid: int, start_time: int, expires_ns: int) -> bytes:
    return _LEASE_RECORD.pack(b"SHMBLEAS", token, pid, start_time, expires_ns, 0, 2 * 10**9)


# -- item 1: symlinks in a squatted lock directory ------------------------------------


def test_symlinks_in_a_squatted_lock_directory_are_never_followed(ns, tmp_path):
    victim, created = tmp_path / "victim", tmp_path / "created-by-root"
    victim.write_text("precious")
    directory = naming.lock_dir(ns)
    run_as(OTHER_UID, OTHER_GID, _squat, directory,
           {"r@producer": str(victim), "r@create": str(created),
            "x": str(victim), "l@lease": str(created)})
    try:
        with pytest.raises(shmbus.PermissionDenied) as caught:
            shmbus.Producer("r", capacity=4096)
        assert caught.value.path == directory
        assert f"uid {OTHER_UID}" in str(caught.value)
        assert isinstance(caught.value, PermissionError)
        with pytest.raises(shmbus.PermissionDenied):
            shmbus.FileLock("x").acquire(timeout=1)
        with pytest.raises(shmbus.PermissionDenied):
            shmbus.Lease("l", ttl=2).acquire(timeout=1)
        assert victim.read_text() == "precious"
        assert not created.exists()
    finally:
        _remove_tree(directory)


def test_a_symlink_as_the_lock_directory_is_refused(ns, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    target.chmod(0o777)
    directory = naming.lock_dir(ns)
    run_as(OTHER_UID, OTHER_GID, os.symlink, str(target), directory)
    try:
        with pytest.raises(shmbus.PermissionDenied, match="symbolic link"):
            shmbus.FileLock("x").acquire(timeout=1)
        assert os.listdir(target) == []
    finally:
        _remove_tree(directory)


def test_balancer_stats_never_follow_a_planted_symlink(ns, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    directory = naming.lock_dir(ns)
    tmp = f"g@stats.{os.getpid()}.tmp"
    run_as(OTHER_UID, OTHER_GID, _squat, directory, {tmp: str(victim)})
    try:
        with pytest.raises(shmbus.PermissionDenied):
            stats.write(ns, "g", {"dispatched": 1})
        with pytest.raises(shmbus.PermissionDenied):
            stats.read(ns, "g")
        assert victim.read_text() == "precious"
    finally:
        _remove_tree(directory)
    # In our own directory a symlink (made by anyone who could) is not read either.
    stats.write(ns, "g", {"dispatched": 2})
    assert stats.read(ns, "g")["dispatched"] == 2
    assert stat.S_IMODE(os.stat(f"{directory}/g@stats").st_mode) == 0o600
    os.unlink(f"{directory}/g@stats")
    os.symlink(victim, f"{directory}/g@stats")
    try:
        with pytest.raises(shmbus.PermissionDenied, match="symbolic link"):
            stats.read(ns, "g")
        stats.write(ns, "g", {"dispatched": 3})  # replaces the link, not the target
        assert victim.read_text() == "precious"
        assert stats.read(ns, "g")["dispatched"] == 3
    finally:
        stats.remove(ns, "g")
        os.rmdir(directory)


# -- item 2: two producers on one ring ------------------------------------------------


def test_nobody_else_can_delete_a_held_lock_file(ns):
    directory = naming.lock_dir(ns)
    run_as(OTHER_UID, OTHER_GID, _squat, directory)
    try:
        with pytest.raises(shmbus.PermissionDenied):
            shmbus.Producer("r", capacity=4096)
    finally:
        _remove_tree(directory)
    with shmbus.Producer("r", capacity=4096) as pub:
        mode = os.stat(directory).st_mode
        assert stat.S_IMODE(mode) == 0o700, oct(mode)
        assert stat.S_IMODE(os.stat(f"{directory}/r@producer").st_mode) == 0o600
        with pytest.raises(PermissionError):
            run_as(OTHER_UID, OTHER_GID, os.unlink, f"{directory}/r@producer")
        with pytest.raises(PermissionError):
            run_as(OTHER_UID, OTHER_GID, os.rename, directory, directory + "x")
        assert os.path.exists(f"{directory}/r@producer")
        with pytest.raises(shmbus.RingBusy, match=str(os.getpid())):
            shmbus.Producer("r", capacity=4096)
        pub.unlink()


# -- item 3: a forged lease -----------------------------------------------------------


def _forge_lease(directory: str, record: bytes) -> None:
    _squat(directory)
    fd = os.open(f"{directory}/leader@lease", os.O_WRONLY | os.O_CREAT, 0o666)
    os.fchmod(fd, 0o666)
    os.write(fd, record)
    os.close(fd)


def test_a_lease_forged_by_another_user_kills_nobody(ns):
    victim = Victim()
    directory = naming.lock_dir(ns)
    try:
        run_as(OTHER_UID, OTHER_GID, _forge_lease, directory,
               _record(10**19, victim.pid, 0, 1))
        lease = shmbus.Lease("leader", ttl=2, on_stale="kill")
        with pytest.raises(shmbus.PermissionDenied, match="leader@lease|locks"):
            lease.acquire(timeout=1)
        assert victim.alive()
        assert lease.token != 10**19
    finally:
        _remove_tree(directory)
        victim.end()


@pytest.mark.parametrize("who", ["start time unknown", "another user's process"])
def test_a_stale_holder_is_killed_only_when_verified(ns, who):
    victim = Victim(uid=None if who == "start time unknown" else THIRD_UID)
    lease = shmbus.Lease("leader", ttl=2, on_stale="kill")
    start = 0 if who == "start time unknown" else victim.start_time
    try:
        # The record is in our own file (as a bug or an older version might leave it).
        os.mkdir(naming.lock_dir(ns), 0o700)
        fd = os.open(lease.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, _record(7, victim.pid, start, 1))
        os.close(fd)
        with pytest.raises(shmbus.Timeout, match="cannot be verified"):
            lease.acquire(timeout=0.3)
        assert victim.alive()
    finally:
        victim.end()
        lease.unlink()


# -- item 5: a foreign flock on the lease file ----------------------------------------


def _hold_flock(path: str, ready_w: int, release_r: int, squat: str | None = None) -> None:
    if squat:
        _squat(squat)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(ready_w, b"r")
    select.select([release_r], [], [], 5)  # hold it at most 5 s
    os.close(fd)


def _in_background(fn, *args) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("holder", ["same user", "another user"])
def test_lease_acquire_honours_its_timeout_whatever_holds_the_file(ns, holder):
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    lease = shmbus.Lease("l", ttl=2)
    directory = naming.lock_dir(ns)
    if holder == "same user":
        lease.acquire(timeout=1)
        lease.release()  # the lease file now exists, ours
        thread = _in_background(
            lambda: run_as(os.getuid(), os.getgid(), _hold_flock, lease.path, ready_w,
                           release_r))
    else:
        thread = _in_background(
            lambda: run_as(OTHER_UID, OTHER_GID, _hold_flock, lease.path, ready_w,
                           release_r, directory))
    try:
        assert select.select([ready_r], [], [], 10)[0], "holder did not start"
        begun = time.monotonic()
        with pytest.raises((shmbus.Timeout, shmbus.PermissionDenied)):
            lease.acquire(timeout=0.5)
        assert time.monotonic() - begun < 2.0
    finally:
        os.write(release_w, b"x")
        thread.join(10)
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)
        if holder == "same user":
            lease.unlink()
        else:
            _remove_tree(directory)


def _hold_lock(name: str, ready_w: int, release_r: int) -> None:
    with shmbus.FileLock(name):
        os.write(ready_w, b"r")
        select.select([release_r], [], [], 5)  # hold it at most 5 s


def test_file_lock_acquire_honours_its_timeout_whatever_holds_the_file(ns):
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    thread = _in_background(lambda: run_as(os.getuid(), os.getgid(), _hold_lock, "x",
                                           ready_w, release_r))
    lock = shmbus.FileLock("x")
    try:
        assert select.select([ready_r], [], [], 10)[0], "holder did not start"
        begun = time.monotonic()
        with pytest.raises(shmbus.Timeout):
            lock.acquire(timeout=0.5)
        assert time.monotonic() - begun < 2.0
    finally:
        os.write(release_w, b"x")
        thread.join(10)
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)
    with lock.acquire(timeout=5):  # released: the last release removes the file
        pass


# -- item 10: two users, no configuration ---------------------------------------------


def _use_the_bus(tag: bytes) -> dict:
    """As one user with no configuration: a ring, a lock and a lease, left in place."""
    pub = shmbus.Producer("orders", capacity=4096)
    with shmbus.Consumer("orders", start="earliest") as sub:
        pub.send(tag)
        got = bytes(sub.recv(timeout=5))
    with shmbus.FileLock("job"), shmbus.Lease("leader", ttl=2) as lease:
        token = lease.token
    ns = pub.namespace
    pub.close()
    return {"namespace": ns, "got": got, "token": token}


def _read_ring_of(namespace: str) -> object:
    with shmbus.Consumer("orders", namespace=namespace, start="earliest") as sub:
        return bytes(sub.recv(timeout=1))


def _unlink_mine() -> None:
    shmbus.unlink("orders")
    shmbus.Lease("leader", ttl=1).unlink()


def test_two_users_use_the_default_namespace_without_colliding(ns, monkeypatch):
    monkeypatch.delenv("SHMBUS_NAMESPACE")
    monkeypatch.setattr(naming, "DEFAULT_NAMESPACE", ns)  # a unique base, same code path
    try:
        a = run_as(OTHER_UID, OTHER_GID, _use_the_bus, b"from a")
        b = run_as(THIRD_UID, THIRD_GID, _use_the_bus, b"from b")
        assert (a["namespace"], b["namespace"]) == (f"{ns}-{OTHER_UID}", f"{ns}-{THIRD_UID}")
        assert (a["got"], b["got"]) == (b"from a", b"from b")
        assert naming.resolve_namespace() == f"{ns}-{os.geteuid()}"
        with pytest.raises(PermissionError):  # b cannot read a's ring
            run_as(THIRD_UID, THIRD_GID, _read_ring_of, a["namespace"])
        with pytest.raises(PermissionError):  # nor take a's locks
            run_as(THIRD_UID, THIRD_GID, lambda: shmbus.FileLock(
                "job", namespace=a["namespace"]).acquire(timeout=1) and None)
    finally:
        run_as(OTHER_UID, OTHER_GID, _unlink_mine)
        run_as(THIRD_UID, THIRD_GID, _unlink_mine)
    left = [e for e in os.listdir(naming.SHM_DIR) if e.startswith(ns)]
    assert left == []


# -- sharing a namespace with a group, on purpose -------------------------------------


def _lease_in_shared_namespace() -> tuple[int, str, int]:
    with shmbus.Lease("leader", ttl=2) as lease:
        token = lease.token
    with shmbus.FileLock("job"):
        pass
    st = os.stat(lease.path)
    return token, oct(stat.S_IMODE(st.st_mode)), st.st_gid


def test_a_namespace_is_shared_only_with_the_group_named(ns, monkeypatch):
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    directory = naming.lock_dir(ns)
    try:
        first, mode, gid = run_as(OTHER_UID, SHARED_GID, _lease_in_shared_namespace)
        assert (mode, gid) == ("0o660", SHARED_GID)
        st = os.stat(directory)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2770, SHARED_GID)
        second, _, _ = run_as(THIRD_UID, SHARED_GID, _lease_in_shared_namespace)
        assert second > first
        with pytest.raises(PermissionError):  # not a member of the group
            run_as(THIRD_UID, THIRD_GID, _lease_in_shared_namespace)
        monkeypatch.delenv("SHMBUS_GROUP")  # a member that did not ask to share
        with pytest.raises(shmbus.PermissionDenied, match="SHMBUS_GROUP"):
            run_as(THIRD_UID, SHARED_GID, _lease_in_shared_namespace)
    finally:
        _remove_tree(directory)


# -- a lease holder in another PID namespace (issue 12 hole 9, the lease's part) -------

_LEASE_HOLDER = """
import sys, shmbus
lease = shmbus.Lease("leader", ttl=float(sys.argv[2]), namespace=sys.argv[1])
lease.acquire(timeout=10)
print("held", lease.token, flush=True)
sys.stdin.readline()
"""


class _Container:
    """A Python child in a new PID namespace with its own /proc (``unshare -p -f
    --mount-proc``), sharing our /dev/shm; talks through stdin/stdout and dies with its
    ``unshare`` parent (``--kill-child``)."""

    def __init__(self, code: str, *args: str) -> None:
        import subprocess
        import sys
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
             sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=repo))

    def expect(self, word: str, timeout: float = 20) -> str:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise AssertionError(f"child said nothing within {timeout} s")
        line = self.proc.stdout.readline().strip()
        assert line.split()[:1] == [word], line
        return line

    def python_pid(self) -> int:
        import psutil
        [here] = psutil.Process(self.proc.pid).children()
        return here.pid

    def close(self) -> int:
        import subprocess
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)
        finally:
            self.proc.stdout.close()


def test_a_lease_held_in_another_pid_namespace_is_not_taken_while_it_lives(ns):
    from shmbus.cleanup import collect
    holder = _Container(_LEASE_HOLDER, ns, "60")
    try:
        token = int(holder.expect("held").split()[1])
        assert shmbus.Lease("leader", ttl=2).holder()["alive"] == "alive"
        with pytest.raises(shmbus.Timeout):
            shmbus.Lease("leader", ttl=2, on_stale="kill").acquire(timeout=0.3)
        assert not [r for r in collect(ns) if r["kind"] == "lease"]
        assert shmbus.Lease("leader", ttl=2).holder()["token"] == token
    finally:
        holder.close()
        shmbus.Lease("leader", ttl=1).unlink()


def test_a_stale_holder_in_another_pid_namespace_is_killed_by_its_pid_here(ns):
    holder = _Container(_LEASE_HOLDER, ns, "0.2")
    try:
        token = int(holder.expect("held").split()[1])
        python = holder.python_pid()  # its pid here; in its namespace it is 1 or 2
        polite = shmbus.Lease("leader", ttl=2)
        with pytest.raises(shmbus.Timeout, match="on_stale='kill'"):
            polite.acquire(timeout=0.5)  # expired, alive: refused
        lease = shmbus.Lease("leader", ttl=2, on_stale="kill").acquire(timeout=10)
        assert lease.token > token
        assert not psutil_exists(python)
        lease.release()
    finally:
        holder.close()
        shmbus.Lease("leader", ttl=1).unlink()


def psutil_exists(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
