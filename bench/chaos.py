"""Chaos: kill anything at any moment, lose nothing.

Two producers (rings ``in0``, ``in1``), a balancer with a standby (consistent hash over
both rings), three workers and one durable consumer per input ring run as separate
processes.  Messages carry producer id, seq and a checksum.  While they flow, random
participants get SIGKILL (and are restarted) or SIGSTOP/SIGCONT, at random moments.
Afterwards the harness checks, and prints as a table:

* every message whose ``send`` returned reached its ring's durable consumer, in order,
  and at least one worker; duplicates (allowed: in flight at a crash) are counted;
* each worker got every key's messages in order (keys move between workers only on
  membership changes; not checked: order across two workers during a move);
* no payload was torn or corrupt; a fresh consumer can read every ring;
* after every process is killed, ``shmbus gc`` leaves nothing in ``/dev/shm``.

    python -m bench.chaos [--seconds S] [--seed N] [--kills-per-second K] [--rate R]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter

import shmbus

from shmbus.tools.benchkit.transports import SPAWN

PRODUCERS, WORKERS, GROUP, KEYS = 2, 3, "g", 16


def make_payload(producer_id: int, seq: int) -> bytes:
    body = producer_id.to_bytes(4, "little") + seq.to_bytes(8, "little")
    body += bytes((seq + i) & 0xFF for i in range(seq % 200))
    return body + hashlib.blake2b(body, digest_size=8).digest()


def check_payload(data: bytes) -> tuple[int, int]:
    body, digest = data[:-8], data[-8:]
    if len(data) < 20 or hashlib.blake2b(body, digest_size=8).digest() != digest:
        raise ValueError("corrupt payload")
    return int.from_bytes(body[:4], "little"), int.from_bytes(body[4:12], "little")


# -- participants (each in its own process) ---------------------------------------------


def _log(path: str):
    return open(path, "a", buffering=1)


def producer(ns: str, logdir: str, i: int, rate: float) -> None:
    """Send until the file ``stop`` appears in ``logdir`` (a file, not an Event: an
    Event's lock dies with a process killed while holding it), at most ``rate``
    messages per second (0: as fast as it can)."""
    stop = f"{logdir}/stop"
    with shmbus.Producer(f"in{i}", namespace=ns) as pub, _log(f"{logdir}/sent{i}") as log:
        t0, n = time.monotonic(), 0
        while n % 256 or not os.path.exists(stop):
            seq = pub.seq
            try:
                pub.send(make_payload(i, seq), key=f"k{seq % KEYS}", timeout=0.5)
            except shmbus.Timeout:
                continue
            log.write(f"{i} {seq}\n")
            n += 1
            if rate and n % 64 == 0:
                ahead = n / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)  # pacing, not synchronisation


def _consume(sub, log) -> None:
    while True:
        try:
            msg = sub.recv(timeout=0.5)
        except shmbus.Timeout:
            continue
        try:
            pid_, seq = check_payload(bytes(msg))
            log.write(f"{pid_} {seq} {msg.deliveries}\n")
        except ValueError:
            log.write(f"CORRUPT {bytes(msg)[:16].hex()}\n")


def worker(ns: str, logdir: str, i: int) -> None:
    from shmbus.balancer import Worker
    with Worker(GROUP, f"w{i}", namespace=ns) as w, _log(f"{logdir}/worker{i}") as log:
        _consume(w, log)


def durable(ns: str, logdir: str, i: int) -> None:
    with shmbus.Consumer(f"in{i}", durable="audit", start="earliest", namespace=ns) as c, \
            _log(f"{logdir}/durable{i}") as log:
        _consume(c, log)


def balancer(ns: str) -> None:
    from shmbus.balancer import Balancer
    Balancer(GROUP, [f"in{i}" for i in range(PRODUCERS)], policy="consistent-hash",
             namespace=ns, lease_ttl=1.0, prefetch=200).run()


# -- the harness --------------------------------------------------------------------------


class Cast:
    """The running participants, restartable by role."""

    def __init__(self, ns: str, logdir: str, rate: float) -> None:
        self.ns, self.logdir, self.rate = ns, logdir, rate
        self.sending = True
        self.roles = ([f"producer{i}" for i in range(PRODUCERS)] + ["balancerA", "balancerB"]
                      + [f"worker{i}" for i in range(WORKERS)]
                      + [f"durable{i}" for i in range(PRODUCERS)])
        self.procs: dict[str, object] = {}

    def start(self, role: str) -> None:
        kind = role.rstrip("0123456789AB")
        if kind == "balancer":
            target, args = balancer, (self.ns,)
        elif kind == "producer":
            target, args = producer, (self.ns, self.logdir, int(role[-1]), self.rate)
        else:
            target, args = {"worker": worker, "durable": durable}[kind], \
                (self.ns, self.logdir, int(role[-1]))
        p = SPAWN.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs[role] = p

    def revive(self) -> None:
        """Restart every participant that is not running (killed, or gave up)."""
        for role in self.roles:
            p = self.procs.get(role)
            if p is None or p.exitcode is not None:
                if role.startswith("producer") and not self.sending:
                    continue
                if p is not None:
                    p.join(1)
                self.start(role)

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.exitcode is None:
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGKILL)
        for p in self.procs.values():
            p.join(10)


def _read(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            lines = f.read().split("\n")[:-1]  # a killed writer may leave half a line
    except FileNotFoundError:
        return []
    return [line.split() for line in lines]


def _collect(logdir: str) -> dict:
    sent = {i: [int(s) for _, s in (ln for ln in _read(f"{logdir}/sent{i}") if len(ln) == 2)]
            for i in range(PRODUCERS)}
    durable_seen = {i: [(int(a), int(b)) for a, b, *_ in
                        (ln for ln in _read(f"{logdir}/durable{i}") if len(ln) == 3)]
                    for i in range(PRODUCERS)}
    per_worker = [[(int(a), int(b)) for a, b, *_ in
                   (ln for ln in _read(f"{logdir}/worker{i}") if len(ln) == 3)]
                  for i in range(WORKERS)]
    worker_seen = [m for stream in per_worker for m in stream]
    corrupt = sum(1 for i in range(WORKERS) for ln in _read(f"{logdir}/worker{i}")
                  if ln and ln[0] == "CORRUPT")
    corrupt += sum(1 for i in range(PRODUCERS) for ln in _read(f"{logdir}/durable{i}")
                   if ln and ln[0] == "CORRUPT")
    return {"sent": sent, "durable": durable_seen, "workers": worker_seen,
            "per_worker": per_worker, "corrupt": corrupt}


def _key_order_violations(streams: list) -> int:
    """Messages a worker got before an older message of the same key and producer
    (first deliveries only: redelivered duplicates are at-least-once, not disorder).
    Keys only move between workers on membership changes, and a moved key's
    unacknowledged messages go to its new owner before newer ones, so within each
    worker's stream every key's messages must arrive in order."""
    bad = 0
    for stream in streams:
        seen, last = set(), {}
        for producer_id, seq in stream:
            if (producer_id, seq) in seen:
                continue
            seen.add((producer_id, seq))
            key = (producer_id, seq % KEYS)
            if seq < last.get(key, -1):
                bad += 1
            last[key] = seq
    return bad


def _drained(ns: str) -> bool:
    """Cheap test before reading the logs: every consumer of every ring has released
    everything (so the logs should be complete)."""
    for r in shmbus.list_rings(ns):
        if "error" in r:
            return False
        info = shmbus.inspect(r["name"], ns)
        if any(c["lag_bytes"] for c in info["consumers"]):
            return False
    return True


def _delivered(logs: dict) -> bool:
    worker_keys = set(logs["workers"])
    for i, seqs in logs["sent"].items():
        if not set(seqs) <= {s for _, s in logs["durable"][i]}:
            return False
        if not {(i, s) for s in seqs} <= worker_keys:
            return False
    return True


def run(seconds: float = 20, seed: int = 1, kills_per_second: float = 2.0,
        out=sys.stdout, rate: float = 0.0) -> dict:
    """Run the chaos for ``seconds``; return the results (``ok`` says if every check
    passed)."""
    rng = random.Random(seed)
    ns = f"chaos{os.getpid()}x{uuid.uuid4().hex[:4]}"
    logdir = tempfile.mkdtemp(prefix="shmbus-chaos-")
    from shmbus.balancer.membership import input_durable
    for i in range(PRODUCERS):
        shmbus.Producer(f"in{i}", capacity=1 << 18, namespace=ns).close()
        # The cursors exist before the first message, so they see every message.
        for name in ("audit", input_durable(GROUP)):
            shmbus.Consumer(f"in{i}", durable=name, start="earliest", namespace=ns).close()
    cast = Cast(ns, logdir, rate)
    kills, stops = Counter(), Counter()
    t0 = time.monotonic()
    try:
        cast.revive()
        while time.monotonic() - t0 < seconds:
            time.sleep(rng.expovariate(kills_per_second))
            role = rng.choice(cast.roles)
            p = cast.procs[role]
            if p.exitcode is not None:
                cast.revive()
                continue
            kind = role.rstrip("0123456789AB")
            if rng.random() < 0.75:
                os.kill(p.pid, signal.SIGKILL)
                p.join(10)
                kills[kind] += 1
                time.sleep(rng.uniform(0, 0.2))
            else:
                os.kill(p.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0.05, 0.5))
                os.kill(p.pid, signal.SIGCONT)
                stops[kind] += 1
            cast.revive()
        cast.sending = False
        open(f"{logdir}/stop", "w").close()
        for role in cast.roles:  # producers finish their last message and stop
            if role.startswith("producer"):
                cast.procs[role].join(30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            cast.revive()
            if _drained(ns) and _delivered(_collect(logdir)):
                break
            time.sleep(0.5)
        duration = time.monotonic() - t0
        if not _delivered(_collect(logdir)):
            _diagnose(cast, out)
        cast.kill_all()  # everyone dies at once, as in a power cut of the processes
        logs = _collect(logdir)
        readable = _fresh_reads(ns)
        from shmbus.cleanup import collect
        collect(ns, force=True)
        left = [e for e in os.listdir("/dev/shm") if e.startswith(ns) or
                e.startswith(f"sem.{ns}")]
    finally:
        cast.kill_all()
    result = _report(logs, kills, stops, duration, readable, left, seed, out)
    if result["ok"]:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"logs kept in {logdir}", file=out)
    return result


def _diagnose(cast: Cast, out) -> None:
    """What the rings and participants look like when delivery stalled."""
    import subprocess
    for r in shmbus.list_rings(cast.ns):
        info = shmbus.inspect(r["name"], cast.ns) if "error" not in r else r
        print(f"stalled: ring {r['name']}: write {info.get('write')} tail "
              f"{info.get('tail')} producer {info.get('producer')} consumers "
              f"{info.get('consumers')}", file=out)
    for role, p in cast.procs.items():
        print(f"stalled: {role} pid {p.pid} exit {p.exitcode}", file=out)
        if p.exitcode is None and role.startswith(("durable", "worker")) and \
                shutil.which("py-spy"):
            dump = subprocess.run(["py-spy", "dump", "--pid", str(p.pid)],
                                  capture_output=True, text=True)
            print(dump.stdout[-3000:], file=out)


def _fresh_reads(ns: str) -> dict:
    """Read every ring from its oldest message with a new consumer."""
    out = {}
    for r in shmbus.list_rings(ns):
        try:
            with shmbus.Consumer(r["name"], start="earliest", namespace=ns) as c:
                n = 0
                while c.try_recv() is not None:
                    n += 1
            out[r["name"]] = n
        except shmbus.ShmbusError as e:
            out[r["name"]] = f"error: {e}"
    return out


def _report(logs, kills, stops, duration, readable, left, seed, out) -> dict:
    rows, ok = [], True
    total_sent = sum(len(s) for s in logs["sent"].values())
    for i, seqs in logs["sent"].items():
        seen = [s for p, s in logs["durable"][i] if p == i]
        firsts = list(dict.fromkeys(seen))
        missing = set(seqs) - set(seen)
        ordered = firsts == sorted(firsts)
        dup = len(seen) - len(firsts)
        ok &= not missing and ordered
        rows.append((f"durable consumer of in{i}", f"{len(seqs)} sent, {len(missing)} "
                     f"missing, {'in order' if ordered else 'OUT OF ORDER'}, {dup} duplicates"))
    wc = Counter(logs["workers"])
    sent_keys = {(i, s) for i, seqs in logs["sent"].items() for s in seqs}
    missing = sent_keys - set(wc)
    ok &= not missing
    rows.append(("workers (balancer)", f"{len(missing)} missing, "
                 f"{sum(c - 1 for c in wc.values())} duplicates"))
    disorder = _key_order_violations(logs["per_worker"])
    ok &= disorder == 0
    rows.append(("per-key order at each worker (consistent hash)",
                 f"{disorder} messages out of order"))
    ok &= logs["corrupt"] == 0
    rows.append(("torn or corrupt payloads", str(logs["corrupt"])))
    bad = {k: v for k, v in readable.items() if isinstance(v, str)}
    ok &= not bad
    rows.append(("rings readable by a fresh consumer",
                 f"{len(readable) - len(bad)}/{len(readable)}" + (f" {bad}" if bad else "")))
    ok &= not left
    rows.append(("left in /dev/shm after gc", str(left or "nothing")))
    rows.append(("kills (SIGKILL)", ", ".join(f"{k} {v}" for k, v in sorted(kills.items()))))
    rows.append(("pauses (SIGSTOP)", ", ".join(f"{k} {v}" for k, v in sorted(stops.items()))))
    rows.append(("messages sent", f"{total_sent} in {duration:.1f} s (seed {seed})"))
    print("| check | result |\n|---|---|", file=out)
    for a, b in rows:
        print(f"| {a} | {b} |", file=out)
    print(f"\n{'PASS' if ok else 'FAIL'}", file=out)
    return {"ok": ok, "sent": total_sent, "kills": dict(kills), "stops": dict(stops),
            "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kills-per-second", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="messages/s per producer (default: as fast as they go); long "
                    "runs use it to keep the logs that the checks read small")
    args = ap.parse_args(argv)
    return 0 if run(args.seconds, args.seed, args.kills_per_second,
                    rate=args.rate)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
