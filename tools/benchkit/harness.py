"""The shared harness: run topologies in spawned processes, interleave transports,
repeat, and report medians (with min-max) as a Markdown table and JSON.

Interleaving (A B C A B C ...) spreads the machine's noise over every transport
instead of letting it hit one: this host has 2 cores and is shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

from .transports import SPAWN, Transport

CDF_PERCENTS = [*range(100), 99.5, 99.9, 99.99, 100]  # latency quantiles kept for plots
WARM = b"w"  # 1-byte probes sent until every receiver is connected (PUB/SUB peers)


# -- child processes ----------------------------------------------------------------


@contextlib.contextmanager
def child_env(transport: Transport):
    """Start child processes with ``transport.env`` (e.g. which hot path shmbus runs)."""
    saved = {k: os.environ.get(k) for k in transport.env}
    for k, v in transport.env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _receiver_main(transport: Transport, cfg, index, n, batch, ready, warm, out):
    r = transport.receiver(cfg, index)
    try:
        ready.set()
        recv, recv_batch = r.recv, r.recv_batch
        while True:  # probes (PUB/SUB peers) until the first real message
            lengths = recv_batch(1) if batch > 1 else [recv()]
            real = [length for length in lengths if length != len(WARM)]
            if len(real) < len(lengths):
                warm.set()
            if real:
                break
        # Timing starts at the first real message: process start-up is not counted.
        t0, cpu0 = time.perf_counter(), time.process_time()
        got = first = len(real)
        if batch > 1:
            while got < n:
                got += len(recv_batch(min(batch, n - got)))
        else:
            for _ in range(n - got):  # as little harness work per message as can be
                recv()
        out.put(("recv", index, time.perf_counter() - t0, time.process_time() - cpu0,
                 n - first))
    finally:
        r.close()


def _sender_main(transport: Transport, cfg, n, size, batch, readies, warms, out, go=None):
    s = transport.sender(cfg)
    try:
        for ready in readies:
            ready.wait(60)
        if s.needs_warmup:
            while not all(w.is_set() for w in warms):
                s.send(WARM)
                time.sleep(0.001)
        if go is not None:
            out.put(("connected", 0, 0.0, 0.0))
            go.wait(300)
        payload = os.urandom(size)
        t0, cpu0 = time.perf_counter(), time.process_time()
        if batch > 1:
            chunk = [payload] * batch
            for _ in range(n // batch):
                s.send_batch(chunk)
        else:
            send = s.send
            for _ in range(n):
                send(payload)
        out.put(("send", 0, time.perf_counter() - t0, time.process_time() - cpu0))
    finally:
        s.close()


def run_stream(transport: Transport, n: int, size: int, receivers: int = 1,
               batch: int = 1, timeout: float = 300) -> dict:
    """One producer process streaming ``n`` messages of ``size`` bytes to
    ``receivers`` processes; rates are messages per second."""
    n -= n % batch
    cfg = transport.setup(receivers, size)
    procs = []
    try:
        out = SPAWN.Queue()
        readies = [SPAWN.Event() for _ in range(receivers)]
        warms = [SPAWN.Event() for _ in range(receivers)]
        for i in range(receivers):
            procs.append(SPAWN.Process(target=_receiver_main, args=(
                transport, cfg, i, n, batch, readies[i], warms[i], out), daemon=True))
        procs.append(SPAWN.Process(target=_sender_main, args=(
            transport, cfg, n, size, batch, readies, warms, out), daemon=True))
        with child_env(transport):
            for p in procs:
                p.start()
        results = [collect(out, procs, timeout) for _ in range(receivers + 1)]
        for p in procs:
            p.join(timeout)
    finally:
        _reap(procs, transport, cfg)
    send = next(r for r in results if r[0] == "send")
    recvs = sorted((r for r in results if r[0] == "recv"), key=lambda r: r[1])
    return {
        "per_consumer_rate": statistics.median(r[4] / r[2] for r in recvs),
        "producer_rate": n / send[2],
        "cpu_s_per_million": (send[3] + sum(r[3] for r in recvs)) / n * 1e6,
        "bytes_per_s": statistics.median(r[4] * size / r[2] for r in recvs),
    }


def run_idle(transport: Transport, seconds: float = 2.0) -> dict:
    """CPU time an idle receiver burns while it waits ``seconds`` for a message that
    has not been sent yet, as percent of one core (all its threads, from the
    scheduler's nanosecond counters); then one message ends the wait."""
    cfg = transport.setup(1, 64)
    procs = []
    try:
        out, go = SPAWN.Queue(), SPAWN.Event()
        ready, warm = SPAWN.Event(), SPAWN.Event()
        procs.append(SPAWN.Process(target=_receiver_main, args=(
            transport, cfg, 0, 1, 1, ready, warm, out), daemon=True))
        procs.append(SPAWN.Process(target=_sender_main, args=(
            transport, cfg, 1, 64, 1, [ready], [warm], out, go), daemon=True))
        with child_env(transport):
            for p in procs:
                p.start()
        collect(out, procs, 60)  # connected: the receiver waits for the message
        t0, c0 = time.perf_counter(), cpu_ns(procs[0].pid)
        time.sleep(seconds)  # the measurement window, not a synchronisation
        t1, c1 = time.perf_counter(), cpu_ns(procs[0].pid)
        go.set()
        for _ in range(2):
            collect(out, procs, 60)
        for p in procs:
            p.join(60)
    finally:
        _reap(procs, transport, cfg)
    return {"idle_cpu_percent": 100 * (c1 - c0) / 1e9 / (t1 - t0)}


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid`` so far, in nanoseconds
    (``/proc/PID/task/*/schedstat``: finer than the 10 ms ticks of ``cpu_times``)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total


def _reap(procs: list, transport: Transport, cfg) -> None:
    """Kill what is still running of ``procs``, then tear the transport down."""
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    transport.teardown(cfg)


def collect(out, procs, timeout: float):
    """The next result from ``out``; fail fast if a child process died."""
    import queue
    deadline = time.monotonic() + timeout
    while True:
        try:
            return out.get(timeout=0.2)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"benchmark process failed (exit {dead[0].exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result within {timeout} s")


def _echo_main(transport_a, cfg_a, transport_b, cfg_b, rounds, ready, go):
    r = transport_a.receiver(cfg_a, 0)
    s = transport_b.sender(cfg_b)
    try:
        ready.set()
        recv, send = r.recv, s.send
        payload = bytes(64)
        for _ in range(rounds):
            recv()
            send(payload)
    finally:
        r.close()
        s.close()


def run_ping_pong(transport: Transport, rounds: int, timeout: float = 300) -> dict:
    """Round trips of a 64-byte message between two processes; latencies in µs."""
    cfg_a, cfg_b = transport.setup(1, 64), transport.setup(1, 64)
    proc = None
    out = SPAWN.Queue()
    try:
        ready = SPAWN.Event()
        proc = SPAWN.Process(target=_echo_main, args=(
            transport, cfg_a, transport, cfg_b, rounds, ready, None), daemon=True)
        with child_env(transport):
            proc.start()
        ready.wait(60)
        child = SPAWN.Process(target=_ping_main, args=(transport, cfg_a, cfg_b, rounds, out),
                              daemon=True)
        with child_env(transport):
            child.start()
        lat = collect(out, [proc, child], timeout)
        child.join(timeout)
        proc.join(timeout)
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)
        transport.teardown(cfg_a)
        transport.teardown(cfg_b)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] / 1e3  # noqa: E731
    return {"p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999),
            "quantiles_us": [q(f / 100) for f in CDF_PERCENTS]}


def _ping_main(transport, cfg_a, cfg_b, rounds, out):
    s = transport.sender(cfg_a)
    r = transport.receiver(cfg_b, 0)
    try:
        send, recv, now = s.send, r.recv, time.perf_counter_ns
        payload = bytes(64)
        lat = []
        for i in range(rounds):
            t0 = now()
            send(payload)
            recv()
            lat.append(now() - t0)
        out.put(lat[rounds // 10:])  # the first tenth warms up
    finally:
        s.close()
        r.close()


# -- repetition and reporting ----------------------------------------------------------


def interleaved(cases: list[tuple[str, Callable[[], dict]]], repeats: int,
                progress: bool = True) -> dict[str, dict]:
    """Run every case once per round, ``repeats`` rounds; per case and metric return
    ``{"median", "min", "max", "runs"}``."""
    runs: dict[str, list[dict]] = {name: [] for name, _ in cases}
    for round_ in range(repeats):
        for name, fn in cases:
            if progress:
                print(f"  round {round_ + 1}/{repeats}: {name} ...", file=sys.stderr,
                      flush=True)
            runs[name].append(fn())
    summary = {}
    for name, results in runs.items():
        summary[name] = {}
        for metric in results[0]:
            values = [r[metric] for r in results]
            if isinstance(values[0], (int, float)):
                summary[name][metric] = {"median": statistics.median(values),
                                         "min": min(values), "max": max(values),
                                         "runs": values}
            else:
                summary[name][metric] = {"runs": values}
    return summary


def select(transports: list[Transport], only: str | None) -> tuple[list, list[str]]:
    """The transports to run (those named in the comma-separated ``only``, if given,
    and installed) and a note for each one skipped because it is not installed."""
    wanted = set(only.split(",")) if only else None
    chosen = [t for t in transports if wanted is None or t.name in wanted]
    notes = [f"skipped {t.name}: {t.missing()}" for t in chosen if t.missing()]
    return [t for t in chosen if not t.missing()], notes


def machine() -> dict:
    import psutil
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def fmt_value(stats: dict, scale: float = 1.0, digits: int = 2) -> str:
    return (f"{stats['median'] * scale:.{digits}f} "
            f"({stats['min'] * scale:.{digits}f}-{stats['max'] * scale:.{digits}f})")


def markdown(title: str, rows: list[list[str]], headers: list[str]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def result(benchmark: str, path: str | None, **data) -> dict:
    """The program's result: ``data`` with the machine and the benchmark's name,
    written as JSON to ``path`` if one is given."""
    out = {"machine": machine(), "benchmark": benchmark, **data}
    write_json(path, out)
    return out


def write_json(path: str | None, data: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
