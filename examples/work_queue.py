"""A job queue: a producer, a balancer and three worker processes, one of which crashes.

A ring broadcasts; a balancer turns it into a work queue.  The producer sends jobs with
keys (a customer id) to ring ``jobs``; ``with Balancer("billing", ["jobs"],
policy="consistent-hash")`` dispatches each job to exactly one of three
``Worker("billing", NAME)`` processes, every customer's jobs to the same worker.  A
worker acknowledges a job by receiving the next one.  Half-way, worker ``w0`` is killed
with SIGKILL while it holds a job: the balancer reads back everything ``w0`` had not
acknowledged (the job it was on, and those still waiting in its ring:
``worker.pending``) and dispatches it to the others, before newer jobs of those
customers.  The job it was on comes again with ``msg.deliveries == 2``.

Run it with ``python examples/work_queue.py``: it prints each worker's share, the
redelivered jobs, and checks that every job was done at least once.  It removes
everything it made (``shmbus.cleanup.collect``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections import Counter
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import shmbus
from shmbus.balancer import Balancer, Worker, read_stats
from shmbus.cleanup import collect

GROUP, INPUT = "billing", "jobs"
WORKERS = ["w0", "w1", "w2"]
JOBS = 3000
CRASH_AFTER = 200  # w0 is killed while on its 201st job

# What a worker reports: (worker, job, deliveries of the message, event).
Report = tuple[str, int, int, str]


def work(ns: str, name: str, reports: Queue[Report], stop: Event) -> None:
    """A worker process: do jobs until told to stop (or, for w0, until killed)."""
    with Worker(GROUP, name, namespace=ns) as worker:
        done = 0
        while not stop.is_set():
            try:
                msg = worker.recv(timeout=0.05)  # acknowledges the previous job
            except shmbus.Timeout:
                continue
            job = int(bytes(msg))
            if name == "w0" and done == CRASH_AFTER:
                # Hold this job, unacknowledged, and report how many jobs wait behind
                # it in this worker's ring; the parent kills us now.
                # (Not stop.wait(): a process killed inside a multiprocessing wait
                # would leave the Event's lock taken, and stop.set() would hang.)
                reports.put((name, job, worker.pending, "crashing"))
                signal.pause()
            reports.put((name, job, msg.deliveries, "done"))  # the job's work
            done += 1


def main() -> None:
    # A namespace of its own (SHMBUS_NAMESPACE if set: the tests run it in theirs).
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"workq{os.getpid()}"
    ctx = mp.get_context("spawn")
    reports: Queue[Report] = ctx.Queue()
    stop = ctx.Event()
    procs = [ctx.Process(target=work, args=(ns, name, reports, stop)) for name in WORKERS]
    pub = shmbus.Producer(INPUT, capacity=1 << 20, namespace=ns)
    try:
        with Balancer(GROUP, [INPUT], policy="consistent-hash", namespace=ns):
            for p in procs:
                p.start()
            deadline = time.monotonic() + 30
            while len((read_stats(ns, GROUP) or {}).get("workers", {})) < len(WORKERS):
                if time.monotonic() > deadline:
                    raise SystemExit("the workers did not join within 30 s")
                time.sleep(0.02)
            t0 = time.perf_counter()
            for job in range(JOBS):
                pub.send(b"%d" % job, key=f"customer-{job % 40}", timeout=10)

            done: list[tuple[str, int, int]] = []  # (worker, job, deliveries)
            crashed_on, left_by_w0 = -1, 0
            while {job for _, job, _ in done} != set(range(JOBS)):
                try:
                    name, job, n, event = reports.get(timeout=20)
                except queue.Empty:
                    raise SystemExit("jobs stopped arriving: some were lost") from None
                if event == "crashing":
                    pid = procs[WORKERS.index(name)].pid
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)  # a worker we started, by its pid
                    crashed_on, left_by_w0 = job, n + 1
                    print(f"killed {name} (pid {pid}) with SIGKILL while on job {job}, "
                          f"with {n} more jobs waiting in its ring (worker.pending)")
                else:
                    done.append((name, job, n))
            elapsed = time.perf_counter() - t0
            # The leader publishes its stats a few times a second: wait for the count.
            deadline = time.monotonic() + 10
            while ((stats := read_stats(ns, GROUP) or {}).get("redelivered", 0) < left_by_w0
                   and time.monotonic() < deadline):
                time.sleep(0.02)
        stop.set()
        for p in procs:
            p.join(10)

        print(f"{JOBS:,} jobs with 40 keys done in {elapsed:.2f} s through the balancer "
              f"(consistent hashing); {stats.get('redelivered', 0):,} redelivered (stats)")
        shares = Counter(name for name, _, _ in done)
        for name in WORKERS:
            note = " (killed)" if name == "w0" else ""
            print(f"  {name}: {shares[name]:>5,} jobs ({shares[name] / len(done):.0%}){note}")
        again = [(name, job, n) for name, job, n in done if n > 1]
        for name, job, n in again:
            print(f"  job {job} came again to {name} with msg.deliveries == {n}")
        assert any(job == crashed_on for _, job, _ in again), "the crash's job was lost"
        assert {job for _, job, _ in done} == set(range(JOBS))
        print(f"every one of the {JOBS:,} jobs was done at least once")
    finally:
        stop.set()
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.kill()
            if p.pid is not None:
                p.join(10)
        pub.close()
        shmbus.unlink(INPUT, namespace=ns)
        collect(ns, force=True)  # the workers' rings, the group's stats and lease
    left = [e for e in os.listdir("/dev/shm") if ns in e]
    print("/dev/shm is clean" if not left else f"leftovers in /dev/shm: {left}")


if __name__ == "__main__":
    main()
