"""Prometheus metrics of a namespace, served in-process and scraped over HTTP.

``shmbus.tools.metrics.serve(namespace, addr, port)`` serves what ``shmbus top`` shows
as Prometheus metrics at ``http://addr:port/metrics`` from a daemon thread (``port=0``:
any free port), read afresh at every scrape: it never holds back a producer.  The
command ``shmbus metrics --port N`` does the same.  This program sends a few messages
through a ring, scrapes the endpoint with ``urllib`` and prints the shmbus lines.

It needs the optional ``prometheus-client``: ``pip install 'shmbus[metrics]'``.
Run it with ``python examples/metrics.py``.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request

import shmbus


def main() -> None:
    if importlib.util.find_spec("prometheus_client") is None:
        print("this example needs prometheus-client: pip install 'shmbus[metrics]'")
        return
    from shmbus.tools.metrics import serve

    # A namespace of its own (SHMBUS_NAMESPACE if set: the tests run it in theirs).
    ns = os.environ.get("SHMBUS_NAMESPACE") or f"metrics{os.getpid()}"
    server, thread = serve(ns, "127.0.0.1", 0)  # port 0: any free port
    try:
        host, port = server.server_address[:2]
        with shmbus.Producer("orders", capacity=1 << 16, namespace=ns) as pub, \
                shmbus.Consumer("orders", durable="billing", namespace=ns) as sub:
            pub.send_many([b"order %d" % i for i in range(10)])
            sub.recv_many(4, timeout=1)
            sub.release()  # acknowledged: billing is now 6 messages behind
            url = f"http://{host}:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        print(f"scraped {url}:")
        lines = [line for line in text.splitlines() if line.startswith("shmbus_")]
        for line in lines:
            print(" ", line)
        lag = [line for line in lines if line.startswith("shmbus_consumer_lag_messages")]
        assert lag and lag[0].endswith(" 6.0"), f"unexpected lag: {lag}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        shmbus.unlink("orders", namespace=ns)
    left = [e for e in os.listdir("/dev/shm") if ns in e]
    print("/dev/shm is clean" if not left else f"leftovers in /dev/shm: {left}")


if __name__ == "__main__":
    main()
