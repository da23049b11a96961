"""OneToNFanOutThroughput: one producer, N consumers each receiving every message.

    producer --+--> consumer 1
               +--> consumer ...
               +--> consumer N

64-byte messages to 1, 2 and 4 consumers: messages/s per consumer (median over the
consumers, then over the runs), the producer's own rate, and CPU seconds per million
messages sent; shmbus against the broadcast peers (pyzmq PUB/SUB, iceoryx2), and shmbus
with batches of 256 on both sides (``send_many`` / ``recv_many``, and numpy arrays:
``send_array`` / ``recv_array``).

    python -m bench.fan_out_throughput [--messages N] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import Iceoryx2, Shmbus, Zmq


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--consumers", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None,
                    help="comma-separated transport names to run (default: all)")
    args = ap.parse_args(argv)
    fanouts = [int(x) for x in args.consumers.split(",")]
    transports, notes = harness.select([Shmbus(), Shmbus(pure=True), Zmq(pubsub=True),
                                        Iceoryx2()],
                                       args.only)
    cases = [(f"{t.name} x{k}", lambda t=t, k=k: harness.run_stream(
        t, args.messages, 64, receivers=k)) for k in fanouts for t in transports]
    if any(t.name == "shmbus" for t in transports):  # batches of 256 on both sides
        cases += [(f"{t.name} batch=256 x{k}", lambda t=t, k=k: harness.run_stream(
            t, args.messages * 4, 64, receivers=k, batch=256))
            for t in (Shmbus(), Shmbus(arrays=True)) for k in fanouts]
    summary = harness.interleaved(cases, args.repeats)
    rows = []
    for name, s in summary.items():
        k = name.rsplit("x", 1)[1]
        base = summary.get(f"shmbus x{k}")
        ratio = (base["per_consumer_rate"]["median"] / s["per_consumer_rate"]["median"]
                 if base and not name.startswith("shmbus") else None)
        rows.append([name, harness.fmt_value(s["per_consumer_rate"], 1e-6),
                     harness.fmt_value(s["producer_rate"], 1e-6),
                     f"{s['cpu_s_per_million']['median']:.2f}",
                     f"{ratio:.2f}x" if ratio else "-"])
    print(harness.markdown("fan-out, 64 B", rows, [
        "transport x consumers", "M msg/s per consumer", "producer M msg/s",
        "CPU s / M msgs", "shmbus / peer"]))
    for kind in ("shmbus", "shmbus batch=256", "shmbus[arrays] batch=256"):
        if f"{kind} x1" in summary and f"{kind} x4" in summary:
            keep = (summary[f"{kind} x4"]["producer_rate"]["median"] /
                    summary[f"{kind} x1"]["producer_rate"]["median"])
            print(f"{kind} producer rate with 4 consumers: {keep:.0%} of its rate with 1")
    print()
    for n in notes:
        print(n)
    result = harness.result("fan_out_throughput", args.json, results=summary, notes=notes)
    return result


if __name__ == "__main__":
    main()
