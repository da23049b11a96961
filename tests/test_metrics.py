"""``shmbus metrics``: Prometheus metrics over real HTTP, read at each scrape."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families  # the test extra

import shmbus
from shmbus.balancer import Balancer, Worker
from shmbus.tools import metrics
from shmbus.tools.cli import main

from .support import await_until

pytestmark = pytest.mark.timeout(60)


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted labels without namespace): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        body = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "namespace"}
            out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


def ring(name: str) -> tuple:
    return (("ring", name),)


def consumer(ring_name: str, who: str) -> tuple:
    return (("consumer", who), ("ring", ring_name))


@pytest.fixture
def exporter(ns):
    """``shmbus metrics --port 0`` in a child process; yields its /metrics URL."""
    proc = subprocess.Popen([sys.executable, "-m", "shmbus", "metrics", "--port", "0"],
                            env={**os.environ, "SHMBUS_NAMESPACE": ns},
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # the pytest timeout bounds this
        match = re.search(r"at (http://\S+/metrics)", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        assert f"namespace {ns}" in line
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


def test_scrape_shows_what_the_rings_hold_now(ns, exporter):
    with shmbus.Producer("orders", capacity=1 << 16) as pub, \
            shmbus.Consumer("orders", durable="billing") as billing:
        got = scrape(exporter)
        assert got[("shmbus_ring_messages_total", ring("orders"))] == 0
        assert got[("shmbus_consumer_lag_messages", consumer("orders", "billing"))] == 0
        pub.send_many([b"x" * 100] * 10)
        got = scrape(exporter)
        assert got[("shmbus_ring_messages_total", ring("orders"))] == 10
        assert got[("shmbus_ring_bytes_total", ring("orders"))] == pub.position
        assert got[("shmbus_consumer_lag_messages", consumer("orders", "billing"))] == 10
        assert got[("shmbus_consumer_lag_bytes", consumer("orders", "billing"))] == \
            pub.position
        assert got[("shmbus_ring_capacity_bytes", ring("orders"))] == 1 << 16
        billing.recv_many(4, timeout=1)
        billing.release()
        pub.send_many([b"y"] * 5)
        got = scrape(exporter)
        assert got[("shmbus_ring_messages_total", ring("orders"))] == 15
        assert got[("shmbus_consumer_lag_messages", consumer("orders", "billing"))] == 11
        assert got[("shmbus_consumer_holds_back_producer",
                    consumer("orders", "billing"))] == 0
        assert got[("shmbus_ring_producer_waiting", ring("orders"))] == 0
    shmbus.unlink("orders")
    got = scrape(exporter)  # a removed ring is gone from the next scrape
    assert not any(labels == ring("orders") for _, labels in got)
    assert got[("shmbus_skipped_entries", ())] == 0


def test_scrape_counts_what_a_lapped_consumer_lost(ns, exporter):
    with shmbus.Producer("o", capacity=4096, on_full="overwrite") as pub, \
            shmbus.Consumer("o", durable="late") as late:
        for _ in range(300):
            pub.send(b"z" * 40)
        while late.try_recv() is not None:
            pass
        late.release()
        got = scrape(exporter)
        assert got[("shmbus_consumer_lost_total", consumer("o", "late"))] == late.lost > 0
        assert got[("shmbus_consumer_lag_messages", consumer("o", "late"))] == 0
    shmbus.unlink("o")


def test_scrape_shows_balancer_groups(ns):
    """The collector served from a thread (as ``metrics.serve`` does for the
    command), scraped while a balancer dispatches to a worker."""
    shmbus.Producer("in", capacity=1 << 16).close()
    server, thread = metrics.serve(ns, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    g = (("group", "g"),)
    try:
        with Worker("g", "w1") as w, Balancer("g", ["in"], poll=0.005):
            with shmbus.Producer("in") as pub:
                pub.send_many([b"job"] * 7)
            w.recv_many(3, timeout=30)  # received, not yet acknowledged

            def dispatched() -> dict:
                got = scrape(url)
                return got if got.get(("shmbus_balancer_dispatched_total", g)) == 7 \
                    else {}

            got = await_until(dispatched, 30, what="7 dispatched in the scrape")
            assert got[("shmbus_balancer_redelivered_total", g)] == 0
            assert got[("shmbus_balancer_dead_lettered_total", g)] == 0
            assert got[("shmbus_balancer_worker_dispatched_total",
                        (("group", "g"), ("worker", "w1")))] == 7
            assert got[("shmbus_balancer_in_flight", g)] == 7  # none released yet
            w.recv_many(100, timeout=1)  # releases the first three
            w.release()
            await_until(lambda: scrape(url).get(("shmbus_balancer_in_flight", g)) == 0,
                        30, what="in flight back to 0")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        from shmbus.cleanup import collect
        shmbus.unlink("in")
        collect(force=True)


def test_without_prometheus_client_it_says_how_to_install(ns, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    r = CliRunner().invoke(main, ["metrics", "--port", "0"])
    assert r.exit_code == 1
    assert "pip install 'shmbus[metrics]'" in r.output and "Traceback" not in r.output


def test_anonymous_consumers_of_one_process_are_told_apart(ns):
    """Two anonymous consumers of one ring in one process: two series (Prometheus
    rejects a scrape with a duplicate one)."""
    server, thread = metrics.serve(ns, "127.0.0.1", 0)
    try:
        with shmbus.Producer("r", capacity=1 << 14) as pub, \
                shmbus.Consumer("r") as a, shmbus.Consumer("r") as b:
            pub.send_many([b"1", b"2"])
            a.recv(timeout=1)
            a.recv(timeout=1)  # released the first
            got = scrape(f"http://127.0.0.1:{server.server_address[1]}/metrics")
            me = os.getpid()
            assert got[("shmbus_consumer_lag_messages",
                        consumer("r", f"pid {me} slot {a.slot}"))] == 1
            assert got[("shmbus_consumer_lag_messages",
                        consumer("r", f"pid {me} slot {b.slot}"))] == 2
        shmbus.unlink("r")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_port_in_use_is_one_clear_line(ns):
    server, thread = metrics.serve(ns, "127.0.0.1", 0)
    try:
        port = server.server_address[1]
        r = CliRunner().invoke(main, ["metrics", "--port", str(port)])
        assert r.exit_code == 1 and f"cannot listen on 127.0.0.1 port {port}" in r.output
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
