"""PingPongLatency: the round trip of a 64-byte message between two processes.

    pinger --A--> echoer
    pinger <--B-- echoer

p50 / p99 / p99.9 in microseconds, for each shmbus wait strategy and for the peers
(the first tenth of the round trips warms up and is not counted).

    python -m bench.ping_pong_latency [--rounds N] [--repeats N] [--json FILE]
                                      [--plot FILE.png]
"""

from __future__ import annotations

import argparse

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import FasterFifo, Iceoryx2, MpPipe, MpQueue, Shmbus, Zmq


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None,
                    help="comma-separated transport names to run (default: all)")
    ap.add_argument("--plot", default=None,
                    help="draw the latency distributions to this PNG file")
    args = ap.parse_args(argv)
    transports = [Shmbus(), Shmbus(pure=True), Shmbus(wait="spin"),
                  Shmbus(wait="spin", pure=True), Shmbus(wait="yield"), Shmbus(wait="sleep"),
                  MpQueue(), MpPipe(), FasterFifo(), Zmq(), Iceoryx2()]
    transports, notes = harness.select(transports, args.only)
    cases = [(t.name, lambda t=t: harness.run_ping_pong(t, args.rounds))
             for t in transports]
    summary = harness.interleaved(cases, args.repeats)
    base = summary["shmbus"]["p50_us"]["median"] if "shmbus" in summary else None
    spin = summary["shmbus[spin]"]["p50_us"]["median"] if "shmbus[spin]" in summary \
        else None
    rows = []
    for name, s in summary.items():
        peer = not name.startswith("shmbus")
        rows.append([name, harness.fmt_value(s["p50_us"], 1, 1),
                     harness.fmt_value(s["p99_us"], 1, 1),
                     harness.fmt_value(s["p999_us"], 1, 1),
                     f"{base / s['p50_us']['median']:.2f}" if peer and base else "-",
                     f"{spin / s['p50_us']['median']:.2f}" if peer and spin else "-"])
    print(harness.markdown(f"round trip, 64 B, {args.rounds} rounds", rows,
                           ["transport", "p50 µs", "p99 µs", "p99.9 µs",
                            "shmbus p50 / peer p50", "shmbus[spin] p50 / peer p50"]))
    for n in notes:
        print(n)
    result = harness.result("ping_pong_latency", args.json, rounds=args.rounds,
                            results=summary, notes=notes)
    if args.plot:
        from shmbus.tools.benchkit.plot import latency_cdf
        latency_cdf(summary, args.plot)
    return result


if __name__ == "__main__":
    main()
