"""SpeedTable: every benchmark of the README's "Speed" section, in one run.

Runs, one after the other in this process's run, ``one_to_one_throughput``,
``ping_pong_latency``, ``fan_out_throughput``, ``balancer_throughput``, ``idle_cpu``
and ``send_recv_cost`` (each with its own interleaved repeats; the compiled
"shmbus" and pure-Python "shmbus-pure" rows run beside the peers in the same
rounds), then prints the README's table from their results, so that every figure of
the table comes from one run on one machine state.  ``--json FILE`` keeps every
benchmark's full results (min, max and each run beside the medians).

    python -m bench.speed_table [--repeats N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout

from shmbus.tools.benchkit import harness

from . import (balancer_throughput, fan_out_throughput, idle_cpu, one_to_one_throughput,
               ping_pong_latency, send_recv_cost)

PEERS = [("shmbus", "shmbus"), ("shmbus-pure", "shmbus-pure"),
         ("pyzmq PUSH/PULL", "pyzmq ipc"), ("iceoryx2", "iceoryx2"),
         ("multiprocessing.Pipe", "mp.Pipe"), ("faster-fifo", "faster-fifo"),
         ("multiprocessing.Queue", "mp.Queue")]


def run_all(repeats: int, quick: bool) -> dict:
    """Each benchmark's result, by name (their tables are printed as they finish)."""
    q = ["--quick"] if quick else []
    r = ["--repeats", str(repeats)]
    small = ["--messages", "60000"] if quick else []
    return {
        "one_to_one": one_to_one_throughput.main(r + q),
        "ping_pong": ping_pong_latency.main(r + (["--rounds", "5000"] if quick else [])),
        "fan_out": fan_out_throughput.main(r + small),
        "balancer": balancer_throughput.main(r + small),
        "idle": idle_cpu.main(r + (["--seconds", "1"] if quick else [])),
        "cost": send_recv_cost.main(["--repeats", str(max(3, repeats))] +
                                    (["--messages", "20000"] if quick else [])),
    }


def _median(results: dict, name: str, metric: str, scale: float = 1.0,
            digits: int = 2) -> str:
    s = results.get(name, {}).get(metric)
    if not s or "median" not in s:
        return "-"
    return f"{s['median'] * scale:.{digits}f}"


def render(res: dict) -> str:
    """The README's table (markdown) from :func:`run_all`'s results."""
    o2o = res["one_to_one"]["results"]
    pp = res["ping_pong"]["results"]
    fan = res["fan_out"]["results"]
    idle = res["idle"]["results"]
    header = "| | " + " | ".join(label for _, label in PEERS) + " |"
    rows = [header, "|---" * (len(PEERS) + 1) + "|"]

    def row(title: str, cells: list[str]) -> None:
        rows.append(f"| {title} | " + " | ".join(cells) + " |")

    row("64 B one-to-one, M msg/s",
        [_median(o2o, f"64B {n}", "per_consumer_rate", 1e-6) for n, _ in PEERS])
    row("64 B, CPU s per M messages",
        [_median(o2o, f"64B {n}", "cpu_s_per_million") for n, _ in PEERS])
    row("64 B batched (256), M msg/s",
        [_median(o2o, "64B shmbus batch=256", "per_consumer_rate", 1e-6), "", "-", "-",
         "-", _median(o2o, "64B faster-fifo batch=256", "per_consumer_rate", 1e-6), "-"])
    for size, label in ((65536, "64 KiB"), (1 << 20, "1 MiB")):
        row(f"{label} one-to-one, GB/s",
            [_median(o2o, f"{size}B {n}", "bytes_per_s", 1e-9, 1) for n, _ in PEERS])
    row("round trip p50 / p99, µs",
        [f"{_median(pp, n, 'p50_us', 1, 1)} / {_median(pp, n, 'p99_us', 1, 1)}"
         for n, _ in PEERS])
    row('round trip p50, `wait="spin"`, µs',
        [_median(pp, "shmbus[spin]", "p50_us", 1, 1),
         _median(pp, "shmbus-pure[spin]", "p50_us", 1, 1)] + [""] * (len(PEERS) - 2))
    for k in (2, 4):
        row(f"fan-out to {k}, M msg/s per consumer",
            [_median(fan, f"shmbus x{k}", "per_consumer_rate", 1e-6),
             _median(fan, f"shmbus-pure x{k}", "per_consumer_rate", 1e-6),
             _median(fan, f"pyzmq PUB/SUB x{k}", "per_consumer_rate", 1e-6) + " (PUB/SUB)",
             _median(fan, f"iceoryx2 x{k}", "per_consumer_rate", 1e-6), "-", "-", "-"])
    row("idle consumer, % of a core",
        [_median(idle, n, "idle_cpu_percent") for n, _ in PEERS])
    out = ["\n".join(rows), ""]
    keep = {}
    for kind in ("shmbus", "shmbus-pure"):
        one, four = fan.get(f"{kind} x1"), fan.get(f"{kind} x4")
        if one and four:
            keep[kind] = four["producer_rate"]["median"] / one["producer_rate"]["median"]
    if keep:
        out.append("fan-out to 4, the producer's rate as a share of its rate with 1 "
                   "consumer: " + ", ".join(f"{k} {v:.0%}" for k, v in keep.items()))
    bal = res["balancer"]["results"]

    def base(name: str) -> float:  # each path against its own direct ring
        pure = name.endswith("(pure Python)")
        return bal["direct ring (pure Python)" if pure else "direct ring"]["rate"]["median"]
    out.append("balancer to 2 workers (of the same path's direct ring): " + ", ".join(
        f"{name} {s['rate']['median'] / 1e6:.2f} M msg/s "
        f"({s['rate']['median'] / base(name):.0%})"
        for name, s in bal.items() if not name.startswith("direct ring")))
    cost = res["cost"]["results"]
    calls = list(next(iter(cost.values())))
    out.append("ns per call (" + " / ".join(cost) + "): " + ", ".join(
        f"`{c}` " + " / ".join(f"{cost[p][c]:.0f}" for p in cost) for c in calls))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small counts (a few minutes)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--quiet", action="store_true",
                    help="print only the table, not each benchmark's own")
    args = ap.parse_args(argv)
    if args.quiet:
        with redirect_stdout(io.StringIO()):
            res = run_all(args.repeats, args.quick)
    else:
        res = run_all(args.repeats, args.quick)
    print(render(res))
    return harness.result("speed_table", args.json, results=res)


if __name__ == "__main__":
    main()
