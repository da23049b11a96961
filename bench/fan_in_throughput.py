"""FourToOneFanInThroughput: four Outbox processes into one Inbox, against one Producer
into one Consumer, 64-byte messages, in the same run.

    outbox 1 --+
    outbox 2 --+--> inbox          producer --> consumer
    outbox 3 --+
    outbox 4 --+

Each Outbox writes its own ring (a ring has one producer); the Inbox reads them round
robin.  Reported: messages/s received (timing from the receiver's first message to its
last, after every sender has attached), CPU seconds per million messages (senders and
receiver), and the ratio fan-in / one ring.  Single ``send``/``recv`` per message, and
batches of 256 (``send_many``/``recv_many``).  Then the CPU an idle Inbox waiting on
quiet senders uses (% of a core).  Rows ``shmbus`` run the compiled hot
path (where it is built), ``shmbus-pure`` the pure-Python one.

    python -m bench.fan_in_throughput [--messages N] [--senders K] [--repeats N]
                                      [--only shmbus,shmbus-pure] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import shmbus
from shmbus.cleanup import collect
from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import SPAWN

CAPACITY = 64 << 20  # as one_to_one_throughput's small messages: the one ring's, and
# the senders' rings' together (each 64 MiB / senders): the same memory, so that
# neither side pays more page faults and cache misses than the other
SIZE = 64


def _env(pure: bool) -> dict:
    return {"SHMBUS_PURE_PYTHON": "1" if pure else None,
            "SHMBUS_REQUIRE_COMPILED": None if pure else
            os.environ.get("SHMBUS_REQUIRE_COMPILED")}


class _Env:
    """Start children with a hot path chosen by environment variables."""

    def __init__(self, pure: bool) -> None:
        self.env = _env(pure)


def _sender(ns: str, fan_in: bool, count: int, batch: int, go, out) -> None:
    if fan_in:
        tx = shmbus.Outbox("in", namespace=ns)
    else:
        tx = shmbus.Producer("ring", namespace=ns)
    try:
        tx.send(b"w" * SIZE, timeout=60)  # attached (an Outbox makes its ring here)
        go.wait(60)
        payload = os.urandom(SIZE)
        t0, c0 = time.perf_counter(), time.process_time()
        if batch > 1:
            chunk, send_many = [payload] * batch, tx.send_many
            for _ in range(count // batch):
                send_many(chunk)
        else:
            send = tx.send
            for _ in range(count):
                send(payload)
        out.put(("send", time.perf_counter() - t0, time.process_time() - c0))
    finally:
        tx.close()


def _receiver(ns: str, fan_in: bool, senders: int, total: int, batch: int, ready, go,
              out, capacity: int) -> None:
    rx = shmbus.Inbox("in", capacity=capacity, namespace=ns) if fan_in else \
        shmbus.Consumer("ring", namespace=ns)
    try:
        ready.set()
        for _ in range(senders):
            rx.recv(timeout=60)  # every sender's warm-up message: all attached
        go.set()
        recv, recv_many = rx.recv, rx.recv_many
        first = len(recv_many(batch, timeout=60)) if batch > 1 else (recv(60), 1)[1]
        t0, c0 = time.perf_counter(), time.process_time()
        got = first
        if batch > 1:
            while got < total:
                got += len(recv_many(min(batch, total - got)))
        else:
            for _ in range(total - first):
                recv()
        out.put(("recv", time.perf_counter() - t0, time.process_time() - c0, total - first))
    finally:
        rx.close()


def run(fan_in: bool, pure: bool, senders: int, total: int, batch: int,
        sender_capacity: int | None = None) -> dict:
    """One run: ``senders`` Outboxes into an Inbox (or one Producer into a Consumer)."""
    ns = f"bench{os.getpid()}x{uuid.uuid4().hex[:6]}"
    k = senders if fan_in else 1
    each = total // k
    each -= each % batch
    total = each * k
    if not fan_in:
        shmbus.Producer("ring", capacity=CAPACITY, namespace=ns).close()
    procs = []
    try:
        out, ready, go = SPAWN.Queue(), SPAWN.Event(), SPAWN.Event()
        with harness.child_env(_Env(pure)):  # type: ignore[arg-type]
            rx = SPAWN.Process(target=_receiver, args=(
                ns, fan_in, k, total, batch, ready, go, out,
                sender_capacity or CAPACITY // senders), daemon=True)
            rx.start()
            procs.append(rx)
            ready.wait(60)
            for _ in range(k):
                p = SPAWN.Process(target=_sender, args=(ns, fan_in, each, batch, go, out),
                                  daemon=True)
                p.start()
                procs.append(p)
        results = [harness.collect(out, procs, 300) for _ in range(k + 1)]
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        collect(ns, force=True)
    recv = next(r for r in results if r[0] == "recv")
    sends = [r for r in results if r[0] == "send"]
    return {"rate": recv[3] / recv[1],
            "cpu_s_per_million": (recv[2] + sum(s[2] for s in sends)) / total * 1e6,
            # the receiver's CPU time over its wall time: 1.0 is a receiver that never
            # waited (it, not the senders, sets the pace), if it had a core to itself
            "receiver_busy": recv[2] / recv[1],
            "senders_done_s": max(s[1] for s in sends), "receiver_s": recv[1]}


def _idle_inbox(ns: str, senders: int, ready, out) -> None:
    with shmbus.Inbox("idle", capacity=1 << 16, namespace=ns) as inbox:
        ready.set()
        for _ in range(senders):
            inbox.recv(timeout=60)  # every sender attached: it waits on all their rings
        out.put(("waiting", os.getpid()))
        inbox.recv(timeout=120)


def _idle_sender(ns: str, go) -> None:
    with shmbus.Outbox("idle", namespace=ns) as box:
        box.send(b"hello", timeout=60)
        go.wait(120)
        box.send(b"bye", timeout=60)


def idle(pure: bool, senders: int, seconds: float) -> float:
    """CPU time of an Inbox waiting ``seconds`` on ``senders`` quiet Outboxes, as percent
    of one core (from the scheduler's counters, read from outside)."""
    ns = f"bench{os.getpid()}x{uuid.uuid4().hex[:6]}"
    procs = []
    try:
        out, ready, go = SPAWN.Queue(), SPAWN.Event(), SPAWN.Event()
        with harness.child_env(_Env(pure)):  # type: ignore[arg-type]
            rx = SPAWN.Process(target=_idle_inbox, args=(ns, senders, ready, out),
                               daemon=True)
            rx.start()
            procs.append(rx)
            ready.wait(60)
            for _ in range(senders):
                p = SPAWN.Process(target=_idle_sender, args=(ns, go), daemon=True)
                p.start()
                procs.append(p)
        harness.collect(out, procs, 120)
        c0, t0 = harness.cpu_ns(rx.pid), time.perf_counter()
        time.sleep(seconds)  # the measurement window, not a synchronisation
        c1, t1 = harness.cpu_ns(rx.pid), time.perf_counter()
        go.set()
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        collect(ns, force=True)
    return 100 * (c1 - c0) / 1e9 / (t1 - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="comma-separated: shmbus,shmbus-pure")
    ap.add_argument("--no-batch", action="store_true", help="only single send/recv")
    ap.add_argument("--sender-capacity", type=int, default=None,
                    help="bytes of each sender's ring (default: 64 MiB / senders)")
    ap.add_argument("--idle-seconds", type=float, default=3.0,
                    help="also measure an idle Inbox's CPU this long (0: skip)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    paths = [(name, pure) for name, pure in (("shmbus", False), ("shmbus-pure", True))
             if args.only is None or name in args.only.split(",")]
    batches = [1] if args.no_batch else [1, 256]
    cases = []
    for name, pure in paths:
        for batch in batches:
            n = args.messages * (4 if batch > 1 else 1)
            tag = f"{name}{' batch=256' if batch > 1 else ''}"
            cases.append((f"{tag} 1->1", lambda pure=pure, n=n, b=batch:
                          run(False, pure, 1, n, b)))
            cases.append((f"{tag} {args.senders}->1", lambda pure=pure, n=n, b=batch:
                          run(True, pure, args.senders, n, b, args.sender_capacity)))
    summary = harness.interleaved(cases, args.repeats)
    rows, ratios = [], {}
    for name, s in summary.items():
        tag, topo = name.rsplit(" ", 1)
        base = summary[f"{tag} 1->1"]
        ratio = None
        if topo != "1->1":
            runs = [a / b for a, b in zip(s["rate"]["runs"], base["rate"]["runs"])]
            ratio = ratios[tag] = statistics.median(runs)
        rows.append([tag, topo, harness.fmt_value(s["rate"], 1e-6),
                     f"{s['cpu_s_per_million']['median']:.2f}",
                     f"{ratio:.0%}" if ratio is not None else "-"])
    print(harness.markdown(f"fan-in, {SIZE} B ({os.cpu_count()} CPUs)", rows, [
        "path", "topology", "M msg/s received", "CPU s / M msgs",
        "fan-in / one ring (median of the runs' ratios)"]))
    idle_cpu = {}
    if args.idle_seconds > 0:
        for name, pure in paths:
            idle_cpu[name] = idle(pure, args.senders, args.idle_seconds)
            print(f"idle Inbox ({name}) waiting on {args.senders} quiet senders: "
                  f"{idle_cpu[name]:.3f}% of a core")
    return harness.result("fan_in_throughput", args.json, repeats=args.repeats,
                          senders=args.senders, results=summary, ratios=ratios,
                          idle_cpu_percent=idle_cpu)


if __name__ == "__main__":
    main()
