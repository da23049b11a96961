"""BridgeChaos: kill -9 the bridges and restart the server at random while messages flow;
check that ring B holds exactly ring A's messages, in order.

    producer --> [a] --Outbound x2 (leader + standby)--> nats-server --Inbound x2--> [b]
                                                          (restarted,                 |
                                                           killed -9)          verifier (durable)

Two "hosts" are two namespaces.  Every message carries its number (8 bytes); the
verifier reads ring B as a durable consumer and checks that each number is the next
one: a higher one is a loss (or a reordering), a lower one a duplicate.  Faults, at
random every ``--interval`` seconds on average: SIGKILL of a bridge process (it is
started again at once, as a standby if its twin leads), a clean server restart, a
SIGKILL of the server (then started again).  At the end the producer stops, the
bridges drain, and the program prints the table.

    python -m bench.bridge_chaos [--seconds 60] [--seed 1] [--interval 1.0] [--rate N]
                                 [--json FILE]

"lost" counts numbers the verifier never saw before a later one (a gap), "undelivered"
the messages sent that had not reached ring B when the bridges stopped making progress
(60 s without any message after the end).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import struct
import time

import shmbus
from shmbus.cleanup import collect
from shmbus.tools.benchkit import harness

from .bridge_throughput import Server

SPAWN = mp.get_context("spawn")
NUMBER = struct.Struct("<Q")
SUBJECT = "chaos"


def _producer(ns: str, stop, sent, rate: float) -> None:
    """Send numbered messages in batches of 64, at most ``rate`` a second (0: as fast
    as the ring lets it: a block ring, so a bridge that cannot publish holds it
    back)."""
    pack = NUMBER.pack
    began = time.monotonic()
    with shmbus.Producer("a", namespace=ns) as pub:
        while not stop.is_set():
            n = pub.seq  # message i carries number i (a send_many that times out may
            if rate and n > (time.monotonic() - began) * rate:  # have published part
                stop.wait(0.01)                                 # of its batch)
                continue
            try:
                pub.send_many([pack(i) for i in range(n, n + 64)], timeout=0.1)
            except shmbus.Timeout:
                pass
            sent.value = pub.seq


def _outbound(url: str, ns: str) -> None:
    from shmbus.bridge import Outbound
    Outbound("a", url, SUBJECT, namespace=ns, backoff=(0.05, 0.5)).run()


def _inbound(url: str, ns: str) -> None:
    from shmbus.bridge import Inbound
    Inbound(url, SUBJECT, "b", namespace=ns, backoff=(0.05, 0.5)).run()


class Verifier:
    """Reads ring B (durable) and checks the numbers."""

    def __init__(self, ns: str) -> None:
        self.consumer = shmbus.Consumer("b", durable="verify", start="earliest",
                                        namespace=ns)
        self.expect = 0
        self.duplicates = self.gaps = self.lost = 0
        self.events: list[str] = []  # gaps and duplicates, for the report

    def poll(self, timeout: float) -> None:
        try:
            batch = self.consumer.recv_many(4096, timeout=timeout)
        except shmbus.Timeout:
            return
        unpack = NUMBER.unpack_from
        for m in batch:
            (n,) = unpack(m.data)
            if n == self.expect:
                self.expect += 1
            elif n < self.expect:
                self.duplicates += 1
                self.events.append(f"{time.monotonic():.2f} duplicate {n} (expected "
                                   f"{self.expect}) at seq {m.seq} key {m.key!r}")
            else:
                self.gaps += 1
                self.events.append(f"{time.monotonic():.2f} gap: {n} after {self.expect - 1}"
                                   f" at seq {m.seq} key {m.key!r}")
                self.lost += n - self.expect
                self.expect = n + 1

    def close(self) -> None:
        self.consumer.close()


def run(seconds: float, seed: int, interval: float, rate: float = 0.0) -> dict:
    rng = random.Random(seed)
    tag = f"{os.getpid()}x{rng.randrange(1 << 30):x}"
    ns_a, ns_b = f"chaosa{tag}", f"chaosb{tag}"
    server = Server()
    shmbus.Producer("a", capacity=1 << 20, namespace=ns_a).close()
    # The bridge's durable cursor exists before the first message: a ring keeps for
    # nobody what no cursor holds.
    shmbus.Consumer("a", durable="nats-bridge", namespace=ns_a).close()
    shmbus.Producer("b", capacity=64 << 20, namespace=ns_b).close()
    verifier = Verifier(ns_b)
    stop, sent = SPAWN.Event(), SPAWN.Value("q", 0)
    producer = SPAWN.Process(target=_producer, args=(ns_a, stop, sent, rate), daemon=True)
    bridges = {f"out{i}": (_outbound, ns_a) for i in range(2)}
    bridges.update({f"in{i}": (_inbound, ns_b) for i in range(2)})
    procs: dict[str, mp.Process] = {}
    counts = {"bridge kills": 0, "server restarts": 0, "server kills": 0}
    log: list[str] = []

    def launch(name: str) -> None:
        target, ns = bridges[name]
        procs[name] = SPAWN.Process(target=target, args=(server.url, ns), daemon=True)
        procs[name].start()

    try:
        for name in bridges:
            launch(name)
        producer.start()
        end = time.monotonic() + seconds
        next_fault = time.monotonic() + rng.expovariate(1 / interval)
        while time.monotonic() < end:
            verifier.poll(0.05)
            if time.monotonic() < next_fault:
                continue
            next_fault = time.monotonic() + rng.expovariate(1 / interval)
            fault = rng.random()
            if fault < 0.7:
                name = rng.choice(sorted(procs))
                os.kill(procs[name].pid, signal.SIGKILL)
                procs[name].join(10)
                launch(name)
                counts["bridge kills"] += 1
                log.append(f"{time.monotonic():.2f} kill -9 {name}")
            else:
                kill = fault >= 0.85
                server.stop(kill=kill)
                server.start()
                counts["server kills" if kill else "server restarts"] += 1
                log.append(f"{time.monotonic():.2f} server {'kill -9' if kill else 'restart'}")
        stop.set()
        producer.join(30)
        total = sent.value
        # Drain while the bridges make progress (a backlog in the stream may take a
        # while); give up after 60 s without any.
        stalled_at, seen = time.monotonic() + 60, verifier.expect
        while verifier.expect < total and time.monotonic() < stalled_at:
            verifier.poll(0.1)
            if verifier.expect > seen:
                stalled_at, seen = time.monotonic() + 60, verifier.expect
        verifier.poll(0.5)  # anything beyond the end would be a duplicate
    finally:
        stop.set()
        for p in list(procs.values()) + [producer]:
            if p.is_alive():
                p.terminate()
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(10)
        verifier.close()
        server.close()
        for ns, ring in ((ns_a, "a"), (ns_b, "b")):
            shmbus.unlink(ring, namespace=ns)
            collect(ns, force=True)
    for line in sorted(log + verifier.events, key=lambda x: float(x.split()[0])):
        print(line)
    return {"seconds": seconds, "seed": seed, "sent": total, "received": verifier.expect,
            "lost": verifier.lost, "gaps": verifier.gaps,
            "undelivered": max(0, total - verifier.expect),
            "duplicates": verifier.duplicates, **counts}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--interval", type=float, default=1.0,
                    help="mean seconds between faults")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="messages per second at most (default: as fast as it goes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res = run(args.seconds, args.seed, args.interval, args.rate)
    print(harness.markdown(
        f"bridge chaos: {args.seconds:.0f} s, seed {args.seed}, a fault every "
        f"{args.interval} s on average", [[str(v) for v in res.values()]],
        list(res)))
    ok = res["lost"] == 0 and res["gaps"] == 0 and res["received"] == res["sent"]
    print("nothing lost, in order" if ok else
          "FAILED: messages lost or out of order" if res["lost"] or res["gaps"] else
          "FAILED: messages not delivered (the bridges stalled)")
    harness.result("bridge_chaos", args.json, results=res)
    if not ok:
        raise SystemExit(1)
    return res


if __name__ == "__main__":
    main()
