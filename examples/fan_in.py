"""Many senders, one receiver: worker processes send their results to one Inbox.

The ``multiprocessing.Queue`` habit (every worker ``put``s its results on one queue)
with shmbus: the parent opens ``shmbus.Inbox("results")``, each worker process opens
``shmbus.Outbox("results")`` and sends.  Underneath every Outbox writes a ring of its
own (a ring has one producer, which is what keeps it lock-free); the Inbox reads them
all, round robin, and ``msg.sender`` says whose each message is.

Run it with ``python examples/fan_in.py``: four workers send 20,000 results each (as
Python objects, ``send_obj``), one of them is killed with SIGKILL half-way and loses
nothing it sent, and nothing is left in ``/dev/shm`` at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import shmbus
from shmbus.objects import decode

INBOX = "results"
WORKERS = 4
JOBS = 20_000


def work(ident: int, ns: str, forever: bool) -> None:
    with shmbus.Outbox(INBOX, namespace=ns) as results:
        job = 0
        while forever or job < JOBS:
            results.send_obj({"worker": ident, "job": job, "square": job * job},
                             timeout=30)
            job += 1


def main() -> None:
    # A namespace of its own (SHMBUS_NAMESPACE if set: the tests run it in theirs).
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"fanin{os.getpid()}"
    ctx = mp.get_context("spawn")
    with shmbus.Inbox(INBOX, capacity=1 << 20, namespace=ns) as inbox:
        # The last worker runs until it is killed, to show that nothing it sent is lost.
        workers = [ctx.Process(target=work, args=(i, ns, i == WORKERS - 1))
                   for i in range(WORKERS)]
        for p in workers:
            p.start()
        t0 = None
        jobs: dict[int, list[int]] = {i: [] for i in range(WORKERS)}
        senders: dict[int, str | None] = {}
        killed = False
        while True:
            msg = inbox.recv(timeout=30)
            if t0 is None:
                t0 = time.perf_counter()  # from the first result: not process start-up
            result = decode(msg)
            ident = result["worker"]
            jobs[ident].append(result["job"])
            senders[ident] = msg.sender
            if not killed and len(jobs[WORKERS - 1]) == JOBS // 2:
                pid = workers[-1].pid
                assert pid is not None  # started
                os.kill(pid, signal.SIGKILL)  # mid-stream
                killed = True
            if killed and all(len(jobs[i]) == JOBS for i in range(WORKERS - 1)):
                workers[-1].join(30)
                try:  # what the killed worker had sent is still in its ring
                    while True:
                        jobs[WORKERS - 1].append(
                            decode(inbox.recv(timeout=0.5))["job"])
                except shmbus.Timeout:
                    break
        elapsed = time.perf_counter() - (t0 or 0.0)
        for p in workers:
            p.join(30)
        total = sum(len(v) for v in jobs.values())
        print(f"received {total:,} results from {WORKERS} processes in {elapsed:.2f} s "
              f"({total / elapsed / 1e3:.0f} k objects/s)")
        for ident, got in jobs.items():
            in_order = got == list(range(len(got)))
            print(f"  worker {ident} (sender {senders[ident]}): {len(got):,} results, "
                  f"{'in order, none lost' if in_order else 'OUT OF ORDER'}"
                  f"{' (killed with SIGKILL)' if ident == WORKERS - 1 else ''}")
        assert all(got == list(range(len(got))) for got in jobs.values())
    left = [e for e in os.listdir("/dev/shm") if e.startswith((ns + ".", "sem." + ns + "."))]
    print("/dev/shm is clean" if not left else f"leftovers in /dev/shm: {left}")


if __name__ == "__main__":
    main()
