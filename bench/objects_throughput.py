"""ObjectsThroughput: Python objects from one process to another.

    producer --send_obj(obj)--> ring --recv_obj()--> consumer
    producer --Queue.put(obj)--> multiprocessing.Queue --get()--> consumer

Two objects: a small dict (five fields, about 100 bytes pickled) and a dict holding a
1 MiB numpy array.  shmbus pickles with protocol 5: the array is copied once into the
ring and the consumer gets a read-only view of it (zero copies out), where
``multiprocessing.Queue`` pickles it into a pipe and unpickles a copy.  The consumer
touches one element of each array.  Reports objects/s received (median of the
interleaved runs, min-max), CPU microseconds per object (producer + consumer), and
shmbus's ratio to ``multiprocessing.Queue`` measured in the same run.

    python -m bench.objects_throughput [--count N] [--arrays N] [--repeats N]
                                       [--json FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

import shmbus
from shmbus.tools.benchkit import harness

SPAWN = mp.get_context("spawn")
ARRAY_BYTES = 1 << 20
TIMEOUT = 120.0


def make(case: str, i: int, array: np.ndarray | None) -> Any:
    if case == "dict":
        return {"id": i, "sku": "sku-42", "qty": 3, "price": 9.99, "tags": ["a", "b"]}
    return {"id": i, "frame": array}


def _objects(case: str, n: int) -> list[Any]:
    array = np.ones(ARRAY_BYTES // 8, np.float64) if case != "dict" else None
    return [make(case, i, array) for i in range(n)]


def _produce(transport: str, where: Any, case: str, n: int, codec: str, ready: Any,
             out: Any) -> None:
    objs = _objects(case, n)
    ready.wait(TIMEOUT)
    cpu0 = time.process_time()
    if transport == "queue":
        for obj in objs:
            where.put(obj)
    else:
        with shmbus.Producer("objects", namespace=where) as pub:
            send = pub.send_obj
            for obj in objs:
                send(obj, codec=codec)
    out.put(("producer", time.process_time() - cpu0))


def _consume(transport: str, where: Any, case: str, n: int, ready: Any, out: Any) -> None:
    touch = case != "dict"
    if transport == "queue":
        recv, sub = (lambda: where.get(timeout=TIMEOUT)), None
        ready.set()
    else:
        sub = shmbus.Consumer("objects", namespace=where)
        recv = lambda: sub.recv_obj(TIMEOUT)  # noqa: E731
        ready.set()
    obj = recv()  # timing starts at the first object: start-up is not counted
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n - 1):
        obj = recv()
        if touch:
            obj["frame"][0]
    out.put(("consumer", time.perf_counter() - t0, time.process_time() - cpu0))
    if sub is not None:
        sub.close()


def run(transport: str, case: str, n: int, codec: str = "pickle",
        pure: bool = False) -> dict:
    """One run: ``n`` objects of ``case`` through ``transport`` ("shmbus" or
    "queue") between two spawned processes."""
    ns = f"bench-objects{os.getpid()}"
    ready, out = SPAWN.Event(), SPAWN.Queue()
    if transport == "queue":
        where: Any = SPAWN.Queue()
    else:
        where = ns
        shmbus.Producer("objects", capacity=16 << 20, namespace=ns).close()
    saved = os.environ.get("SHMBUS_PURE_PYTHON"), os.environ.get("SHMBUS_REQUIRE_COMPILED")
    if pure:  # the children run the pure-Python path
        os.environ["SHMBUS_PURE_PYTHON"] = "1"
        os.environ.pop("SHMBUS_REQUIRE_COMPILED", None)
    procs = [SPAWN.Process(target=_consume, args=(transport, where, case, n, ready, out)),
             SPAWN.Process(target=_produce,
                           args=(transport, where, case, n, codec, ready, out))]
    try:
        for p in procs:
            p.start()
    finally:
        for key, value in zip(("SHMBUS_PURE_PYTHON", "SHMBUS_REQUIRE_COMPILED"), saved):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        got = [harness.collect(out, procs, TIMEOUT) for _ in procs]
        for p in procs:
            p.join(TIMEOUT)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
        if transport != "queue":
            shmbus.unlink("objects", namespace=ns)
    consumer = next(g for g in got if g[0] == "consumer")
    producer = next(g for g in got if g[0] == "producer")
    dt = consumer[1]
    return {"rate": (n - 1) / dt,
            "cpu_us_per_object": 1e6 * (consumer[2] + producer[1]) / n}


def cases(count: int, arrays: int) -> list[tuple[str, Any]]:
    out = []
    for case, n in (("dict", count), ("1MiB array", arrays)):
        rows = [("shmbus", dict(transport="shmbus")),
                ("shmbus-pure", dict(transport="shmbus", pure=True)),
                ("multiprocessing.Queue", dict(transport="queue"))]
        if case == "dict":
            rows.insert(1, ("shmbus codec=json", dict(transport="shmbus", codec="json")))
        for name, kw in rows:
            out.append((f"{case} {name}",
                        lambda case=case, n=n, kw=kw: run(case=case, n=n, **kw)))
    return out


def render(summary: dict) -> str:
    out = []
    for case in ("dict", "1MiB array"):
        base = summary.get(f"{case} multiprocessing.Queue")
        rows = []
        for name, s in summary.items():
            if not name.startswith(case + " "):
                continue
            rate = s["rate"]["median"]
            ratio = (f"{rate / base['rate']['median']:.1f}x"
                     if base and "Queue" not in name else "-")
            rows.append([name[len(case) + 1:], harness.fmt_value(s["rate"], 1e-3, 1),
                         f"{s['cpu_us_per_object']['median']:.1f}", ratio])
        out.append(harness.markdown(
            f"objects one-to-one: {case}", rows,
            ["transport", "k objects/s", "CPU µs / object", "vs multiprocessing.Queue"]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="small dicts per run")
    ap.add_argument("--arrays", type=int, default=2_000, help="1 MiB arrays per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write results to this file")
    args = ap.parse_args(argv)
    summary = harness.interleaved(cases(max(2, args.count), max(2, args.arrays)),
                                  args.repeats)
    print(render(summary))
    m = harness.machine()
    print(f"machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; "
          f"shmbus compiled hot path in this process: {shmbus.compiled}")
    return harness.result("objects_throughput", args.json, repeats=args.repeats,
                          results=summary)


if __name__ == "__main__":
    main()
