"""shmbus quickstart: one producer process, two consumer processes, one ring.

Run it with ``python examples/quickstart.py``.  It creates ring "quickstart" in a
namespace of its own, sends 200,000 messages with keys, lets two consumers (one of them
durable) receive every one of them, prints the rates, and removes everything it made.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.synchronize import Event

import shmbus

RING = "quickstart"
COUNT = 200_000


def produce(ns: str, ready: list[Event]) -> None:
    with shmbus.Producer(RING, namespace=ns) as pub:
        for consumer_ready in ready:
            consumer_ready.wait(30)
        t0 = time.perf_counter()
        batch = [b"x" * 64] * 100
        for i in range(0, COUNT, 100):
            pub.send_many(batch, keys=[f"user-{(i + j) % 10}" for j in range(100)])
        pub.send(b"", key="done")
        print(f"producer: sent {COUNT:,} messages in {time.perf_counter() - t0:.2f} s")


def consume(ns: str, durable: str | None, ready: Event) -> None:
    with shmbus.Consumer(RING, namespace=ns, durable=durable) as sub:
        ready.set()
        n, t0 = 0, 0.0
        for msg in sub:
            if not n:
                t0 = time.perf_counter()
            if msg.key == b"done":
                break
            n += 1
        rate = n / (time.perf_counter() - t0)
        who = f"durable {durable!r}" if durable else "anonymous"
        print(f"consumer ({who}): received {n:,} messages, {rate / 1e6:.2f} M msg/s")


def main() -> None:
    # A namespace of its own (SHMBUS_NAMESPACE if set: the tests run it in theirs).
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"quickstart{os.getpid()}"
    ctx = mp.get_context("spawn")
    shmbus.Producer(RING, capacity=1 << 22, namespace=ns).close()
    try:
        ready = [ctx.Event(), ctx.Event()]
        consumers = [ctx.Process(target=consume, args=(ns, None, ready[0])),
                     ctx.Process(target=consume, args=(ns, "audit", ready[1]))]
        for p in consumers:
            p.start()
        producer = ctx.Process(target=produce, args=(ns, ready))
        producer.start()
        for p in [producer, *consumers]:
            p.join(120)
        for line in shmbus.list_rings(ns):
            print(f"ring {line['name']}: {line['messages']:,} messages, "
                  f"{line['durable']} durable cursor(s)")
    finally:
        shmbus.unlink(RING, namespace=ns)
    print("removed ring; /dev/shm is clean" if not [
        e for e in os.listdir("/dev/shm") if ns in e] else "leftovers in /dev/shm!")


if __name__ == "__main__":
    main()
