"""``KVLease``: a lease held in NATS KV, against a real nats-server."""

from __future__ import annotations

import os
import threading

import pytest

import shmbus

from .nats_server import nats_cluster, nats_server  # noqa: F401 - fixtures
from .support import await_until

pytest.importorskip("nats", reason="the KV lease needs nats-py (the test extra)")

from shmbus.bridge import KVLease  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def leases(nats_server):
    """Make KVLease objects on the test's server; all closed afterwards."""
    made: list[KVLease] = []

    def make(name: str = "leader", ttl: int = 15, **kw) -> KVLease:
        lease = KVLease(name, ttl=ttl, server=nats_server.url, **kw)
        made.append(lease)
        return lease
    yield make
    for lease in made:
        lease.close()


def test_one_holder_at_a_time_and_tokens_grow(leases):
    a, b = leases(), leases()
    a.acquire(timeout=5)
    assert a.held and a.token > 0
    with pytest.raises(shmbus.Timeout, match="leader"):
        b.acquire(timeout=0.3)
    first = a.token
    a.release()
    assert not a.held
    b.acquire(timeout=5)
    assert b.token > first
    holder = b.holder()
    assert holder["token"] == b.token and holder["pid"] == os.getpid()
    b.check()


def test_renew_keeps_the_token_and_moves_the_expiry(leases):
    a = leases()
    a.acquire(timeout=5)
    token, expires = a.token, a.expires_at
    a.renew()
    assert a.token == token and a.expires_at > expires
    a.check()
    assert a.holder()["token"] == token  # the renewal wrote the acquisition's token


def test_an_expired_lease_is_taken_and_the_old_holder_finds_it_lost(leases):
    a, b = leases(ttl=1), leases(ttl=1)
    a.acquire(timeout=5)
    b.acquire(timeout=10)  # once the server expired a's key
    assert b.token > a.token
    with pytest.raises(shmbus.LeaseLost):
        a.check()
    with pytest.raises(shmbus.LeaseLost):
        a.renew()
    b.check()


def test_a_renewal_after_another_took_it_is_refused(leases):
    a, b = leases(), leases()
    a.acquire(timeout=5)
    # Another holder takes over behind a's back (as after an expiry a did not see).
    a._call(a._delete(a._revision))
    b.acquire(timeout=5)
    with pytest.raises(shmbus.LeaseLost, match="another holder"):
        a.renew()
    assert not a.held


def test_keepalive_holds_it_past_the_ttl(leases):
    a, b = leases(ttl=1, keepalive=True), leases(ttl=1)
    a.acquire(timeout=5)
    with pytest.raises(shmbus.Timeout):
        b.acquire(timeout=2.5)  # more than twice the ttl
    a.check()
    a.release()
    b.acquire(timeout=5)


def test_context_manager_and_errors(leases):
    a = leases()
    with a:
        assert a.held
        with pytest.raises(shmbus.AlreadyHeld):
            a.acquire(timeout=0)
    assert not a.held
    with pytest.raises(shmbus.NotHeld):
        a.release()
    with pytest.raises(shmbus.LeaseLost):
        a.check()


@pytest.mark.parametrize("ttl", [0, 0.5, 1.5, -1, True])
def test_ttl_must_be_whole_seconds(nats_server, ttl):
    with pytest.raises(ValueError, match="whole number of seconds"):
        KVLease("x", ttl=ttl, server=nats_server.url)


def test_the_lease_survives_a_server_restart(leases, nats_server):
    a, b = leases(), leases()
    a.acquire(timeout=5)
    nats_server.stop()
    nats_server.start()
    with pytest.raises(shmbus.Timeout):
        b.acquire(timeout=1)
    a.check()
    a.release()
    b.acquire(timeout=5)


def test_two_threads_race_one_wins(leases):
    contenders = [leases() for _ in range(4)]
    won, barrier = [], threading.Barrier(4)

    def race(lease: KVLease) -> None:
        barrier.wait(10)
        try:
            lease.acquire(timeout=0)
            won.append(lease)
        except shmbus.Timeout:
            pass
    threads = [threading.Thread(target=race, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(won) == 1


def _renewed(lease: KVLease) -> bool:
    try:
        lease.renew()
        return True
    except shmbus.LeaseLost:
        raise
    except Exception:  # noqa: BLE001 - the cluster is electing a new stream leader
        return False


@pytest.mark.timeout(90)
def test_lease_outlives_its_stream_leader_in_a_cluster_of_three(nats_cluster):
    import asyncio

    import nats

    urls = [s.url for s in nats_cluster]
    a = KVLease("leader", ttl=15, server=urls, replicas=3)
    b = KVLease("leader", ttl=15, server=urls, replicas=3)
    try:
        a.acquire(timeout=30)  # (the cluster elects its leaders meanwhile)

        async def stream_leader() -> str:
            nc = await nats.connect(urls)
            try:
                info = await nc.jetstream().stream_info("KV_shmbus-leases")
                return info.cluster.leader
            finally:
                await nc.close()
        leader = asyncio.run(stream_leader())
        (victim,) = [s for s in nats_cluster if f"n{s.port}" == leader]
        victim.kill()
        await_until(lambda: _renewed(a), 30, interval=0.2, what="a renewal after failover")
        a.check()
        with pytest.raises(shmbus.Timeout):
            b.acquire(timeout=1)
        token = a.token
        a.release()
        b.acquire(timeout=20)
        assert b.token > token
    finally:
        a.close()
        b.close()


def test_acquire_keeps_its_timeout_while_the_server_is_down(leases, nats_server):
    import time
    a = leases()
    nats_server.stop()
    began = time.monotonic()
    with pytest.raises(shmbus.Timeout, match="unreachable"):
        a.acquire(timeout=1)
    assert time.monotonic() - began < 3
    nats_server.start()
    a.acquire(timeout=20)
    assert a.held


def test_balancers_on_two_hosts_elect_one_leader_through_a_kv_lease(nats_server, ns):
    """Two "hosts" (two namespaces, each with its own input ring and worker) run a
    balancer of the same group, each given a KVLease of the same name: exactly one
    leads and dispatches its host's messages; when it stops (releasing the lease), the
    other takes over and dispatches its own."""
    from shmbus.balancer import Balancer, Worker

    hosts = [f"{ns}a", f"{ns}b"]
    pubs = [shmbus.Producer("in", capacity=1 << 16, namespace=h) for h in hosts]
    workers = [Worker("g", "w", namespace=h) for h in hosts]
    leases = [KVLease("g-leader", ttl=15, server=nats_server.url, keepalive=True)
              for _ in hosts]
    balancers = [Balancer("g", ["in"], namespace=h, poll=0.005, lease=lease)
                 for h, lease in zip(hosts, leases)]
    try:
        for b in balancers:
            b.start()
        await_until(lambda: any(b.leading.is_set() for b in balancers), 30,
                    what="a leader")
        first = next(i for i, b in enumerate(balancers) if b.leading.is_set())
        other = 1 - first
        assert balancers[first].lease is leases[first] and leases[first].held
        for pub in pubs:
            pub.send(b"m")
        assert bytes(workers[first].recv(timeout=30)) == b"m"
        assert not balancers[other].leading.is_set() and not leases[other].held
        with pytest.raises(shmbus.Timeout):
            workers[other].recv(timeout=0.5)  # its host's message waits: no leader there
        assert balancers[first].stop(30)
        await_until(balancers[other].leading.is_set, 60, what="the standby to lead")
        assert bytes(workers[other].recv(timeout=30)) == b"m"
        assert leases[other].token > leases[first].token  # fencing: tokens only grow
    finally:
        for b in balancers:
            b.stop(30)
        for x in (*workers, *pubs, *leases):
            x.close()
        for h in hosts:
            shmbus.unlink("in", namespace=h)
            from shmbus.cleanup import collect
            collect(h, force=True)
