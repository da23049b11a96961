"""IdleConsumerCpu: what a consumer costs while no message comes.

    producer (connected, silent) --(transport)--> consumer (blocked in recv)

For each transport (and each shmbus wait strategy), the consumer waits ``--seconds``
for a message that is sent only afterwards; its CPU time over that window (user +
all threads, from the scheduler's counters, read from outside) as percent of one core.  On a
2-core host, every percent a waiting consumer burns is taken from the processes doing
work.

    python -m bench.idle_cpu [--seconds S] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import FasterFifo, Iceoryx2, MpPipe, MpQueue, Shmbus, Zmq

NOTES = {"iceoryx2": "polls: its Python binding has no blocking receive",
         "shmbus[spin]": "spins by design (for latency at the price of a core)"}


def transports() -> list:
    return [Shmbus(), Shmbus(wait="sleep"), Shmbus(wait="yield"), Shmbus(wait="spin"),
            MpQueue(), MpPipe(), FasterFifo(), Zmq(), Iceoryx2()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None,
                    help="comma-separated transport names to run (default: all)")
    args = ap.parse_args(argv)
    ts, notes = harness.select(transports(), args.only)
    cases = [(t.name, lambda t=t: harness.run_idle(t, args.seconds)) for t in ts]
    summary = harness.interleaved(cases, args.repeats)
    rows = [[name, harness.fmt_value(s["idle_cpu_percent"], 1, 2), NOTES.get(name, "")]
            for name, s in summary.items()]
    print(harness.markdown(f"idle consumer, {args.seconds:g} s waiting", rows,
                           ["transport", "CPU % of one core", "note"]))
    for n in notes:
        print(n)
    result = harness.result("idle_cpu", args.json, seconds=args.seconds, results=summary,
                            notes=notes)
    return result


if __name__ == "__main__":
    main()
