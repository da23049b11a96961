"""``shmbus demo``: a producer, a balancer and workers, running with no set-up.

Everything runs in a namespace of its own (``demo<pid>``) and is removed at the end."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Literal

import click

import shmbus
from shmbus import naming

GROUP, INPUT = "demo", "demo.in"


def _produce(ns: str, stop) -> None:
    with shmbus.Producer(INPUT, namespace=ns) as pub:
        payload = b"x" * 64
        keys = [f"user-{i}" for i in range(64)]
        while not stop.is_set():
            try:
                pub.send_many([payload] * 64, keys=keys, timeout=0.1)
            except shmbus.Timeout:
                continue  # the workers are behind: back-pressure


def _balance(ns: str, policy: Literal["round-robin", "consistent-hash"], stop) -> None:
    from shmbus.balancer import Balancer
    b = Balancer(GROUP, [INPUT], policy=policy, namespace=ns)
    b.start()
    stop.wait()
    b.stop()


def _work(ns: str, name: str, stop, counts) -> None:
    from shmbus.balancer import Worker
    with Worker(GROUP, name, namespace=ns) as w:
        n = 0
        while not stop.is_set():
            try:
                n += len(w.recv_many(256, timeout=0.05))
            except shmbus.Timeout:
                pass
            counts[name] = n


def leftovers(ns: str) -> list[str]:
    """Everything of namespace ``ns`` in /dev/shm: segments, semaphores (``sem.*``) and
    the lock directory."""
    return naming.owned_entries(ns, os.listdir(naming.SHM_DIR))


@click.command("demo", epilog="""\b
Examples:
  shmbus demo
  shmbus demo --seconds 10 --workers 4""")
@click.option("--seconds", type=float, default=5.0, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option("--policy", type=click.Choice(["round-robin", "consistent-hash"]),
              default="round-robin", show_default=True)
def command(seconds: float, workers: int, policy: str) -> None:
    """Run a producer, a balancer and workers for a few seconds; show progress."""
    from shmbus.balancer import read_stats
    from shmbus.cleanup import collect

    ns = f"demo{os.getpid()}"
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    manager = ctx.Manager()
    counts = manager.dict()
    shmbus.Producer(INPUT, capacity=16 << 20, namespace=ns).close()
    names = [f"worker{i}" for i in range(workers)]
    procs = [ctx.Process(target=_balance, args=(ns, policy, stop))]
    procs += [ctx.Process(target=_work, args=(ns, n, stop, counts)) for n in names]
    try:
        for p in procs:
            p.start()
        click.echo(f"demo: 1 producer -> ring {INPUT!r} -> balancer ({policy}) -> "
                   f"{workers} workers, for {seconds:g} s (namespace {ns})")
        deadline = time.monotonic() + 30
        while len((read_stats(ns, GROUP) or {}).get("workers", {})) < workers:
            if time.monotonic() > deadline:
                raise click.ClickException("the workers did not join within 30 s")
            time.sleep(0.05)
        producer = ctx.Process(target=_produce, args=(ns, stop))
        producer.start()
        procs.append(producer)
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            time.sleep(min(0.5, max(0.0, seconds - elapsed)))
            s = read_stats(ns, GROUP) or {}
            total = sum(counts.values())
            # The balancer reports every 20 ms; the workers' counts are live.
            click.echo(f"  {time.monotonic() - t0:4.1f} s  processed {total:>10,}  "
                       f"({total / max(1e-9, time.monotonic() - t0) / 1e6:.2f} M msg/s)  "
                       f"balancer's last report: {s.get('dispatched', 0):,} dispatched")
        stop.set()
        for p in procs:
            p.join(10)
        total = sum(counts.values())
        elapsed = time.monotonic() - t0
        click.echo(f"summary: {total:,} messages in {elapsed:.1f} s "
                   f"({total / elapsed / 1e6:.2f} M msg/s)")
        for n in names:
            share = counts.get(n, 0) / total if total else 0
            click.echo(f"  {n}: {counts.get(n, 0):>10,} ({share:.0%})")
    finally:
        stop.set()
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()
                p.join(5)
        manager.shutdown()
        shmbus.unlink(INPUT, namespace=ns)
        collect(ns, force=True)
        left = leftovers(ns)
        click.echo("cleaned up: nothing left in /dev/shm" if not left
                   else f"left in /dev/shm: {left}")
