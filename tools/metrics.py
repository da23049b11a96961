"""``shmbus metrics``: the state ``shmbus top`` shows, as Prometheus metrics over HTTP.

Needs the ``prometheus-client`` library (``pip install 'shmbus[metrics]'``).  A
:class:`ShmbusCollector` reads the namespace when Prometheus scrapes (no background
loop, nothing cached): every scrape is a fresh read-only look (see
:mod:`shmbus.tools.snapshot`), so the exporter never holds back a producer.  Rates
are Prometheus's job: rings export counters (messages and bytes written), and
``rate(shmbus_ring_messages_total[1m])`` is the write rate.

Every sample has a ``namespace`` label; rings have ``ring``; consumers ``consumer``
(the durable name, or ``pid N slot S`` for an anonymous one); balancer groups ``group`` and
workers ``worker``; bridges ``ring``, ``direction`` (in, out), ``pid`` and ``bridge``
(its stats file's name, without ``@stats``: unique).  A consumer whose lag in messages is unknown (a lapped slot of an
overwrite ring that never stored its seq) has no ``lag_messages`` sample.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Iterator

import click

from . import snapshot
from .options import namespace_option

DEFAULT_PORT = 9811
_NEEDS = ("`shmbus metrics` needs the prometheus-client library, which is not "
          "installed: pip install 'shmbus[metrics]'")


def _prometheus() -> Any:
    """The ``prometheus_client`` module, or a ClickException that says how to get it."""
    try:
        import prometheus_client
    except ImportError:
        raise click.ClickException(_NEEDS) from None
    return prometheus_client


class ShmbusCollector:
    """A Prometheus collector (``prometheus_client`` API: :meth:`collect` and
    :meth:`describe`) of one namespace, read at every scrape."""

    def __init__(self, namespace: str | None = None) -> None:
        self.namespace = namespace

    def describe(self) -> list:
        return []  # no look at /dev/shm when registering: only when scraped

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        state = snapshot.take(self.namespace)
        ns = state["namespace"]
        fams: dict[str, Any] = {}

        def fam(kind: type, name: str, doc: str, labels: list[str]) -> Any:
            if name not in fams:
                fams[name] = kind(name, doc, labels=["namespace", *labels])
            return fams[name]

        def counter(name: str, doc: str, labels: dict, value: float) -> None:
            fam(CounterMetricFamily, name, doc, list(labels)).add_metric(
                [ns, *labels.values()], value)

        def gauge(name: str, doc: str, labels: dict, value: float) -> None:
            fam(GaugeMetricFamily, name, doc, list(labels)).add_metric(
                [ns, *labels.values()], value)

        for name, r in sorted(state["rings"].items()):
            _ring(counter, gauge, name, r)
        for group, s in sorted(state["groups"].items()):
            _group(counter, gauge, group, s)
        for b in state["bridges"]:
            _bridge(counter, gauge, b)
        gauge("shmbus_skipped_entries", "Rings and stats files that could not be read "
              "at this scrape (`shmbus top` names them).", {}, len(state["skipped"]))
        yield from fams.values()


def _ring(counter, gauge, name: str, r: dict) -> None:
    ring = {"ring": name}
    counter("shmbus_ring_messages", "Messages written to the ring (its next seq).", ring,
            r["messages"])
    counter("shmbus_ring_bytes", "Bytes written to the ring (records with their "
            "headers and padding: its write position).", ring, r["bytes"])
    gauge("shmbus_ring_capacity_bytes", "Capacity of the ring's data area.", ring,
          r["capacity"])
    gauge("shmbus_ring_fill_ratio", "Part of the ring holding messages (0 to 1).", ring,
          r["fill"])
    gauge("shmbus_ring_producer_waiting", "1 while the ring's producer waits for room "
          "(a block ring full behind a consumer).", ring, int(r["producer_waiting"]))
    for c in r["consumers"]:
        who = {**ring, "consumer": c["name"]}
        if c["lag_messages"] is not None:
            gauge("shmbus_consumer_lag_messages", "Messages published that the consumer "
                  "has not received yet.", who, c["lag_messages"])
        gauge("shmbus_consumer_lag_bytes", "Bytes published that the consumer has not "
              "received yet.", who, c["lag_bytes"])
        counter("shmbus_consumer_lost", "Messages the consumer lost (overwritten before "
                "it read them; overwrite rings).", who, c["lost"])
        gauge("shmbus_consumer_holds_back_producer", "1 if this consumer holds the "
              "producer back (a block ring full behind it).", who, int(c["holds_back"]))


def _group(counter, gauge, group: str, s: dict) -> None:
    g = {"group": group}
    counter("shmbus_balancer_dispatched", "Messages the group's leader dispatched to "
            "workers (redeliveries included).", g, s["dispatched"])
    counter("shmbus_balancer_redelivered", "Messages dispatched again after their "
            "worker left or died.", g, s["redelivered"])
    counter("shmbus_balancer_dead_lettered", "Messages sent to the dead-letter ring "
            "GROUP.dlq after max deliveries.", g, s["dead_lettered"])
    gauge("shmbus_balancer_in_flight", "Messages dispatched and not yet acknowledged, "
          "over all workers.", g, sum(w["in_flight"] for w in s["workers"].values()))
    for worker, w in sorted(s["workers"].items()):
        who = {**g, "worker": worker}
        gauge("shmbus_balancer_worker_in_flight", "Messages dispatched to the worker and "
              "not yet acknowledged.", who, w["in_flight"])
        counter("shmbus_balancer_worker_dispatched", "Messages dispatched to the worker.",
                who, w["dispatched"])


def _bridge(counter, gauge, b: dict) -> None:
    who = {"ring": b["ring"], "direction": b["direction"], "pid": str(b["pid"]),
           "bridge": b["name"]}  # (one ring may have several bridges in one process)
    counter("shmbus_bridge_relayed", "Messages the bridge relayed: acknowledged by "
            "JetStream (out) or written into the ring (in).", who, b["relayed"])
    counter("shmbus_bridge_refused", "Messages the bridge kept out of the ring "
            "(pickled objects; in).", who, b["refused"])
    counter("shmbus_bridge_lost", "Messages overwritten in the ring before the bridge "
            "relayed them (overwrite rings; out).", who, b["lost"])
    counter("shmbus_bridge_reconnects", "Connections to the server after the first.",
            who, b["reconnects"])
    gauge("shmbus_bridge_connected", "1 while the bridge relays, connected to the "
          "server (0: standby, reconnecting, or its process is dead).", who,
          int(b["alive"] and b["state"] == "connected"))


def serve(namespace: str | None, addr: str, port: int) -> tuple[Any, threading.Thread]:
    """Serve the namespace's metrics at ``http://addr:port/metrics`` (and ``/``) from a
    daemon thread; return the server (``server.server_address`` has the port, useful
    with ``port=0``; ``server.shutdown()`` stops it) and the thread."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
    from socketserver import ThreadingMixIn

    client = _prometheus()
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(ShmbusCollector(namespace))
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:  # no line per scrape
            pass

    server = make_server(addr, port, client.make_wsgi_app(registry), Server, Quiet)
    thread = threading.Thread(target=server.serve_forever, name="shmbus-metrics",
                              daemon=True)
    thread.start()
    return server, thread


@click.command("metrics", epilog=f"""\b
Examples:
  shmbus metrics                       http://127.0.0.1:{DEFAULT_PORT}/metrics
  shmbus metrics --port 9100 --addr 0.0.0.0
\b
Prometheus computes rates, e.g.:
  rate(shmbus_ring_messages_total[1m])       messages written per second
  max by (ring) (shmbus_consumer_lag_messages)""")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, help="TCP port (0: any free one, printed at start).")
@click.option("--addr", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 or :: to serve other hosts).")
@namespace_option
def command(port: int, addr: str, namespace: str | None) -> None:
    """Serve rings, consumers and balancer groups as Prometheus metrics over HTTP, read
    at each scrape: messages and bytes written per ring, lag (messages, bytes) and
    lost per consumer, dispatched / redelivered / dead-lettered / in flight per
    balancer group, relayed / refused / lost / reconnects and connected per bridge.  Needs: pip install 'shmbus[metrics]'."""
    from shmbus import naming

    ns = naming.resolve_namespace(namespace)
    try:
        server, thread = serve(ns, addr, port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {addr} port {port}: "
                                   f"{e.strerror or e}") from None
    host, bound = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"shmbus metrics of namespace {ns} at http://{shown}:{bound}/metrics "
               "(Ctrl-C quits)", err=True)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
