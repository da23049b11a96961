"""Python objects through rings: a pipeline of dicts, and numpy frames without copies.

Run it with ``python examples/objects.py``.  Three processes:

    source --"orders" (dicts)--> pricer --"priced" (dicts)--> main
    source --"frames" ({"id", "frame": 480x640 uint8 array})--> main

``send_obj`` pickles each dict (protocol 5); a numpy array inside it is copied once,
into the ring, and ``recv_obj`` hands it out as a read-only view of the ring: valid
until the next receive, so what must outlive it is copied (``np.array(view)`` or
``recv_obj(copy=True)``).  Everything is made in a namespace of its own (or
``$SHMBUS_NAMESPACE``) and removed at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

import shmbus

ORDERS, PRICED, FRAMES = "orders", "priced", "frames"
COUNT, N_FRAMES = 20_000, 200
SHAPE = (480, 640)


def source(ns: str, ready: Any) -> None:
    """Send COUNT order dicts, then N_FRAMES camera frames, each with its id."""
    ready.wait(30)
    with shmbus.Producer(ORDERS, namespace=ns) as orders, \
            shmbus.Producer(FRAMES, namespace=ns) as frames:
        for i in range(COUNT):
            orders.send_obj({"id": i, "sku": f"sku-{i % 7}", "qty": i % 5 + 1})
        orders.send_obj(None)  # end of stream
        frame = np.zeros(SHAPE, np.uint8)
        for i in range(N_FRAMES):
            frame[:] = i % 256
            frames.send_obj({"id": i, "frame": frame})  # one copy: into the ring
        frames.send_obj(None)


def pricer(ns: str, ready: Any) -> None:
    """Read orders, add a price, pass them on as JSON (any codec works)."""
    with shmbus.Consumer(ORDERS, namespace=ns) as sub, \
            shmbus.Producer(PRICED, namespace=ns) as out:
        ready.set()
        while (order := sub.recv_obj(timeout=30)) is not None:
            order["price"] = round(9.99 * order["qty"], 2)
            out.send_obj(order, key=order["sku"], codec="json")
        out.send_obj(None, codec="json")


def main() -> None:
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"objects{os.getpid()}"
    for ring in (ORDERS, PRICED, FRAMES):  # create them before anyone opens them
        shmbus.Producer(ring, capacity=8 << 20, namespace=ns).close()
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    procs = [ctx.Process(target=source, args=(ns, ready)),
             ctx.Process(target=pricer, args=(ns, ready))]
    try:
        with shmbus.Consumer(PRICED, namespace=ns) as priced, \
                shmbus.Consumer(FRAMES, namespace=ns) as frames:
            for p in procs:
                p.start()
            t0, total, n = time.perf_counter(), 0.0, 0
            while (order := priced.recv_obj(timeout=30)) is not None:
                total += order["price"]
                n += 1
            dt = time.perf_counter() - t0
            print(f"pipeline: {n:,} priced orders (total {total:,.2f}) in {dt:.2f} s, "
                  f"{n / dt:,.0f} dicts/s through two rings")
            t0, means, kept = time.perf_counter(), [], None
            while (msg := frames.recv_obj(timeout=30)) is not None:
                view = msg["frame"]  # a read-only view into the ring: zero copies
                means.append(float(view.mean()))
                if msg["id"] == 42:
                    kept = np.array(view)  # a copy of our own: outlives the message
            dt = time.perf_counter() - t0
            assert kept is not None and (kept == 42).all() and means[7] == 7.0
            print(f"frames: {len(means)} arrays of {SHAPE} uint8 received as views in "
                  f"{dt:.2f} s ({len(means) * kept.nbytes / dt / 1e9:.2f} GB/s), "
                  f"frame 42 kept as a copy (writable: {kept.flags.writeable})")
        for p in procs:
            p.join(60)
            if p.exitcode != 0:
                raise SystemExit(f"{p.name} failed (exit code {p.exitcode})")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
        for ring in (ORDERS, PRICED, FRAMES):
            shmbus.unlink(ring, namespace=ns)
    left = [e for e in os.listdir("/dev/shm") if ns in e]
    print("removed the rings; /dev/shm is clean" if not left else f"leftovers: {left}")


if __name__ == "__main__":
    main()
