"""Waiting on several rings at once with shmbus.Poller (and with ``selectors``).

Run it with ``python examples/poller.py``.  Three worker processes each publish results
on a ring of their own, at their own pace; this process waits on all three rings with
one ``Poller`` (asleep while nothing arrives: no busy loop), then reads the same rings
once more with the standard library's ``selectors``, using each consumer's
``fileno()``.  Everything it made is removed at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import selectors
import time

import shmbus

RINGS = ["results.a", "results.b", "results.c"]
EACH = 20


def worker(ns: str, ring: str, pause: float) -> None:
    with shmbus.Producer(ring, namespace=ns) as pub:
        for i in range(2 * EACH):
            pub.send(f"{ring} #{i}".encode(), timeout=10)
            time.sleep(pause)  # a worker that takes its time


def with_poller(subs: list[shmbus.Consumer], want: int) -> int:
    poller = shmbus.Poller()
    for sub in subs:
        poller.register(sub)
    got = 0
    while got < want:
        for sub in poller.poll(timeout=10):
            msg = sub.try_recv()  # None is possible (the poll saw padding): fine
            if msg is not None:
                got += 1
    return got


def with_selectors(subs: list[shmbus.Consumer], want: int) -> int:
    """The same with ``selectors``: arm, select with a bounded timeout, disarm."""
    sel = selectors.DefaultSelector()
    for sub in subs:
        sel.register(sub, selectors.EVENT_READ)  # uses sub.fileno()
    got = 0
    while got < want:
        if not any([sub.arm() for sub in subs]):  # arm all; True: something is there
            sel.select(timeout=0.01)  # a wake-up missed while arming costs <= 10 ms
        for sub in subs:
            sub.disarm()
            while (msg := sub.try_recv()) is not None:
                got += 1
    sel.close()
    return got


def main() -> None:
    # A namespace of its own (SHMBUS_NAMESPACE if set: the tests run it in theirs).
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"example-poller-{os.getpid()}"
    for ring in RINGS:  # create the rings first, so no message is sent before we listen
        shmbus.Producer(ring, capacity=1 << 16, namespace=ns).close()
    subs = [shmbus.Consumer(ring, namespace=ns, start="earliest") for ring in RINGS]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(ns, ring, 0.001 * (i + 1)))
             for i, ring in enumerate(RINGS)]
    try:
        for p in procs:
            p.start()
        cpu, t0 = time.process_time(), time.monotonic()
        total = 2 * EACH * len(RINGS)
        first = with_poller(subs, total // 2)  # may take a few more than half
        print(f"Poller:    {first} messages from {len(subs)} rings")
        print(f"selectors: {with_selectors(subs, total - first)} messages from "
              f"{len(subs)} rings")
        print(f"waiting cost {time.process_time() - cpu:.3f} s of CPU in "
              f"{time.monotonic() - t0:.2f} s")
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for sub in subs:
            sub.close()
        for ring in RINGS:
            shmbus.unlink(ring, namespace=ns)


if __name__ == "__main__":
    main()
