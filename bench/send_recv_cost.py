"""SendRecvCost: the interpreter's cost of each call on the hot path, in one process.

    producer --> ring (cache-warm, never full) --> consumer    (one thread)

Nanoseconds per message of ``send``, ``recv`` (also reading each ``.data``: the view is
handed out, checked and released), ``send_many`` and ``recv_many`` (64-byte
messages, batches of 256), and of the balancer's raw forwarding (``take_run`` +
``forward``), best of ``--repeats`` rounds, for the compiled hot path ("shmbus") and
the pure-Python one ("shmbus-pure"), each in a process of its own.  No second process, no waiting, no cache
line moving between cores: what is left is the Python work per message, the number to
watch when optimising (profile first: ``py-spy record --subprocesses``).

    python -m bench.send_recv_cost [--messages N] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import shmbus
from shmbus.forward import forward, take_run

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import SPAWN, Shmbus

BATCH = 256


def measure(n: int, repeats: int) -> dict:
    ns = f"cost{os.getpid()}x{uuid.uuid4().hex[:6]}"
    pub = shmbus.Producer("r", capacity=64 << 20, namespace=ns)
    out = shmbus.Producer("o", capacity=64 << 20, namespace=ns)  # no consumer: never full
    sub = shmbus.Consumer("r", namespace=ns)
    payload, n = os.urandom(64), n - n % BATCH
    chunk = [payload] * BATCH
    best: dict[str, float] = {}

    def timed(name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        best[name] = min(best.get(name, float("inf")),
                         (time.perf_counter() - t0) / n * 1e9)

    def sends():
        send = pub.send
        for _ in range(n):
            send(payload)

    def recvs():
        recv = sub.recv
        for _ in range(n):
            recv()

    def recvs_with_data():  # reads each payload: a view handed out, released next
        recv = sub.recv
        for _ in range(n):
            len(recv().data)

    def batches_out():
        for _ in range(n // BATCH):
            pub.send_many(chunk)

    def batches_in():
        recv_many = sub.recv_many
        for _ in range(n // BATCH):
            recv_many(BATCH)

    def forwards():
        moved = 0
        while moved < n:
            run = take_run(sub, BATCH)
            moved += forward(out, run, range(len(run.bounds) - 1))

    try:
        for _ in range(repeats):
            timed("send", sends)
            timed("recv", recvs)
            sends()
            timed("recv + .data", recvs_with_data)
            timed("send_many", batches_out)
            timed("recv_many", batches_in)
            sub.release()
            batches_out()
            timed("take_run + forward", forwards)
            sub.release()
    finally:
        sub.close()
        pub.unlink()
        out.unlink()
    return best


def _measure_child(n: int, repeats: int, out) -> None:
    out.put((shmbus.compiled, measure(n, repeats)))


def measure_path(path: Shmbus, n: int, repeats: int) -> dict | None:
    """:func:`measure` in a process running ``path``'s hot path (None if that path is
    not available here)."""
    out = SPAWN.Queue()
    proc = SPAWN.Process(target=_measure_child, args=(n, repeats, out), daemon=True)
    with harness.child_env(path):
        proc.start()
    try:
        compiled, best = harness.collect(out, [proc], 600)
    finally:
        proc.join(60)
    if compiled != (path.name == "shmbus"):
        return None
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    results = {}
    for path in (Shmbus(), Shmbus(pure=True)):
        best = measure_path(path, args.messages, args.repeats)
        if best is None:
            print(f"{path.name}: not available here (no compiled build)")
        else:
            results[path.name] = best
    calls = list(next(iter(results.values())))
    names = list(results)
    rows = [[call, *(f"{results[name][call]:.0f}" for name in names)] for call in calls]
    print(harness.markdown(f"hot path, 64 B, ns per message, best of {args.repeats}",
                           rows, ["call", *names]))
    return harness.result("send_recv_cost", args.json, results=results)


if __name__ == "__main__":
    main()
