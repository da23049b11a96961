"""OneToOneThroughput: one producer process, one consumer process.

    producer --(transport)--> consumer

Messages of 64 bytes (single send/recv, and batched where the transport has a batch
API), 64 KiB and 1 MiB (for shmbus also with ``claim``: the producer writes in place).
Reports messages/s received (median of the interleaved runs, min-max), bytes/s, CPU
seconds per million messages (producer + consumer), and shmbus's ratio to each peer.
For large messages, the machine's memcpy bandwidth is printed as the physical limit.

    python -m bench.one_to_one_throughput [--quick] [--repeats N] [--json FILE]
                                          [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import FasterFifo, Iceoryx2, MpPipe, MpQueue, Shmbus, Zmq

SIZES = {64: 300_000, 65536: 20_000, 1 << 20: 2_000}
QUICK = {64: 60_000, 65536: 3_000, 1 << 20: 300}


def memcpy_bandwidth(size: int = 1 << 20, rounds: int = 2000) -> float:
    """Bytes/s of numpy copying ``size`` bytes between two buffers."""
    src, dst = np.ones(size, np.uint8), np.empty(size, np.uint8)
    t0 = time.perf_counter()
    for _ in range(rounds):
        np.copyto(dst, src)
    return size * rounds / (time.perf_counter() - t0)


def cases(quick: bool, scale: float = 1.0) -> list[tuple[str, int, int, object, int]]:
    counts = {size: max(50, int(n * scale)) for size, n in (QUICK if quick else SIZES).items()}
    out = []
    for size, n in counts.items():
        peers = [Shmbus(), Shmbus(pure=True), MpQueue(), MpPipe(), FasterFifo(), Zmq(),
                 Iceoryx2()]
        if size > 64:
            peers.insert(1, Shmbus(zero_copy_send=True))
        for t in peers:
            out.append((f"{size}B {t.name}", size, n if not isinstance(t, MpQueue) or
                        size == 64 else max(100, n // 4), t, 1))
        if size == 64:
            out.append((f"{size}B shmbus batch=256", size, n * 2, Shmbus(), 256))
            out.append((f"{size}B shmbus[arrays] batch=256", size, n * 4,
                        Shmbus(arrays=True), 256))
            out.append((f"{size}B faster-fifo batch=256", size, n, FasterFifo(), 256))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts (under a minute)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write results to this file")
    ap.add_argument("--plot", default=None,
                    help="draw throughput against message size to this PNG file")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--only", default=None,
                    help="comma-separated transport names to run (default: all)")
    args = ap.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    runnable, notes = [], []
    for name, size, n, t, batch in cases(args.quick, args.scale):
        if only and t.name not in only:
            continue
        why = t.missing()
        if why:
            notes.append(f"skipped {t.name}: {why}")
            continue
        runnable.append((name, lambda size=size, n=n, t=t, batch=batch:
                         harness.run_stream(t, n, size, batch=batch)))
    notes = sorted(set(notes))
    summary = harness.interleaved(runnable, args.repeats)
    memcpy = memcpy_bandwidth()
    report = render(summary, memcpy, notes)
    print(report)
    result = harness.result("one_to_one_throughput", args.json, repeats=args.repeats,
                            results=summary, memcpy_bytes_per_s=memcpy, notes=notes)
    if args.plot:
        from shmbus.tools.benchkit.plot import throughput_vs_size
        throughput_vs_size(summary, args.plot, memcpy)
    return result


def render(summary: dict, memcpy: float, notes: list[str]) -> str:
    out = []
    groups: dict[str, list[str]] = {}
    for name in summary:
        groups.setdefault(name.split(" ")[0], []).append(name)
    for size, names in groups.items():
        base = summary.get(f"{size} shmbus")
        rows = []
        for name in names:
            s = summary[name]
            rate = s["per_consumer_rate"]["median"]
            ratio = (f"{base['per_consumer_rate']['median'] / rate:.2f}x"
                     if base and not name.startswith(f"{size} shmbus") else "-")
            if name.endswith("faster-fifo batch=256"):  # against shmbus's batch APIs
                ratio = ", ".join(
                    f"{label} {summary[k]['per_consumer_rate']['median'] / rate:.2f}x"
                    for label, k in (("send_many", f"{size} shmbus batch=256"),
                                     ("arrays", f"{size} shmbus[arrays] batch=256"))
                    if k in summary) or "-"
            rows.append([name.split(" ", 1)[1],
                         harness.fmt_value(s["per_consumer_rate"], 1e-6),
                         harness.fmt_value(s["bytes_per_s"], 1e-9),
                         f"{s['cpu_s_per_million']['median']:.2f}", ratio])
        out.append(harness.markdown(
            f"one-to-one, {size} messages", rows,
            ["transport", "M msg/s", "GB/s", "CPU s / M msgs", "shmbus / peer"]))
    out.append(f"memcpy (numpy, 1 MiB): {memcpy / 1e9:.1f} GB/s\n")
    out += [n + "\n" for n in notes]
    return "\n".join(out)


if __name__ == "__main__":
    main()
