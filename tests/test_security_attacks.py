"""A hostile second user against the security model (README "Security model"), after
issue 12: each attack runs as another uid (:func:`tests.security.run_as`) against this
(root, as in CI) process.  Attacks that the defences already stopped, and that no other
test guards, are kept here too (marked "the defence held").

* A member of a shared group forges a lease record naming another process of ours:
  ``on_stale="kill"`` must not kill it (it never held the lease); or rewrites our live
  holder's record as expired: our standby must not kill it either.
* A hard link to one of our files under another of our names (a ring's segment as
  another ring's, a segment as a semaphore): refused, whether or not
  ``fs.protected_hardlinks`` stops the attacker making it.
* A member writes a stats file nested deeper than the JSON parser recurses.
* A FIFO, a directory or a socket in place of a ring's segment: refused at once,
  never a hang (the defence held).
* A symlink under a semaphore's name, before opening or in the window between the
  check and ``sem_open`` (the defence held).
* A flock on a file of another filesystem with our lock file's inode number: not a
  holder of our lock.
* The member who made a shared lock directory swaps it for a symlink: releasing a lock
  and listing its holders never go through the link.
* A member forges a consumer slot naming a process of ours: the producer signals
  nobody and waits no longer than its timeout (the defence held).
"""

from __future__ import annotations

import os
import select
import struct

import pytest

import shmbus
from shmbus.balancer import stats
from shmbus import liveness, naming

from .security import (OTHER_GID, OTHER_UID, THIRD_UID, Victim, make_shared_lock_dir,
                       needs_root, purge, swap_for_symlink, undo_swap,
                       run_as)

pytestmark = [needs_root, pytest.mark.timeout(30)]

SHARED_GID = 1500  # the group a namespace is shared with; THIRD_UID is a member
CAP = 1 << 16


# -- a forged lease record in a namespace shared with a group ---------------------------

_LEASE = struct.Struct("<8sQQQQQQQ")  # magic, token, pid, start, expiry, wall, ttl, pid_ns


def _forge_lease(namespace: str, pid: int, start_time: int) -> None:
    """(As a member of the share group) make the lease file the ordinary way, then
    write into it a stale record naming ``pid``: a process the member does not own."""
    lease = shmbus.Lease("leader", ttl=2, namespace=namespace)
    lease.acquire(timeout=5)
    lease.release()
    fd = os.open(lease.path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, _LEASE.pack(b"SHMBLEAS", 7, pid, start_time, 1, 0, 2 * 10**9,
                                  liveness.pid_namespace()), 0)
    finally:
        os.close(fd)


def test_a_member_cannot_make_us_kill_a_process_that_never_held_the_lease(ns, monkeypatch):
    """A member of the share group can write every lease record of the namespace, and
    can read the pid and start time of any of our processes in /proc.  A stale record
    naming one of them must not make our ``on_stale="kill"`` kill it: only a process
    that holds the lease (it keeps the lease file open while it does) is killed."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    victim = Victim()
    try:
        run_as(THIRD_UID, SHARED_GID, _forge_lease, ns, victim.pid, victim.start_time)
        lease = shmbus.Lease("leader", ttl=2, on_stale="kill")
        with pytest.raises(shmbus.Timeout, match="cannot be verified"):
            lease.acquire(timeout=0.3)
        assert victim.alive()
    finally:
        victim.end()
        purge(ns)


# -- hard links: another name for one of our files ------------------------------------


def _link(source: str, name: str) -> None:
    """Make ``name`` a hard link to ``source``: as the attacker if the kernel lets him
    (``fs.protected_hardlinks=0``), else as root, standing in for him on such a host
    (``/dev/shm`` is one tmpfs: any file of ours in it can be linked there)."""
    try:
        run_as(OTHER_UID, OTHER_GID, os.link, source, name)
    except PermissionError:
        with open("/proc/sys/fs/protected_hardlinks") as f:
            assert f.read().strip() != "0", "the attacker could not link at all"
        os.link(source, name)


@pytest.mark.parametrize("as_what", ["segment", "semaphore"])
def test_a_hard_link_to_another_of_our_rings_is_refused(ns, as_what):
    """Our ring ``payments``'s segment linked under ring ``orders``'s name (or under
    its producer's semaphore's): owner, mode and type are all ours, but opening it
    would send orders to the payments consumers (or post a semaphore over the payments
    ring's header).  A second name is refused."""
    payments = naming.segment_path(ns, "payments")
    name = (naming.segment_path(ns, "orders") if as_what == "segment" else
            f"{naming.SHM_DIR}/sem.{naming.producer_semaphore_name(ns, 'orders')[1:]}")
    try:
        with shmbus.Producer("payments", capacity=CAP, namespace=ns):
            pass
        _link(payments, name)
        with pytest.raises(shmbus.PermissionDenied, match="hard link") as caught:
            with shmbus.Producer("orders", capacity=CAP, namespace=ns) as pub:
                pub.send(b"an order")
        assert caught.value.path == name
        os.unlink(name)
        with shmbus.Consumer("payments", namespace=ns, start="earliest") as sub:
            assert sub.try_recv() is None
    finally:
        if os.path.lexists(name):
            os.unlink(name)
        shmbus.unlink("payments", namespace=ns)
        shmbus.unlink("orders", namespace=ns)


# -- a stats file written by a member of the share group ------------------------------


def _forge_stats(namespace: str, body: bytes) -> None:
    """(As a member) publish the group's stats the ordinary way, then overwrite them."""
    stats.write(namespace, "g", {"dispatched": 1})
    path = f"{naming.lock_dir(namespace)}/g@stats"
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)


def test_stats_nested_deeper_than_the_parser_recurses_are_no_stats(ns, monkeypatch):
    """A member can write the stats file: JSON nested 100,000 deep (within the 1 MiB
    read) makes the parser raise RecursionError, which must read as "no stats" (None),
    like any other malformed file, not escape ``shmbus top``/``inspect``."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    try:
        run_as(THIRD_UID, SHARED_GID, _forge_stats, ns, b"[" * 100_000)
        assert stats.read(ns, "g") is None
        run_as(THIRD_UID, SHARED_GID, _forge_stats, ns, b'{"dispatched": 2}')
        assert stats.read(ns, "g") == {"dispatched": 2}
    finally:
        purge(ns)


# -- something else than a regular file under a ring's name ----------------------------


def _plant(path: str, kind: str) -> None:
    """(As the attacker) put a ``kind`` at ``path``."""
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        os.mkdir(path, 0o700)
    else:
        import socket
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path)


def _open_all(namespace: str) -> list[str]:
    """Open the ring as a producer and as a consumer; what each raised."""
    out = []
    for opener in (lambda: shmbus.Producer("orders", capacity=CAP, namespace=namespace),
                   lambda: shmbus.Consumer("orders", namespace=namespace)):
        try:
            opener().close()
            out.append("opened")
        except shmbus.ShmbusError as e:
            out.append(type(e).__name__)
    return out


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket"])
def test_a_special_file_under_a_rings_name_is_refused_at_once(ns, kind):
    """A FIFO (which an ``O_RDONLY`` open would wait on forever), a directory or a
    socket where a ring's segment should be: producer and consumer refuse it with
    PermissionDenied at once; the opening runs in a child so that a hang is a failure,
    not a stuck test.  (The defence held before this test was written.)"""
    path = naming.segment_path(ns, "orders")
    run_as(OTHER_UID, OTHER_GID, _plant, path, kind)
    try:
        assert run_as(0, 0, _open_all, ns, timeout=5) == ["PermissionDenied"] * 2
    finally:
        if kind == "directory":
            os.rmdir(path)
        else:
            os.unlink(path)


# -- a symlink planted under a semaphore's name ---------------------------------------


@pytest.mark.parametrize("when", ["before opening", "between the check and sem_open"])
def test_a_symlink_under_a_semaphores_name_is_never_followed(ns, tmp_path, monkeypatch,
                                                             when):
    """``sem_open`` gives no descriptor to check, so the semaphore's file is checked by
    name before and after.  A symlink planted before is refused by the first check; one
    planted in the window between that check and ``sem_open`` is not followed either
    (glibc opens with ``O_NOFOLLOW``, and creates by ``link``, which never follows the
    name): neither our file it points to nor a file at a dangling target is touched.
    (The defence held.)"""
    from shmbus import ownership
    victim, dangling = tmp_path / "victim", tmp_path / "created-by-root"
    victim.write_bytes(b"\x05" * 64)
    os.chmod(tmp_path, 0o755)
    sem = f"{naming.SHM_DIR}/sem.{naming.producer_semaphore_name(ns, 'orders')[1:]}"
    if when == "before opening":
        run_as(OTHER_UID, OTHER_GID, os.symlink, str(victim), sem)
    else:
        real_lstat = ownership._lstat

        def lstat_then_plant(path):
            st = real_lstat(path)
            if path == sem and not os.path.lexists(sem):
                run_as(OTHER_UID, OTHER_GID, os.symlink, str(dangling), sem)
            return st
        monkeypatch.setattr(ownership, "_lstat", lstat_then_plant)
    try:
        with pytest.raises(shmbus.PermissionDenied, match="symbolic link") as caught:
            shmbus.Producer("orders", capacity=CAP, namespace=ns)
        assert caught.value.path == sem
        assert victim.read_bytes() == b"\x05" * 64
        assert not dangling.exists()
    finally:
        monkeypatch.undo()
        os.unlink(sem)
        shmbus.unlink("orders", namespace=ns)


# -- a flock on a file of another filesystem with our lock file's inode number ---------


def _private_tmpfs(*mount_points: str) -> None:
    """(In a forked child, as root) enter a mount namespace of its own and mount a
    fresh tmpfs, world-writable and sticky, on each of ``mount_points``: inode numbers
    on a fresh tmpfs are 2, 3, 4... in order of creation."""
    import ctypes
    import subprocess
    if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    for point in mount_points:
        os.makedirs(point, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1m", "tmpfs",
                        point], check=True)


def _flock_same_inode(directory: str, inode: int, ready_w: int, release_r: int) -> None:
    """(As the attacker) create files in ``directory`` until one has inode number
    ``inode``, lock it, say so, and hold it until told."""
    import fcntl
    for i in range(inode + 2):
        fd = os.open(f"{directory}/f{i}", os.O_CREAT | os.O_RDWR, 0o600)
        if os.fstat(fd).st_ino == inode:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(ready_w, b"r")
            select.select([release_r], [], [], 10)
            return
        os.close(fd)
    raise AssertionError(f"no file with inode {inode} in {directory}")


def _holders_with_a_spoofer(namespace: str) -> tuple[list[int], int]:
    """(In a forked root child) a lock file of ours that nobody holds, and an attacker
    holding a flock on a file of another tmpfs with the same inode number: who does
    ``FileLock.holders()`` say holds our lock?  Returns (holders, attacker pid)."""
    import threading
    other = f"{naming.SHM_DIR}/elsewhere"
    _private_tmpfs(naming.SHM_DIR, other)  # (/dev/shm here is a fresh tmpfs too)
    directory = naming.lock_dir(namespace)
    os.mkdir(directory, 0o700)
    os.close(os.open(f"{directory}/x", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    inode = os.stat(f"{directory}/x").st_ino
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    attacker = threading.Thread(target=run_as, daemon=True, args=(
        OTHER_UID, OTHER_GID, _flock_same_inode, other, inode, ready_w, release_r))
    attacker.start()
    try:
        assert select.select([ready_r], [], [], 10)[0], "the attacker did not lock"
        spoofer = next(int(line.split()[4]) for line in open("/proc/locks")
                       if line.split()[5].endswith(f":{inode}"))
        holders = [h.pid for h in shmbus.FileLock("x", namespace=namespace).holders()]
    finally:
        os.write(release_w, b"x")
        attacker.join(10)
    return holders, spoofer


def test_a_flock_on_another_filesystem_never_passes_for_a_holder_of_our_lock(ns):
    """/proc/locks names each lock's file by device and inode.  Another user can lock a
    file of another filesystem (a tmpfs of his own, a pipe...) whose inode number is
    our lock file's: it must not pass for a holder of our lock (gc would keep what it
    guards, a balancer would take a gone worker for registered)."""
    from .security import run_forked
    holders, spoofer = run_forked(_holders_with_a_spoofer, ns, timeout=20)
    assert spoofer > 0
    assert spoofer not in holders and holders == []


# -- the owner of a shared lock directory swaps it for a symbolic link -----------------


def test_releasing_a_lock_never_removes_a_file_through_a_swapped_directory(
        ns, tmp_path, monkeypatch):
    """In a namespace shared with a group, the member who made the lock directory may
    rename it and put a symlink in its place.  Releasing a lock removes its file: that
    must happen in the directory that was checked, never through the path, or the
    member could have us remove a file of that name anywhere (here: just before our
    unlink, as a winning race would)."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "target").write_text("precious")
    run_as(THIRD_UID, SHARED_GID, make_shared_lock_dir, ns)
    real_unlink = os.unlink
    swapped = []

    def unlink_after_the_swap(path, *args, **kwargs):
        if str(path).endswith("target") and not swapped:
            run_as(THIRD_UID, SHARED_GID, swap_for_symlink, ns, str(elsewhere))
            swapped.append(True)
        return real_unlink(path, *args, **kwargs)
    try:
        lock = shmbus.FileLock("target")
        lock.acquire(timeout=1)
        monkeypatch.setattr(os, "unlink", unlink_after_the_swap)
        lock.release()
        monkeypatch.setattr(os, "unlink", real_unlink)
        assert swapped, "the release removed nothing"
        assert (elsewhere / "target").read_text() == "precious"
    finally:
        monkeypatch.setattr(os, "unlink", real_unlink)
        undo_swap(ns)
        purge(ns)


def test_who_holds_a_lock_is_never_read_through_a_swapped_directory(ns, tmp_path,
                                                                    monkeypatch):
    """The same swap, then ``holders()``: the lock file must be opened in a checked
    directory, never through the symlink (which could lead to any file of ours with
    that name, or to a device whose opening does something)."""
    import fcntl
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    outside = elsewhere / "x"
    outside.write_text("")
    os.chmod(outside, 0o600)
    run_as(THIRD_UID, SHARED_GID, make_shared_lock_dir, ns)
    fd = os.open(outside, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # somebody of ours holds that other file
        run_as(THIRD_UID, SHARED_GID, swap_for_symlink, ns, str(elsewhere))
        assert shmbus.FileLock("x").holders() == []
    finally:
        os.close(fd)
        undo_swap(ns)
        purge(ns)


# -- a forged consumer slot in a ring shared with a group -----------------------------


def _forge_slot(namespace: str, pid: int, start_time: int) -> None:
    """(As a member) claim a consumer slot of ring ``r`` the ordinary way, then make it
    name process ``pid`` (one of the ring owner's, not ours) as its consumer."""
    from shmbus.layout import S_PID, S_START, slot_word
    from shmbus.segment import Segment
    from shmbus.slots import SlotTable
    seg = Segment.open(namespace, "r")
    try:
        table = SlotTable(seg)
        with table.lock():
            i = table.claim(0, None)
            seg.words[slot_word(i) + S_PID] = pid
            seg.words[slot_word(i) + S_START] = start_time
            table.bump()
    finally:
        seg.close()


def test_a_forged_consumer_slot_makes_the_producer_neither_kill_nor_wait_past_its_timeout(
        ns, monkeypatch):
    """A member can write a shared ring's slot table: a slot naming a live process of
    the producer's user (whose pid and start time anyone can read) holds a ``block``
    producer back like a slow consumer, no more: ``send`` raises Timeout when its
    timeout passes, and the process named is never signalled.  (The defence held: the
    producer signals nobody, and its waits are bounded by the caller's timeout.)"""
    import time
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    victim = Victim()
    try:
        with shmbus.Producer("r", capacity=4096, namespace=ns) as pub:
            run_as(THIRD_UID, SHARED_GID, _forge_slot, ns, victim.pid, victim.start_time)
            begun = time.monotonic()
            with pytest.raises(shmbus.Timeout):
                for _ in range(8):  # the ring holds 4 such messages
                    pub.send(b"x" * 1000, timeout=0.3)
            assert time.monotonic() - begun < 5
        assert victim.alive()
    finally:
        victim.end()
        purge(ns)


# -- a member rewrites the expiry of our live lease holder ---------------------------


class _Holder:
    """A process of ours that holds lease ``leader`` (ttl 60 s) until the test ends."""

    def __init__(self, namespace: str) -> None:
        self._r, self._w = os.pipe()
        ready_r, ready_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            try:
                os.close(self._w)
                lease = shmbus.Lease("leader", ttl=60, namespace=namespace)
                lease.acquire(timeout=5)
                os.write(ready_w, b"r")
                select.select([self._r], [], [], 30)
            finally:
                os._exit(0)
        os.close(self._r)
        os.close(ready_w)
        assert select.select([ready_r], [], [], 10)[0], "holder did not start"
        os.close(ready_r)

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def end(self) -> None:
        os.close(self._w)
        os.waitpid(self.pid, 0)


def _expire_record(namespace: str) -> None:
    """(As a member) rewrite the lease record: same holder and token, expired."""
    path = f"{naming.lock_dir(namespace)}/leader@lease"
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        fields = list(_LEASE.unpack(os.pread(fd, _LEASE.size, 0)))
        fields[4] = 1  # expires_ns: long ago
        os.pwrite(fd, _LEASE.pack(*fields), 0)
    finally:
        os.close(fd)


def test_a_member_cannot_make_us_kill_a_live_holder_by_expiring_its_record(ns, monkeypatch):
    """A member can rewrite the record of our own live holder (a leader renewing its
    lease) to say it expired long ago.  Our standby with ``on_stale="kill"`` must not
    believe that and kill the leader: the holder's own word on its expiry (kept where
    only it can write: the position of its pin descriptor) says it is not stale."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    holder = _Holder(ns)
    try:
        run_as(THIRD_UID, SHARED_GID, _expire_record, ns)
        with pytest.raises(shmbus.Timeout):
            shmbus.Lease("leader", ttl=2, on_stale="kill").acquire(timeout=0.3)
        assert holder.alive()
    finally:
        holder.end()
        purge(ns)
