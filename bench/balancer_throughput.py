"""BalancerDispatchThroughput: producer -> input ring -> balancer -> 2 worker rings.

    producer --> [in] --> balancer --+--> [g.w.0] --> worker 0
                                     +--> [g.w.1] --> worker 1

64-byte messages, round-robin and consistent-hash (keys cycling over 20 values);
messages/s received by the two workers together, against one direct
producer-to-consumer ring (batched the same way) in the same run, on the compiled
hot path (where it is built) and on the pure-Python one.  "of direct (per round)" is
the median of each round's ratio to the direct ring of the same path and round.

    python -m bench.balancer_throughput [--messages N] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import shmbus

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import SPAWN, Shmbus


def _worker(ns, group, index, n, total, out, ready):
    """Receive until the workers together have ``n`` messages (the split between
    them is the policy's business); report when this one got its first and last."""
    from shmbus.balancer import Worker
    with Worker(group, f"w{index}", namespace=ns, capacity=8 << 20) as w:
        ready.set()
        first = last = None
        while True:
            try:
                batch = w.recv_many(256, timeout=0.05)
            except shmbus.Timeout:
                if total.value >= n:
                    break
                continue
            last = time.perf_counter()
            first = first or last
            with total.get_lock():
                total.value += len(batch)
        out.put((first, last))


def _balancer(ns, group, policy):
    import signal
    from shmbus.balancer import Balancer
    b = Balancer(group, ["in"], policy=policy, namespace=ns, prefetch=100_000)
    signal.signal(signal.SIGTERM, lambda *a: b.stop(0))
    b.run()


def _producer(ns, n, keyed, go):
    with shmbus.Producer("in", namespace=ns) as pub:
        go.wait(60)
        payload = os.urandom(64)
        keys = _keys() if keyed else None
        for _ in range(n // 256):
            pub.send_many([payload] * 256, keys=keys)


def _keys() -> list[bytes]:
    return [b"k%d" % (i % 20) for i in range(256)]  # bytes: no encoding per message


def run_balanced(policy: str, n: int) -> dict:
    from shmbus.balancer import read_stats
    from shmbus.cleanup import collect
    ns, group = f"bbench{os.getpid()}x{uuid.uuid4().hex[:6]}", "g"
    n -= n % 512
    shmbus.Producer("in", capacity=64 << 20, namespace=ns).close()
    out, go = SPAWN.Queue(), SPAWN.Event()
    readies = [SPAWN.Event(), SPAWN.Event()]
    procs = [SPAWN.Process(target=_balancer, args=(ns, group, policy), daemon=True)]
    total = SPAWN.Value("q", 0)
    procs += [SPAWN.Process(target=_worker, args=(ns, group, i, n, total, out, readies[i]),
                            daemon=True) for i in range(2)]
    procs.append(SPAWN.Process(target=_producer, args=(ns, n, policy != "round-robin", go),
                               daemon=True))
    try:
        for p in procs:
            p.start()
        for r in readies:
            r.wait(60)
        deadline = time.monotonic() + 60
        while len((read_stats(ns, group) or {}).get("workers", {})) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not join")
            time.sleep(0.01)
        go.set()
        res = [harness.collect(out, procs, 300) for _ in range(2)]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
        shmbus.unlink("in", namespace=ns)
        collect(ns, force=True)
    first = min(r[0] for r in res if r[0] is not None)
    last = max(r[1] for r in res if r[1] is not None)
    return {"rate": n / (last - first)}


def _cases(messages: int) -> list:
    """Each path (compiled, where built, and pure Python): the direct ring, then the
    balancer with each policy, every process of a case on that path."""
    cases = []
    for pure in (False, True):
        transport, tag = Shmbus(pure=pure), " (pure Python)" if pure else ""

        def direct(t=transport):
            return {"rate": harness.run_stream(t, messages, 64, batch=256)[
                "per_consumer_rate"]}
        cases.append((f"direct ring{tag}", direct))
        for policy, label in POLICIES:
            def balanced(t=transport, policy=policy):
                with harness.child_env(t):
                    return run_balanced(policy, messages)
            cases.append((f"{label}{tag}", balanced))
    return cases


POLICIES = [("round-robin", "balancer round-robin"),
            ("consistent-hash", "balancer consistent-hash (20 keys)")]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    summary = harness.interleaved(_cases(args.messages), args.repeats)
    rows = []
    for name, s in summary.items():
        base = summary["direct ring (pure Python)" if "pure" in name else "direct ring"]
        # The ratio of each round (both measured moments apart), then their median:
        # steadier than a ratio of medians on a shared machine.
        ratios = [r / d for r, d in zip(s["rate"]["runs"], base["rate"]["runs"])]
        s["of_direct"] = {"median": statistics.median(ratios), "runs": ratios}
        rows.append([name, harness.fmt_value(s["rate"], 1e-6),
                     f"{s['rate']['median'] / base['rate']['median']:.0%}",
                     f"{statistics.median(ratios):.0%} ({min(ratios):.0%}-"
                     f"{max(ratios):.0%})"])
    print(harness.markdown("dispatch to 2 workers, 64 B (producer batches of 256)", rows,
                           ["path", "M msg/s", "of direct (medians)",
                            "of direct (per round)"]))
    result = harness.result("balancer_throughput", args.json, results=summary)
    return result


if __name__ == "__main__":
    main()
