"""AsyncioLatency: from ``send`` in another process to the awaiting coroutine.

    sender process --ring--> asyncio loop: await sub.recv()   (shmbus.asyncio.Consumer)

Three figures, with the default event loop (``asyncio.run``):

* latency: the sender waits until the consumer is armed (asleep on its wake-up FIFO:
  the case that needs a wake-up), then sends; latency is ``time.monotonic_ns()`` when
  ``await sub.recv()`` returns minus the message's send timestamp.  p50 / p99 / max.
* idle CPU: an ``await sub.recv(timeout=S)`` that nothing answers, CPU time of the
  whole process over the wait as percent of one core.
* loop stalls: in a second run of the same, a second task yields to the loop
  (``await asyncio.sleep(0)``) in a loop and records the longest gap between two of
  its turns, in the loop thread's CPU time (what the loop ran meanwhile: shmbus's
  wake-up and receive, and the loop itself) and in wall time (the OS's preemption of
  a busy process on a loaded host included).  Not during the latency run: the busy
  task would change what it measures.

Targets (issue 14): p50 <= 30 us, idle < 0.1 % of a core, no stall > 1 ms.

    python -m bench.asyncio_latency [--messages N] [--idle S] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import time

import shmbus
import shmbus.asyncio as sa
from shmbus.layout import S_SLEEP, slot_word
from shmbus.segment import Segment
from shmbus.tools.benchkit import harness

RING = "asyncio-latency"


def sender(ns: str, slot: int, count: int, ready) -> None:
    """Send ``count`` messages, each once the consumer of ``slot`` has armed anew."""
    seg = Segment.open(ns, RING)
    words, epoch = seg.words, slot_word(slot) + S_SLEEP
    try:
        with shmbus.Producer(RING, namespace=ns) as pub:
            ready.set()
            last = -1
            for i in range(count):
                deadline = time.monotonic() + 10
                # Until it waits again (a new odd epoch): one message per wake-up,
                # never a queue (spinning: the host has 2 cores).
                while not (words[epoch] & 1 and words[epoch] != last):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the consumer never armed")
                    os.sched_yield()
                last = words[epoch]
                pub.send(b"%d" % i)
    finally:
        del words
        seg.close()


async def _run(ns: str, count: int, with_ticker: bool) -> dict:
    ctx = mp.get_context("spawn")
    shmbus.Producer(RING, capacity=1 << 16, namespace=ns).close()
    async with sa.Consumer(RING, namespace=ns) as sub:
        ready = ctx.Event()
        proc = ctx.Process(target=sender, args=(ns, sub.sync.slot, count, ready))
        proc.start()
        wall_gap = cpu_gap = 0.0
        done = False

        async def ticker() -> None:
            # The longest gap between two turns of this task: wall time (anything,
            # the OS's preemption included) and the loop thread's CPU time (what the
            # loop ran meanwhile: shmbus's wake-up and receive).
            nonlocal wall_gap, cpu_gap
            wall, cpu = time.perf_counter(), time.thread_time()
            while not done:
                await asyncio.sleep(0)
                w, c = time.perf_counter(), time.thread_time()
                wall_gap, cpu_gap = max(wall_gap, w - wall), max(cpu_gap, c - cpu)
                wall, cpu = w, c

        try:
            while not ready.wait(0):
                await asyncio.sleep(0.001)
            tick = asyncio.create_task(ticker()) if with_ticker else None
            lat = []
            for _ in range(count):
                msg = await sub.recv(timeout=10)
                lat.append((time.monotonic_ns() - msg.timestamp_ns) / 1000)
            done = True
            if tick is not None:
                await tick
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if with_ticker:
        return {"stall_cpu_ms": cpu_gap * 1000, "stall_wall_ms": wall_gap * 1000}
    warm = lat[len(lat) // 10:]
    warm.sort()
    return {"p50_us": warm[len(warm) // 2], "p99_us": warm[int(len(warm) * 0.99)],
            "max_us": warm[-1]}


async def _idle(ns: str, seconds: float) -> float:
    async with sa.Producer(RING, capacity=1 << 16, namespace=ns), \
            sa.Consumer(RING, namespace=ns) as sub:
        cpu0, t0 = time.process_time(), time.monotonic()
        try:
            await sub.recv(timeout=seconds)
        except shmbus.Timeout:
            pass
        return 100 * (time.process_time() - cpu0) / (time.monotonic() - t0)


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle wait")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ns = f"bench-async-{os.getpid()}"
    runs, idle = [], []
    try:
        for i in range(args.repeats):
            print(f"  round {i + 1}/{args.repeats} ...", flush=True)
            runs.append(asyncio.run(_run(ns, args.messages, False)))
            shmbus.unlink(RING, namespace=ns)
            runs[-1].update(asyncio.run(_run(ns, args.messages, True)))
            shmbus.unlink(RING, namespace=ns)
            idle.append(asyncio.run(_idle(ns, args.idle)))
            shmbus.unlink(RING, namespace=ns)
    finally:
        shmbus.unlink(RING, namespace=ns)
    summary = {key: _stats([r[key] for r in runs]) for key in runs[0]}
    summary["idle_cpu_pct"] = _stats(idle)
    path = "compiled" if shmbus.compiled else "pure Python"
    rows = [["send -> awaiting recv p50, µs", harness.fmt_value(summary["p50_us"], 1, 1),
             "<= 30"],
            ["p99, µs", harness.fmt_value(summary["p99_us"], 1, 1), "-"],
            ["max, µs", harness.fmt_value(summary["max_us"], 1, 1), "-"],
            ["longest loop stall (loop thread CPU), ms",
             harness.fmt_value(summary["stall_cpu_ms"], 1, 3), "<= 1"],
            ["longest gap between turns (wall, OS preemption included), ms",
             harness.fmt_value(summary["stall_wall_ms"], 1, 3), "-"],
            ["idle awaiting consumer, % of a core",
             harness.fmt_value(summary["idle_cpu_pct"], 1, 3), "< 0.1"]]
    print(harness.markdown(
        f"shmbus.asyncio, {args.messages} messages, default loop, {path} path, "
        f"median (min-max) of {args.repeats}", rows, ["figure", "measured", "target"]))
    return harness.result("asyncio_latency", args.json, messages=args.messages,
                          compiled=shmbus.compiled, results=summary)


if __name__ == "__main__":
    main()
