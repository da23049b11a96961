"""An asyncio service on shmbus: requests in on one ring, replies out on another.

Run it with ``python examples/asyncio_service.py``.  A client process sends requests
(dicts, with ``send_obj``) on ring "requests"; the service, one asyncio program, awaits
them with ``shmbus.asyncio`` (no thread per ring, no busy loop: its event loop sleeps
on the rings' wake-up descriptors), handles each in its own task and awaits room to
send the reply on ring "replies", while a heartbeat task shows that the loop is never
blocked.  Everything it made is removed at the end.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from typing import Any

import shmbus
import shmbus.asyncio

COUNT = 200


def client(ns: str) -> None:
    with shmbus.Producer("requests", namespace=ns) as out, \
            shmbus.Consumer("replies", namespace=ns, start="earliest") as replies:
        t0 = time.perf_counter()
        for i in range(COUNT):
            out.send_obj({"id": i, "x": i * 1.5})
            reply = replies.recv_obj(timeout=10)
            assert reply["id"] == i
        per = (time.perf_counter() - t0) / COUNT * 1e6
        print(f"client: {COUNT} requests answered, {per:.0f} us per round trip")
        out.send_obj({"id": -1})  # stop


async def handle(request: dict[str, Any], replies: shmbus.asyncio.Producer) -> None:
    await replies.send_obj({"id": request["id"], "y": request["x"] * 2}, timeout=10)


async def service(ns: str, ready: Any) -> None:
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while True:
            beats += 1
            await asyncio.sleep(0.01)

    async with shmbus.asyncio.Consumer("requests", namespace=ns) as requests, \
            shmbus.asyncio.Producer("replies", capacity=1 << 16, namespace=ns) as replies:
        ready.set()
        beat = asyncio.create_task(heartbeat())
        handled = 0
        while True:
            request = await requests.recv_obj(timeout=30)
            if request["id"] < 0:
                break
            await handle(request, replies)
            handled += 1
        beat.cancel()
        print(f"service: handled {handled} requests; the heartbeat ran {beats} times "
              "meanwhile (the loop was never blocked)")


def main() -> None:
    # A namespace of its own (SHMBUS_NAMESPACE if set: the tests run it in theirs).
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"example-asyncio-{os.getpid()}"
    shmbus.Producer("requests", capacity=1 << 16, namespace=ns).close()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=client, args=(ns,))
    try:
        async def run() -> None:
            task = asyncio.create_task(service(ns, ready))
            while not ready.is_set():
                await asyncio.sleep(0.001)
            proc.start()
            await task
        asyncio.run(run())
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
        for ring in ("requests", "replies"):
            shmbus.unlink(ring, namespace=ns)


if __name__ == "__main__":
    main()
