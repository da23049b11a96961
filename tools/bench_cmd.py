"""``shmbus bench``: the quick benchmark (well under a minute): shmbus against the
peers that are installed, one run each, as a Markdown table.  The full programs, with
repeats and JSON, are in the source tree's ``bench/``."""

from __future__ import annotations

import sys

import click

from .options import emit_json, json_option


@click.command("bench", epilog="""\b
Examples:
  shmbus bench
  shmbus bench --messages 20000 --only multiprocessing.Pipe --json""")
@click.option("--messages", type=int, default=100_000, show_default=True,
              help="64-byte messages per throughput run.")
@click.option("--only", default=None, help="Comma-separated peer names to compare with.")
@json_option
def command(messages: int, only: str | None, as_json: bool) -> None:
    """Quick throughput and round-trip comparison with the installed peers."""
    from .benchkit import harness
    from .benchkit.transports import FasterFifo, Iceoryx2, MpPipe, MpQueue, Shmbus, Zmq

    wanted = set(only.split(",")) if only else None
    peers = [t for t in (MpQueue(), MpPipe(), FasterFifo(), Zmq(), Iceoryx2())
             if not t.missing() and (wanted is None or t.name in wanted)]
    results, rows = {}, []
    base = None
    with click.progressbar([Shmbus(), Shmbus(pure=True), *peers], label="throughput and round trip",
                           file=sys.stderr,
                           item_show_func=lambda t: t.name if t else "") as bar:
        for t in bar:
            n = messages if not isinstance(t, MpQueue) else messages // 4
            s = harness.run_stream(t, n, 64)
            big = harness.run_stream(t, 200, 1 << 20)
            rtt = harness.run_ping_pong(t, 3000)
            idle = harness.run_idle(t, 0.5)
            results[t.name] = {"msgs_per_s": s["per_consumer_rate"],
                               "cpu_s_per_million": s["cpu_s_per_million"],
                               "mib_bytes_per_s": big["bytes_per_s"], **rtt, **idle}
            del results[t.name]["quantiles_us"]
            base = base or results[t.name]
            r = results[t.name]
            rows.append([t.name, f"{r['msgs_per_s'] / 1e6:.2f}",
                         f"{base['msgs_per_s'] / r['msgs_per_s']:.2f}x",
                         f"{r['mib_bytes_per_s'] / 1e9:.1f}", f"{r['p50_us']:.1f}",
                         f"{r['p99_us']:.1f}", f"{r['cpu_s_per_million']:.2f}",
                         f"{r['idle_cpu_percent']:.2f}"])
    if as_json:
        emit_json({"machine": harness.machine(), "results": results})
        return
    click.echo(harness.markdown(
        "quick benchmark (one run each; `python -m bench.*` for medians)", rows,
        ["transport", "64 B M msg/s", "shmbus / it", "1 MiB GB/s", "RTT p50 µs",
         "RTT p99 µs", "CPU s / M msgs", "idle CPU %"]))
