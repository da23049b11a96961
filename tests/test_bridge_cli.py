"""``shmbus bridge out`` and ``shmbus bridge in``: the two commands that connect two
hosts (two namespaces here) through a real nats-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import shmbus

from .nats_server import nats_server  # noqa: F401 - a fixture
from .support import await_until
from .test_bridge import drain, hosts, payloads  # noqa: F401 - hosts is a fixture

pytest.importorskip("nats", reason="the bridge needs nats-py (the test extra)")

pytestmark = pytest.mark.timeout(60)


def shmbus_cmd(*args: str, namespace: str) -> subprocess.Popen:
    env = dict(os.environ, SHMBUS_NAMESPACE=namespace)
    return subprocess.Popen([sys.executable, "-m", "shmbus", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM (the commands stop cleanly on it), then what it said on stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def test_bridge_out_and_in_connect_two_hosts(hosts, nats_server):
    a_ns, b_ns = hosts
    with shmbus.Producer("a", capacity=1 << 20, namespace=a_ns) as pub:
        out = shmbus_cmd("bridge", "out", "a", "--server", nats_server.url,
                         "--subject", "orders", namespace=a_ns)
        inb = shmbus_cmd("bridge", "in", "b", "--server", nats_server.url,
                         "--subject", "orders", "--capacity", "1M", namespace=b_ns)
        try:
            pub.send_many(payloads(1000), keys=[b"k"] * 1000)
            got = drain("b", 1000, namespace=b_ns)
            await_until(lambda: not shmbus.inspect("a", a_ns)["consumers"][0]
                        ["lag_messages"], 10, what="the ring released")
        finally:
            out_rc, out_err = stop(out)
            in_rc, in_err = stop(inb)
    assert [g[0] for g in got] == payloads(1000)
    assert (out_rc, in_rc) == (0, 0), (out_err, in_err)
    assert "acked 1000" in out_err and "written 1000" in in_err
    assert shmbus.inspect("b", b_ns)["capacity"] == 1 << 20


def test_bridge_in_without_a_ring_or_capacity_says_so(ns, nats_server):
    proc = shmbus_cmd("bridge", "in", "nothere", "--server", nats_server.url,
                      "--subject", "orders", namespace=ns)
    _, err = proc.communicate(timeout=20)
    rc = proc.returncode
    assert rc == 1
    assert "ring 'nothere' does not exist" in err and "Traceback" not in err
