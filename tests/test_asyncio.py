"""shmbus.asyncio: awaitable receive and send, woken through the wake-up FIFO."""

from __future__ import annotations

import asyncio
import time

import pytest

import shmbus
import shmbus.asyncio as sa
from shmbus.layout import H_PRODUCER_SLEEP, S_SLEEP, slot_word

from . import procs as P
from .support import SPAWN, start
from .test_poller import _send_when_polled

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def long_bounds(monkeypatch):
    """Bounded waits of 30 s: only a write to the FIFO can end a wait early."""
    import shmbus.asyncio
    monkeypatch.setattr(shmbus.asyncio, "MAX_SLEEP", 30.0)
    monkeypatch.setattr(shmbus.asyncio, "LONG_SLEEP", 30.0)


def test_a_send_in_another_process_wakes_the_awaiting_receive(ns, procs, long_bounds):
    shmbus.Producer("a", capacity=1 << 14).close()

    async def main() -> None:
        async with sa.Consumer("a") as sub:
            procs.append(start(_send_when_polled, ns, "a", sub.sync.slot, b"hello"))
            t0 = time.monotonic()
            msg = await sub.recv(timeout=20)
            assert bytes(msg) == b"hello"
            assert time.monotonic() - t0 < 10
            assert not sub.sync._words[slot_word(sub.sync.slot) + S_SLEEP] & 1

    try:
        asyncio.run(main())
        procs[-1].join(10)
        assert procs[-1].exitcode == 0
    finally:
        shmbus.unlink("a")


def test_recv_timeout_recv_many_async_for_and_objects(ns):
    async def main() -> None:
        async with sa.Producer("a", capacity=1 << 14) as pub, sa.Consumer("a") as sub:
            with pytest.raises(shmbus.Timeout):
                await sub.recv(timeout=0.02)
            for i in range(5):
                await pub.send(b"%d" % i)
            assert [bytes(m) for m in await sub.recv_many(3)] == [b"0", b"1", b"2"]
            got = []
            async for msg in sub:
                got.append(bytes(msg))
                if len(got) == 2:
                    break
            assert got == [b"3", b"4"]
            await pub.send_many([b"5", b"6"])
            assert [m.seq for m in await sub.recv_many(10, timeout=1)] == [5, 6]
            await pub.send_obj({"k": [1, 2]})
            assert await sub.recv_obj(timeout=1) == {"k": [1, 2]}
            with pytest.raises(shmbus.Timeout):
                await sub.recv_obj(timeout=0.01)

    asyncio.run(main())
    shmbus.unlink("a")


def test_cancelling_an_awaiting_recv_loses_nothing(ns, long_bounds):
    async def main() -> None:
        async with sa.Producer("a", capacity=1 << 14) as pub, sa.Consumer("a") as sub:
            words, word = sub.sync._words, slot_word(sub.sync.slot) + S_SLEEP
            # Cancelled while waiting, then cancelled just as a message arrives.
            for data in (b"first", b"second"):
                task = asyncio.create_task(sub.recv())
                while not words[word] & 1:  # armed: it waits on the FIFO
                    await asyncio.sleep(0)
                if data == b"second":
                    await pub.send(data)  # the FIFO is readable; the task has not run
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert not words[word] & 1  # disarmed
                if data == b"first":
                    await pub.send(data)
                assert bytes(await sub.recv(timeout=1)) == data
            del words

    asyncio.run(main())
    shmbus.unlink("a")


@pytest.mark.parametrize("how", ["recv", "release"])
def test_send_awaits_room_and_a_release_in_another_process_wakes_it(ns, procs,
                                                                    long_bounds, how):
    async def main() -> None:
        async with sa.Producer("full", capacity=4096) as pub:
            go, attached, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
            procs.append(start(P.release_when_producer_sleeps, ns, "full", how, go,
                               attached, results))
            assert attached.wait(30)
            fails = 0
            while fails < 3:  # full for a 100-byte message
                try:
                    pub.sync.send(b"f" * 100, timeout=0)
                except shmbus.Timeout:
                    fails += 1
            go.set()
            t0 = time.monotonic()
            await pub.send(b"after the wait" + b"!" * 86, timeout=20)
            assert time.monotonic() - t0 < 10
            assert results.get(timeout=10) == b"after the wait" + b"!" * 86
            assert not pub.sync._words[H_PRODUCER_SLEEP] & 1

    try:
        asyncio.run(main())
        procs[-1].join(10)
        assert procs[-1].exitcode == 0
    finally:
        shmbus.unlink("full")


def test_an_awaiting_consumer_sleeps(ns):
    async def main() -> float:
        async with sa.Producer("a", capacity=4096), sa.Consumer("a") as sub:
            cpu0, t0 = time.process_time(), time.monotonic()
            with pytest.raises(shmbus.Timeout):
                await sub.recv(timeout=1.0)
            return (time.process_time() - cpu0) / (time.monotonic() - t0)

    share = asyncio.run(main())
    assert share < 0.05, f"an idle awaiting recv used {share:.1%} of a core"
    shmbus.unlink("a")


def test_an_awaitable_inbox_and_a_wrapped_consumer(ns, long_bounds):
    async def main() -> None:
        async with sa.Inbox("in", capacity=1 << 14) as inbox:
            task = asyncio.create_task(inbox.recv(timeout=20))
            await asyncio.sleep(0)  # it waits
            with shmbus.Outbox("in") as out:
                out.send(b"to the inbox")
                t0 = time.monotonic()
                msg = await task
                assert bytes(msg) == b"to the inbox" and time.monotonic() - t0 < 10
        with shmbus.Producer("w", capacity=4096) as pub:
            sub = sa.Consumer.wrap(shmbus.Consumer("w"))
            async with sub:
                task = asyncio.create_task(sub.recv(timeout=20))
                await asyncio.sleep(0)
                pub.send(b"wrapped")
                assert bytes(await task) == b"wrapped"
            assert sub.sync.closed

    asyncio.run(main())
    shmbus.unlink("w")


def test_a_send_woken_by_too_small_a_release_waits_again_without_spinning(ns):
    async def main() -> None:
        async with sa.Producer("full", capacity=4096) as pub:
            with shmbus.Consumer("full") as sub:
                fails = 0
                while fails < 3:
                    try:
                        pub.sync.send(b"f" * 100, timeout=0)
                    except shmbus.Timeout:
                        fails += 1
                task = asyncio.create_task(pub.send(b"z" * 1000, timeout=20))
                words = pub.sync._words
                while not words[H_PRODUCER_SLEEP] & 1:
                    await asyncio.sleep(0)
                sub.recv(timeout=0)
                sub.recv(timeout=0)  # releases one message: room for 100 bytes, not 1000
                cpu0, t0 = time.process_time(), time.monotonic()
                await asyncio.sleep(0.3)
                share = (time.process_time() - cpu0) / (time.monotonic() - t0)
                assert not task.done()
                assert share < 0.2, f"a send waiting for room used {share:.0%} of a core"
                sub.recv_many(1 << 20, timeout=0)
                sub.release()
                assert await task > 0
                del words

    asyncio.run(main())
    shmbus.unlink("full")


def test_an_awaitable_worker(ns, long_bounds):
    from shmbus.balancer import membership

    async def main() -> None:
        async with sa.Worker("g", "w1", capacity=1 << 14) as worker:
            assert isinstance(worker.sync, shmbus.balancer.Worker)
            task = asyncio.create_task(worker.recv(timeout=20))
            await asyncio.sleep(0)
            with shmbus.Producer(membership.worker_ring("g", "w1")) as pub:
                pub.send(b"job")
                assert bytes(await task) == b"job"

    asyncio.run(main())
    shmbus.unlink(membership.worker_ring("g", "w1"))


@pytest.mark.parametrize("where", ["in the loop", "from another thread"])
def test_closing_wakes_an_awaiting_recv_with_closed(ns, long_bounds, where):
    import threading

    async def main() -> None:
        async with sa.Producer("a", capacity=4096):
            sub = sa.Consumer("a")
            task = asyncio.create_task(sub.recv(timeout=20))
            words, word = sub.sync._words, slot_word(sub.sync.slot) + S_SLEEP
            while not words[word] & 1:
                await asyncio.sleep(0)
            del words
            t0 = time.monotonic()
            if where == "in the loop":
                sub.close()
            else:
                t = threading.Thread(target=sub.close)
                t.start()
                t.join(10)
            with pytest.raises(shmbus.Closed):
                await task
            assert time.monotonic() - t0 < 10  # woken, not the 30 s bound
            sub.close()  # again: harmless

    asyncio.run(main())
    shmbus.unlink("a")
