"""BalancerFailover: leader + standby balancer; SIGKILL the leader; time until the
standby leads (its stats name it).

    python -m bench.balancer_failover [--repeats N] [--ttl S] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import uuid

import shmbus

from shmbus.tools.benchkit import harness
from shmbus.tools.benchkit.transports import SPAWN


def _balancer(ns, ttl):
    from shmbus.balancer import Balancer
    b = Balancer("g", ["in"], namespace=ns, lease_ttl=ttl)
    signal.signal(signal.SIGTERM, lambda *a: b.stop(0))
    b.run()


def failover(ttl: float) -> dict:
    from shmbus.balancer import read_stats
    from shmbus.cleanup import collect
    ns = f"fbench{os.getpid()}x{uuid.uuid4().hex[:6]}"
    shmbus.Producer("in", capacity=1 << 16, namespace=ns).close()
    leader = SPAWN.Process(target=_balancer, args=(ns, ttl), daemon=True)
    standby = SPAWN.Process(target=_balancer, args=(ns, ttl), daemon=True)
    try:
        leader.start()
        while (read_stats(ns, "g") or {}).get("leader_pid") != leader.pid:
            time.sleep(0.005)
        standby.start()
        time.sleep(0.5)  # let the standby start and wait on the lease (not measured)
        t0 = time.perf_counter()
        os.kill(leader.pid, signal.SIGKILL)
        leader.join(10)
        while (read_stats(ns, "g") or {}).get("leader_pid") != standby.pid:
            time.sleep(0.001)
        return {"takeover_s": time.perf_counter() - t0}
    finally:
        for p in (leader, standby):
            if p.is_alive():
                p.terminate()
                p.join(10)
        shmbus.unlink("in", namespace=ns)
        collect(ns, force=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ttl", type=float, default=2.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    summary = harness.interleaved([("failover", lambda: failover(args.ttl))], args.repeats)
    print(harness.markdown(f"leader SIGKILL to standby leading (lease ttl {args.ttl} s)",
                           [["balancer", harness.fmt_value(summary["failover"]["takeover_s"],
                                                           1e3, 1)]],
                           ["", "ms"]))
    result = harness.result("balancer_failover", args.json, ttl=args.ttl, results=summary)
    return result


if __name__ == "__main__":
    main()
