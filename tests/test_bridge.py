"""The bridge against a real nats-server: relay out, relay in, two "hosts" (two
namespaces) through the server, kill -9 of a bridge mid-stream, a server restart
mid-stream, a standby taking over.  Skipped only if nats-server is not installed."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

import shmbus
from shmbus.cleanup import collect

from . import support
from .nats_server import nats_server  # noqa: F401 - a fixture
from .support import await_until, kill9

nats = pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")

from shmbus.bridge import Inbound, Outbound  # noqa: E402
from shmbus.bridge.headers import MSG_ID, SEQ, parse_msg_id  # noqa: E402

pytestmark = pytest.mark.timeout(60)

CAP = 1 << 20


@pytest.fixture
def hosts(ns):
    """Two namespaces, as if two hosts: ``ns`` and another; everything in both is
    removed afterwards."""
    other = ns[:40] + "h" + uuid.uuid4().hex[:6]
    yield ns, other
    for space in (ns, other):
        for r in shmbus.list_rings(space):
            shmbus.unlink(r["name"], namespace=space)
        collect(space, force=True)
    left = [e for e in support.shm_entries() if support.namespace_of(e) == other]
    support.remove_entries(left)
    assert not left, f"test left {left} in /dev/shm (the second host's namespace)"


def stored(url: str, subject: str) -> list:
    """Every message stored on ``subject`` (stream shmbus-SUBJECT), in order."""
    async def read() -> list:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            name = await js.find_stream_name_by_subject(subject)
            info = await js.stream_info(name)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                out.append(await js.get_msg(name, seq))
            return out
        finally:
            await nc.close()
    return asyncio.run(read())


def publish(url: str, subject: str, payloads: list[bytes]) -> None:
    async def send() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            try:
                await js.find_stream_name_by_subject(subject)
            except nats.js.errors.NotFoundError:
                await js.add_stream(name="s-" + subject, subjects=[subject])
            for p in payloads:
                await js.publish(subject, p)
        finally:
            await nc.close()
    asyncio.run(send())


def drain(name: str, count: int, namespace: str | None = None,
          timeout: float = 20.0) -> list[shmbus.Message]:
    """``count`` messages of ring ``name`` from its start, copied (fails on fewer)."""
    got: list = []
    await_until(lambda: any(r["name"] == name for r in shmbus.list_rings(namespace)),
                timeout, what=f"ring {name} created by the bridge")
    with shmbus.Consumer(name, start="earliest", namespace=namespace) as c:
        def more() -> bool:
            try:
                for m in c.recv_many(4096, timeout=0.05):
                    got.append((bytes(m), m.key, m.seq))
            except shmbus.Timeout:
                pass
            return len(got) >= count
        await_until(more, timeout, what=f"{count} messages in ring {name}")
        try:
            extra = c.recv_many(10, timeout=0.2)
        except shmbus.Timeout:
            extra = []
        assert not extra, f"more than {count} messages: {[bytes(m) for m in extra]}"
    return got


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [b"m%06d" % i for i in range(start, start + n)]


def run_outbound(url: str, ring: str, subject: str, ns: str) -> None:
    """In a child process: relay until killed."""
    Outbound(ring, url, subject, namespace=ns).run()


def run_inbound(url: str, subject: str, ring: str, ns: str) -> None:
    Inbound(url, subject, ring, namespace=ns, capacity=CAP).run()


# -- the server fixture -------------------------------------------------------------


def test_server_restarts_with_its_store(nats_server):
    publish(nats_server.url, "keep", [b"one", b"two"])
    port = nats_server.port
    nats_server.stop()
    nats_server.start()
    assert nats_server.port == port and nats_server.starts == 2
    assert [m.data for m in stored(nats_server.url, "keep")] == [b"one", b"two"]


# -- relaying -------------------------------------------------------------------------


def test_relay_out_publishes_in_order_with_headers(ns, nats_server):
    with shmbus.Producer("a", capacity=CAP) as pub:
        pub.send_many(payloads(500), keys=[b"user-%d" % (i % 3) for i in range(500)])
        pub.send(b"odd key", key=b"\x00\xff")
        with Outbound("a", nats_server.url, "orders") as out:
            await_until(lambda: out.stats["acked"] == 501, 20, what="501 acks")
        msgs = stored(nats_server.url, "orders")
    assert [m.data for m in msgs] == payloads(500) + [b"odd key"]
    created = shmbus.inspect("a")["created_at_ns"]
    for i, m in enumerate(msgs):
        assert m.headers[SEQ] == str(i)
        assert parse_msg_id(m.headers[MSG_ID]) == (f"{ns}/a@{created}", i)
    assert msgs[4].headers["Shmbus-Key"] == "user-1"
    assert msgs[500].headers["Shmbus-Key-Hex"] == "00ff"
    # Released after the acks: the bridge's durable cursor is at the end.
    (cursor,) = [c for c in shmbus.inspect("a")["consumers"] if c["durable"]]
    assert cursor["lag_messages"] == 0
    shmbus.unlink("a")


def test_relay_out_waits_for_a_stream_then_releases(ns, nats_server):
    """Nothing is released before JetStream stored it: with the server down, the
    bridge's cursor holds every message."""
    nats_server.stop()
    with shmbus.Producer("a", capacity=CAP) as pub:
        pub.send_many(payloads(50))
        out = Outbound("a", nats_server.url, "orders", backoff=(0.05, 0.2))
        with out:
            await_until(lambda: out.stats["failures"] >= 2, 10, what="retries")
            (cursor,) = [c for c in shmbus.inspect("a")["consumers"] if c["durable"]]
            assert cursor["lag_messages"] == 50
            nats_server.start()
            await_until(lambda: out.stats["acked"] == 50, 20, what="50 acks")
        assert "cannot reach" in out.stats["last_error"]
    assert [m.data for m in stored(nats_server.url, "orders")] == payloads(50)
    shmbus.unlink("a")


def test_relay_out_releases_only_what_jetstream_stored(ns, nats_server):
    """A stream that refuses messages after the 5th: the bridge's cursor stays on the
    6th until the stream takes it, then relays the rest in order."""
    from nats.js.api import DiscardPolicy

    async def stream(**limits) -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            await js.stream_info("s")
            await js.update_stream(name="s", subjects=["orders"], **limits)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name="s", subjects=["orders"], **limits)
        await nc.close()
    asyncio.run(stream(max_msgs=5, discard=DiscardPolicy.NEW))
    with shmbus.Producer("a", capacity=CAP) as pub:
        pub.send_many(payloads(50))
        with Outbound("a", nats_server.url, "orders", backoff=(0.05, 0.2)) as out:
            await_until(lambda: out.stats["failures"] >= 2, 20, what="refusals")
            assert "refused seq 5" in out.stats["last_error"]
            (cursor,) = [c for c in shmbus.inspect("a")["consumers"] if c["durable"]]
            assert cursor["next_seq"] == 5
            asyncio.run(stream(max_msgs=-1, discard=DiscardPolicy.NEW))
            await_until(lambda: out.stats["acked"] == 50, 20, what="50 acks")
    assert [m.data for m in stored(nats_server.url, "orders")] == payloads(50)
    shmbus.unlink("a")


def test_relay_out_stops_on_a_message_the_server_never_takes(ns, nats_server):
    with shmbus.Producer("a", capacity=4 << 20) as pub:
        pub.send(b"small")
        pub.send(b"x" * (1536 << 10))  # the server's default max_payload is 1 MiB
        out = Outbound("a", nats_server.url, "orders")
        with pytest.raises(shmbus.MessageTooLarge, match="seq 1 has 1572864 bytes"):
            out.run()
        assert out.stats["acked"] == 1
        (cursor,) = [c for c in shmbus.inspect("a")["consumers"] if c["durable"]]
        assert cursor["next_seq"] == 1  # held, not lost
    shmbus.unlink("a")


def wait_duplicates_forgotten(url: str) -> None:
    """Return once the server's duplicate window of stream ``s`` has passed for every
    id published so far (a probe id published now is forgotten: so are older ones)."""
    async def probe() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await js.publish("probe", b"", headers={MSG_ID: "probe"})
            while (await js.publish("probe", b"", headers={MSG_ID: "probe"})).duplicate:
                await asyncio.sleep(0.01)  # polling the server (under the test timeout)
        finally:
            await nc.close()
    asyncio.run(probe())


def test_relay_out_skips_what_is_stored_beyond_the_duplicate_window(ns, nats_server):
    async def make_stream() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(name="s", subjects=["orders", "probe"],
                                        duplicate_window=0.1)
        await nc.close()
    asyncio.run(make_stream())
    with shmbus.Producer("a", capacity=CAP) as pub:
        pub.send_many(payloads(10))
        with Outbound("a", nats_server.url, "orders", durable="first") as out:
            await_until(lambda: out.stats["acked"] == 10, 20, what="10 acks")
        wait_duplicates_forgotten(nats_server.url)
        # A bridge with a new cursor (as after a crash before the releases): the ring's
        # messages are on the subject already, beyond the duplicate window.
        with Outbound("a", nats_server.url, "orders", durable="second") as out:
            await_until(lambda: out.stats["skipped"] == 10, 20, what="10 skipped")
            pub.send_many(payloads(5, 10))
            await_until(lambda: out.stats["acked"] == 5, 20, what="5 acks")
    msgs = [m for m in stored(nats_server.url, "orders") if m.subject == "orders"]
    assert [m.data for m in msgs] == payloads(15)
    shmbus.unlink("a")


def test_relay_in_writes_stream_order_keyed_by_stream_seq(ns, nats_server):
    publish(nats_server.url, "orders", payloads(300))
    with Inbound(nats_server.url, "orders", "b", capacity=CAP) as inb:
        got = drain("b", 300)
        assert inb.stats["written"] == 300
        # Idle fetches (nothing to fetch for a while) are not failures.
        await_until(lambda: inb.stats.get("idle_fetches", 0) >= 2, 10, what="idle")
        assert (inb.stats["connects"], inb.stats["failures"]) == (1, 0)
    assert [g[0] for g in got] == payloads(300)
    assert [g[1] for g in got] == [b"%d" % (i + 1) for i in range(300)]
    shmbus.unlink("b")


def test_relay_in_restart_does_not_write_twice(ns, nats_server):
    """A new bridge (its JetStream consumer's acks lost or not) starts after the
    ring's last message."""
    publish(nats_server.url, "orders", payloads(100))
    with Inbound(nats_server.url, "orders", "b", capacity=CAP):
        drain("b", 100)
    publish(nats_server.url, "orders", payloads(50, 100))
    # A bridge that never acknowledged anything (another durable name) still writes
    # only what the ring lacks.
    with Inbound(nats_server.url, "orders", "b", durable="fresh") as inb:
        got = drain("b", 150)
        assert inb.stats["written"] == 50
    assert [g[0] for g in got] == payloads(150)
    shmbus.unlink("b")


def test_two_hosts_receive_exactly_what_was_sent(hosts, nats_server):
    a_ns, b_ns = hosts
    n = 5000
    with shmbus.Producer("a", capacity=CAP, namespace=a_ns) as pub, \
            Outbound("a", nats_server.url, "flow", namespace=a_ns), \
            Inbound(nats_server.url, "flow", "b", namespace=b_ns, capacity=CAP):
        for i in range(0, n, 100):
            pub.send_many(payloads(100, i), keys=[b"k%d" % (j % 10) for j in range(100)])
        got = drain("b", n, namespace=b_ns)
    assert [g[0] for g in got] == payloads(n)


# -- faults ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_kill9_of_outbound_mid_stream(hosts, nats_server, procs):
    a_ns, b_ns = hosts
    n = 20000
    shmbus.Producer("b", capacity=4 * CAP, namespace=b_ns).close()
    with shmbus.Producer("a", capacity=4 * CAP, namespace=a_ns) as pub, \
            Inbound(nats_server.url, "flow", "b", namespace=b_ns, capacity=4 * CAP):
        pub.send_many(payloads(n))
        child = support.start(run_outbound, nats_server.url, "a", "flow", a_ns)
        procs.append(child)
        await_until(lambda: shmbus.inspect("b", b_ns)["messages"] > 0, 30,
                    what="the first relayed message")
        kill9(child)
        before = shmbus.inspect("b", b_ns)["messages"]
        with Outbound("a", nats_server.url, "flow", namespace=a_ns):
            got = drain("b", n, namespace=b_ns)
    assert before < n, "the bridge was killed after the stream ended: not mid-stream"
    assert [g[0] for g in got] == payloads(n)
    assert len(stored(nats_server.url, "flow")) == n  # resends were dropped as duplicates


@pytest.mark.timeout(90)
def test_kill9_of_inbound_mid_stream(hosts, nats_server, procs):
    a_ns, b_ns = hosts
    n = 20000
    publish_all = threading.Thread(target=publish,
                                   args=(nats_server.url, "flow", payloads(n)))
    shmbus.Producer("b", capacity=4 * CAP, namespace=b_ns).close()
    child = support.start(run_inbound, nats_server.url, "flow", "b", b_ns)
    procs.append(child)
    publish_all.start()
    await_until(lambda: shmbus.inspect("b", b_ns)["messages"] > 0, 30,
                what="the first relayed message")
    kill9(child)
    before = shmbus.inspect("b", b_ns)["messages"]
    with Inbound(nats_server.url, "flow", "b", namespace=b_ns):
        publish_all.join(30)
        got = drain("b", n, namespace=b_ns)
    assert before < n, "the bridge was killed after the stream ended: not mid-stream"
    assert [g[0] for g in got] == payloads(n)


@pytest.mark.timeout(90)
def test_server_restart_mid_stream(hosts, nats_server):
    a_ns, b_ns = hosts
    n = 20000
    with shmbus.Producer("a", capacity=4 * CAP, namespace=a_ns) as pub, \
            Outbound("a", nats_server.url, "flow", namespace=a_ns,
                     backoff=(0.05, 0.5)) as out, \
            Inbound(nats_server.url, "flow", "b", namespace=b_ns, capacity=4 * CAP,
                    backoff=(0.05, 0.5)) as inb:
        pub.send_many(payloads(n // 2))
        await_until(lambda: out.stats["acked"] > 0, 30, what="the first ack")
        nats_server.stop()
        pub.send_many(payloads(n // 2, n // 2))
        await_until(lambda: out.stats["failures"] > 0 and inb.stats["failures"] > 0, 30,
                    what="both bridges noticing the outage")
        nats_server.start()
        got = drain("b", n, namespace=b_ns)
        assert out.stats["connects"] >= 2 and inb.stats["connects"] >= 2
    assert [g[0] for g in got] == payloads(n)


def test_overwrite_ring_counts_what_the_outage_lost(ns, nats_server):
    nats_server.stop()
    with shmbus.Producer("a", capacity=1 << 14, on_full="overwrite") as pub:
        out = Outbound("a", nats_server.url, "orders", backoff=(0.05, 0.2))
        with out:
            await_until(lambda: out.stats["failures"] >= 1, 10, what="a retry")
            pub.send_many(payloads(5000))  # far more than 16 KiB: laps the cursor
            nats_server.start()
            await_until(lambda: out.stats["lost"] > 0 and out.connected.is_set()
                        and shmbus.inspect("a")["consumers"][0]["lag_messages"] == 0,
                        20, what="the loss counted, the rest relayed")
        relayed = [m.data for m in stored(nats_server.url, "orders")]
    assert out.stats["lost"] + len(relayed) == 5000
    assert relayed == payloads(5000)[-len(relayed):]
    shmbus.unlink("a")


# -- one live bridge per (ring, direction) ------------------------------------------


@pytest.mark.timeout(90)
def test_standby_takes_over_from_a_killed_bridge(hosts, nats_server, procs):
    a_ns, b_ns = hosts
    n = 20000
    shmbus.Producer("b", capacity=4 * CAP, namespace=b_ns).close()
    with shmbus.Producer("a", capacity=4 * CAP, namespace=a_ns) as pub, \
            Inbound(nats_server.url, "flow", "b", namespace=b_ns, capacity=4 * CAP):
        child = support.start(run_outbound, nats_server.url, "a", "flow", a_ns)
        procs.append(child)
        await_until(lambda: any(c["durable"] for c in shmbus.inspect("a", a_ns)
                                ["consumers"]), 30, what="the first bridge leading")
        standby = Outbound("a", nats_server.url, "flow", namespace=a_ns)
        with standby:
            pub.send_many(payloads(n))
            await_until(lambda: shmbus.inspect("b", b_ns)["messages"] > 0, 30,
                        what="the first relayed message")
            assert not standby.leading.is_set()
            kill9(child)
            assert standby.leading.wait(10), "the standby did not take over"
            got = drain("b", n, namespace=b_ns)
        assert standby.stats["acked"] > 0
    assert [g[0] for g in got] == payloads(n)


def test_second_bridge_stands_by_until_the_first_stops(ns, nats_server):
    shmbus.Producer("a", capacity=CAP).close()
    first = Outbound("a", nats_server.url, "orders")
    second = Outbound("a", nats_server.url, "orders")
    with first:
        assert first.leading.wait(10)
        with second:
            assert first.connected.wait(10)
            assert second.standing_by.wait(10)
            assert not second.leading.is_set()
            first.stop()
            assert second.leading.wait(10)
            assert second.connected.wait(10)
    shmbus.unlink("a")


@pytest.mark.parametrize("state", ["standing by", "backing off", "relaying", "inbound"])
def test_stop_ends_a_bridge_promptly_in_every_state(ns, nats_server, state):
    import time
    shmbus.Producer("a", capacity=CAP).close()
    first = Outbound("a", nats_server.url, "orders")
    url = nats_server.url
    if state == "backing off":
        nats_server.stop()
    relay = (Inbound(url, "orders", "b", capacity=CAP) if state == "inbound" else
             Outbound("a", url, "orders", backoff=(5.0, 5.0)))
    with first if state == "standing by" else relay:
        if state == "standing by":
            assert first.leading.wait(10)  # else the second may take the lead first
            relay.start()
            assert relay.standing_by.wait(10)
        elif state == "backing off":
            await_until(lambda: relay.stats["failures"] >= 1, 10, what="a failure")
        else:
            assert relay.connected.wait(10)
        began = time.monotonic()
        assert relay.stop(timeout=5)
        assert time.monotonic() - began < 1.0
    for ring in ("a", "b"):
        shmbus.unlink(ring)


def test_with_block_raises_what_ended_the_bridge_thread(ns, nats_server):
    relay = Outbound("missing", nats_server.url, "orders")
    with pytest.raises(shmbus.RingNotFound):
        with relay:
            assert relay._thread.join(10) is None and not relay._thread.is_alive()
    assert relay.error is None  # raised once


def test_two_cursors_relay_one_ring_to_two_subjects(ns, nats_server):
    with shmbus.Producer("a", capacity=CAP) as pub:
        pub.send_many(payloads(100))
        with Outbound("a", nats_server.url, "one") as one, \
                Outbound("a", nats_server.url, "two", durable="second") as two:
            await_until(lambda: one.stats["acked"] == two.stats["acked"] == 100, 20,
                        what="100 acks on both")
            assert not one.standing_by.is_set() and not two.standing_by.is_set()
    assert [m.data for m in stored(nats_server.url, "one")] == payloads(100)
    assert [m.data for m in stored(nats_server.url, "two")] == payloads(100)
    shmbus.unlink("a")


def test_relay_in_waits_for_room_in_a_full_block_ring(ns, nats_server):
    """A slow durable consumer holds the bridge back; nothing is lost or doubled."""
    publish(nats_server.url, "orders", payloads(3000))
    shmbus.Producer("b", capacity=1 << 14).close()  # 16 KiB: a few hundred messages
    got = []
    with shmbus.Consumer("b", durable="slow", start="earliest") as slow, \
            Inbound(nats_server.url, "orders", "b") as inb:
        def read() -> bool:
            try:
                got.extend(bytes(m) for m in slow.recv_many(100, timeout=0.05))
            except shmbus.Timeout:
                pass
            return len(got) >= 3000
        await_until(read, 30, what="3000 messages through a 16 KiB ring")
        assert inb.stats["written"] == 3000
    assert got == payloads(3000)
    shmbus.unlink("b")
