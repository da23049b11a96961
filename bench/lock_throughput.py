"""LockAcquireRelease and TakeoverAfterDeath: the cost of shmbus.FileLock and
shmbus.Lease against the lock libraries users would pick instead (filelock,
fasteners), and how long a dead holder blocks the next one.

    uncontended: one process, acquire + release in a loop
    takeover:    holder process --SIGKILL--> waiter acquires (time from kill to held)

    python -m bench.lock_throughput [--seconds S] [--repeats N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
import uuid

import shmbus

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import SPAWN


def _loop(acquire_release, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(100):
            acquire_release()
        n += 100
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def uncontended(seconds: float) -> dict[str, callable]:
    ns = f"lockbench{os.getpid()}"
    tmp = tempfile.mkdtemp()
    cases = {}
    lock = shmbus.FileLock("bench", namespace=ns)

    def fl():
        lock.acquire()
        lock.release()
    cases["shmbus.FileLock"] = lambda: {"ops_per_s": _loop(fl, seconds)}
    lease = shmbus.Lease("bench", ttl=10, namespace=ns)

    def ls():
        lease.acquire()
        lease.release()
    cases["shmbus.Lease"] = lambda: {"ops_per_s": _loop(ls, seconds)}
    try:
        import filelock
        flk = filelock.FileLock(os.path.join(tmp, "f.lock"))

        def f2():
            flk.acquire()
            flk.release()
        cases["filelock"] = lambda: {"ops_per_s": _loop(f2, seconds)}
    except ImportError:
        pass
    try:
        import fasteners
        fst = fasteners.InterProcessLock(os.path.join(tmp, "g.lock"))

        def f3():
            fst.acquire()
            fst.release()
        cases["fasteners"] = lambda: {"ops_per_s": _loop(f3, seconds)}
    except ImportError:
        pass
    return cases, (lambda: lease.unlink())


def _hold(kind: str, ns: str, name: str, held) -> None:
    if kind == "lock":
        shmbus.FileLock(name, namespace=ns).acquire()
    else:
        shmbus.Lease(name, ttl=30, namespace=ns).acquire()
    held.set()
    time.sleep(3600)  # waiting to be SIGKILLed


def takeover(kind: str) -> dict:
    """Seconds from SIGKILL of the holder until another process holds it."""
    ns, name = f"lockbench{os.getpid()}", f"t{uuid.uuid4().hex[:6]}"
    held = SPAWN.Event()
    proc = SPAWN.Process(target=_hold, args=(kind, ns, name, held), daemon=True)
    proc.start()
    held.wait(30)
    obj = (shmbus.FileLock(name, namespace=ns) if kind == "lock"
           else shmbus.Lease(name, ttl=30, namespace=ns))
    t0 = time.perf_counter()
    os.kill(proc.pid, signal.SIGKILL)
    obj.acquire(timeout=60)
    dt = time.perf_counter() - t0
    obj.release()
    proc.join(10)
    if kind == "lease":
        obj.unlink()
    return {"takeover_s": dt}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cases, cleanup = uncontended(args.seconds)
    try:
        summary = harness.interleaved(list(cases.items()), args.repeats)
    finally:
        cleanup()
    take = harness.interleaved([("FileLock", lambda: takeover("lock")),
                                ("Lease", lambda: takeover("lease"))], args.repeats)
    base = summary["shmbus.FileLock"]["ops_per_s"]["median"]
    rows = [[name, harness.fmt_value(s["ops_per_s"], 1e-3, 1),
             f"{base / s['ops_per_s']['median']:.2f}x"] for name, s in summary.items()]
    print(harness.markdown("uncontended acquire + release", rows,
                           ["lock", "k ops/s", "FileLock / this"]))
    rows = [[name, harness.fmt_value(s["takeover_s"], 1e3, 2)] for name, s in take.items()]
    print(harness.markdown("takeover after kill -9 of the holder", rows,
                           ["shmbus", "ms from SIGKILL to held"]))
    result = harness.result("lock_throughput", args.json, uncontended=summary, takeover=take)
    return result


if __name__ == "__main__":
    main()
