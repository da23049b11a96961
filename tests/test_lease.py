"""Lease and Fence: tokens, takeover after death, stopped holders, keepalive."""

from __future__ import annotations

import os
import signal
import struct
import sys
import time

import pytest

import shmbus

from . import procs as P
from .support import SPAWN, kill9, start

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def lease_name(ns):
    yield "leader"
    shmbus.Lease("leader", ttl=1).unlink()
    shmbus.Fence("res").unlink()


def _holder(ns, procs, ttl):
    held, tokens = SPAWN.Event(), SPAWN.Queue()
    proc = start(P.hold_lease, ns, "leader", ttl, held, tokens)
    procs.append(proc)
    assert held.wait(30)
    return proc, tokens.get(timeout=30)


def test_tokens_strictly_increase_across_holders_and_removal(lease_name):
    tokens = []
    for _ in range(3):
        with shmbus.Lease(lease_name, ttl=5) as lease:
            lease.check()
            tokens.append(lease.token)
    shmbus.Lease(lease_name, ttl=5).unlink()  # even without the file
    with shmbus.Lease(lease_name, ttl=5) as lease:
        tokens.append(lease.token)
    assert tokens == sorted(set(tokens))


def test_kill9_holder_is_replaced_at_once(ns, procs, lease_name):
    proc, token = _holder(ns, procs, ttl=60)
    lease = shmbus.Lease(lease_name, ttl=5)
    assert lease.holder()["pid"] == proc.pid
    with pytest.raises(shmbus.Timeout, match=f"pid {proc.pid} holds it"):
        lease.acquire(timeout=0.05)
    kill9(proc)
    lease.acquire(timeout=5)  # long before the 60 s ttl ends
    assert lease.held and lease.token > token
    lease.release()


def test_stopped_holder_not_overtaken_before_expiry_then_killed(ns, procs, lease_name):
    ttl = 0.5
    proc, token = _holder(ns, procs, ttl=ttl)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        polite = shmbus.Lease(lease_name, ttl=5)
        t0 = time.monotonic()
        with pytest.raises(shmbus.Timeout, match="stopped or hung"):
            polite.acquire(timeout=ttl * 3)
        assert time.monotonic() - t0 >= ttl * 3  # refused even after expiry
        assert not polite.held
        forceful = shmbus.Lease(lease_name, ttl=5, on_stale="kill")
        forceful.acquire(timeout=10)
        assert forceful.token > token
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        forceful.release()
    finally:
        if proc.exitcode is None:
            os.kill(proc.pid, signal.SIGCONT)


def test_keepalive_holds_for_many_ttls_and_is_lost_when_starved(lease_name):
    ttl = 0.2
    lease = shmbus.Lease(lease_name, ttl=ttl, keepalive=True).acquire()
    try:
        time.sleep(ttl * 8)  # eight lease periods: what is being tested, not a sync
        lease.check()
        with pytest.raises(shmbus.Timeout):
            shmbus.Lease(lease_name, ttl=ttl).acquire(timeout=ttl / 2)
        old = sys.getswitchinterval()
        sys.setswitchinterval(ttl * 10)  # this thread keeps the GIL: the renewer starves
        try:
            end = time.monotonic() + ttl * 2
            while time.monotonic() < end:
                pass
        finally:
            sys.setswitchinterval(old)
        with pytest.raises(shmbus.LeaseLost):
            lease.check()
        other = shmbus.Lease(lease_name, ttl=ttl).acquire(timeout=5)
        assert other.token > lease.token
        with pytest.raises(shmbus.LeaseLost, match="is now token"):
            lease.renew()
        other.release()
    finally:
        lease._stop_keepalive()


def test_release_and_renew_errors(lease_name):
    lease = shmbus.Lease(lease_name, ttl=5)
    with pytest.raises(shmbus.NotHeld):
        lease.release()
    with pytest.raises(shmbus.LeaseLost, match="never"):
        lease.renew()
    with pytest.raises(shmbus.LeaseLost):
        lease.check()
    lease.acquire()
    lease.renew()
    assert lease.expires_at > time.monotonic() + 4
    lease.release()
    with pytest.raises(shmbus.NotHeld):
        lease.release()


def test_fence_rejects_older_tokens(lease_name):
    fence = shmbus.Fence("res")
    first = shmbus.Lease(lease_name, ttl=5).acquire()
    t1 = first.token
    first.release()
    second = shmbus.Lease(lease_name, ttl=5).acquire()
    fence.admit(second.token)
    fence.admit(second.token)  # the same holder again is fine
    with pytest.raises(shmbus.LeaseLost, match="older"):
        fence.admit(t1)
    assert fence.newest == second.token
    second.release()


def test_bad_input(ns):
    with pytest.raises(shmbus.InvalidName):
        shmbus.Lease("a/b", ttl=1)
    for ttl in (0, -1, "5", None, True, float("inf"), float("nan"), 1e300, -float("inf")):
        with pytest.raises(ValueError, match="ttl"):
            shmbus.Lease("x", ttl=ttl)
    with pytest.raises(ValueError, match="on_stale"):
        shmbus.Lease("x", ttl=1, on_stale="steal")
    for timeout in (-1, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            shmbus.Lease("x", ttl=1).acquire(timeout=timeout)
    fence = shmbus.Fence("res")
    for token in (-1, 2**64, 1.5, "7", True):
        with pytest.raises(ValueError, match="token"):
            fence.admit(token)
    assert not os.path.exists(shmbus.Lease("x", ttl=1).path)


def test_the_largest_token_is_a_clear_error(lease_name):
    lease = shmbus.Lease(lease_name, ttl=5)
    lease.acquire()
    lease.release()
    record = struct.Struct("<8sQQQQQQ").pack(b"SHMBLEAS", 2**64 - 1, 0, 0, 0, 0, 0)
    fd = os.open(lease.path, os.O_WRONLY)
    os.pwrite(fd, record, 0)
    os.close(fd)
    with pytest.raises(shmbus.ShmbusError, match=r"2\*\*64-1.*remove it") as caught:
        lease.acquire(timeout=1)
    assert not isinstance(caught.value, struct.error)
    assert not lease.held


def test_list_leases_and_gc(ns, lease_name):
    from shmbus.cleanup import collect
    with shmbus.Lease(lease_name, ttl=5) as lease:
        (entry,) = shmbus.list_leases()
        assert (entry["name"], entry["pid"], entry["token"]) == \
            (lease_name, os.getpid(), lease.token)
        assert collect() == []  # a live holder's lease is kept
    removed = collect()
    assert [(r["kind"], r["name"]) for r in removed] == [("lease", lease_name)]


def test_keepalive_thread_and_owner_share_the_file_safely(lease_name):
    """The owner calling check() while its keepalive thread renews must never hang
    (each used to be able to close the other's descriptor).  On a loaded machine the
    renewer may be starved past the ttl: then the lease is taken again and the loop
    goes on; a hang is what fails (pytest-timeout)."""
    lease = shmbus.Lease(lease_name, ttl=0.3, keepalive=True).acquire()
    end = time.monotonic() + 1.5
    checks = 0
    while time.monotonic() < end:
        try:
            lease.check()
        except shmbus.LeaseLost:
            lease.acquire(timeout=5)
        checks += 1
    assert checks > 100
    lease.release()


def test_gc_removes_a_stats_file_whose_writer_died(ns):
    from shmbus import naming
    from shmbus.cleanup import collect
    os.makedirs(naming.lock_dir(ns))
    stale = f"{naming.lock_dir(ns)}/g@stats.999999999.tmp"  # no such pid
    open(stale, "w").close()
    assert [(d["kind"], d["reason"]) for d in collect()] == [("stats", "writer is dead")]
    assert not os.path.exists(naming.lock_dir(ns))
