"""``shmbus top``: a screen an operator reads at a glance: rates with units, lag in
messages and bytes, the consumer holding a producer back, sorting, colour only on a
terminal, JSON for scripts; and read-only (it never holds a producer back)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest
from click.testing import CliRunner

import shmbus
from shmbus import layout
from shmbus.tools import snapshot, top
from shmbus.tools.cli import main

from . import procs as P
from .support import SPAWN, await_until, start

pytestmark = pytest.mark.timeout(60)
ESC = "\x1b["


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def once(*args: str) -> dict:
    r = run("top", "--once", "--interval", "0", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_rates_have_units_and_lag_counts_messages_and_bytes(ns):
    """Rates over a known interval: what the test sent and read, per second."""
    size = layout.record_size(0, 100)
    with shmbus.Producer("orders", capacity=1 << 16) as pub, \
            shmbus.Consumer("orders", durable="billing") as sub:
        before = snapshot.take(ns)
        pub.send_many([b"x" * 100] * 100)
        sub.recv_many(40, timeout=1)
        sub.release()
        after = snapshot.take(ns)
        after["time"] = before["time"] + 2.0  # as if 2 s went by
        data = top.view(before, after)
        (ring,) = data["rings"]
        (billing,) = ring["consumers"]
        assert ring["msgs_per_s"] == 50 and ring["bytes_per_s"] == 100 * size / 2
        assert billing["msgs_per_s"] == 20 and billing["bytes_per_s"] == 40 * size / 2
        assert billing["lag_messages"] == 60 and billing["lag_bytes"] == 60 * size
        text = top.render(data, top.Painter(False), live=False)
        assert f"namespace {ns}" in text and "rates over 2.0 s" in text
        assert "MSG/S" in text and "BYTES/S" in text and "LAG MSGS" in text
        ring_line = next(line for line in text.splitlines() if line.startswith("orders"))
        assert ring_line.split()[-2:] == ["50", "6.2K/s"]  # 6400 B/s
        line = next(line for line in text.splitlines() if "billing" in line)
        assert line.split()[3:8] == ["20", "2.5K/s", "60", "7.5K", "0"]
    shmbus.unlink("orders")


def test_holding_back_a_producer_is_highlighted(ns, procs):
    """A live producer blocked on a full ring: the durable consumer that does not read
    is flagged, in red on a terminal; the one that keeps up is not."""
    shmbus.Producer("full", capacity=4096).close()
    with shmbus.Consumer("full", durable="slow"):
        pass  # a detached durable cursor at 0: the producer must keep its messages
    started = SPAWN.Event()
    producer = start(P.produce, ns, "full", 4096, -1, started)
    procs.append(producer)
    assert started.wait(30)
    await_until(lambda: shmbus.inspect("full")["producer_waiting"], 30,
                what="the producer waits for room")
    data = once()
    (ring,) = data["rings"]
    (slow,) = ring["consumers"]
    assert slow["name"] == "slow" and slow["gate"] and slow["holds_back"]
    assert ring["producer_waiting"] and ring["fill"] > 0.9
    r = run("top", "--once", "--interval", "0", "--color", "always")
    (line,) = [line for line in r.output.splitlines() if "slow" in line]
    assert "holds back the producer (ring full)" in line
    assert line.startswith(ESC) and f"{ESC}31m" in line  # red
    plain = run("top", "--once", "--interval", "0").output  # not a terminal: no colour
    assert "holds back the producer" in plain and ESC not in plain
    producer.terminate()
    producer.join(10)
    from shmbus.cleanup import collect
    shmbus.unlink("full")
    collect(force=True)


def test_the_slowest_consumer_is_marked_and_top_holds_nothing_back(ns):
    with shmbus.Producer("r", capacity=1 << 14) as pub, \
            shmbus.Consumer("r", durable="late") as late, shmbus.Consumer("r") as quick:
        pub.send_many([b"m"] * 10)
        quick.recv_many(10, timeout=1)
        quick.release()
        late.recv(timeout=1)
        late.recv(timeout=1)  # released one
        (ring,) = once()["rings"]
        by_name = {c["name"]: c for c in ring["consumers"]}
        assert by_name["late"]["gate"] and not by_name["late"]["holds_back"]
        assert by_name["late"]["lag_messages"] == 9
        assert not by_name[f"pid {os.getpid()} slot {quick.slot}"]["gate"]
        text = run("top", "--once", "--interval", "0").output
        assert "slowest" in next(line for line in text.splitlines() if "late" in line)
        assert [c["slot"] for c in shmbus.inspect("r")["consumers"]] == [0, 1]  # no slot
    shmbus.unlink("r")


def test_a_lapped_consumer_of_an_overwrite_ring_is_flagged(ns):
    with shmbus.Producer("o", capacity=4096, on_full="overwrite") as pub, \
            shmbus.Consumer("o") as sub:
        for _ in range(300):
            pub.send(b"x" * 40)
        (ring,) = once()["rings"]
        (c,) = ring["consumers"]
        assert c["lapped"] and not c["gate"]
        assert c["lag_messages"] == sub.pending  # what it can still receive
        assert "lapped" in run("top", "--once", "--interval", "0").output
    shmbus.unlink("o")


def test_sort_by_name_rate_or_lag(ns):
    with shmbus.Producer("a", capacity=1 << 14) as a, \
            shmbus.Producer("b", capacity=1 << 14) as b, \
            shmbus.Consumer("a", durable="x"), shmbus.Consumer("b", durable="y"):
        before = snapshot.take(ns)
        a.send_many([b"1"] * 3)
        b.send_many([b"2"] * 30)
        after = snapshot.take(ns)
        assert [r["name"] for r in top.view(before, after, "name")["rings"]] == ["a", "b"]
        assert [r["name"] for r in top.view(before, after, "rate")["rings"]] == ["b", "a"]
        assert [r["name"] for r in once("--sort", "lag")["rings"]] == ["b", "a"]
        assert [r["name"] for r in once("--sort", "name")["rings"]] == ["a", "b"]
    shmbus.unlink("a")
    shmbus.unlink("b")
    assert run("top", "--sort", "size").exit_code == 2


def _top_on(terminal: bool, ns: str, **env: str) -> str:
    """``shmbus top --once`` in a child process whose stdout is a terminal (a pty) or
    a pipe."""
    env = {**os.environ, "SHMBUS_NAMESPACE": ns, **env}
    argv = [sys.executable, "-m", "shmbus", "top", "--once", "--interval", "0"]
    if not terminal:
        return subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=30).stdout
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(argv, env=env, stdout=follower, stderr=subprocess.PIPE)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(30) == 0, proc.stderr.read()
        proc.stderr.close()
        return out.decode()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


@pytest.mark.timeout(120)
def test_colour_only_on_a_terminal_and_never_with_no_color(ns):
    with shmbus.Producer("r", capacity=1 << 14), shmbus.Consumer("r"):
        on_tty = _top_on(True, ns)
        assert ESC in on_tty and "RING / CONSUMER" in on_tty
        assert ESC not in _top_on(True, ns, NO_COLOR="1")
        piped = _top_on(False, ns)
        assert ESC not in piped and "RING / CONSUMER" in piped
        assert ESC in run("top", "--once", "--interval", "0", "--color", "always",
                          env={"NO_COLOR": "1"}).output  # an explicit choice wins
    shmbus.unlink("r")


def test_json_is_one_object_per_refresh(ns):
    with shmbus.Producer("r", capacity=1 << 14) as pub:
        pub.send(b"x")
        r = run("top", "--iterations", "2", "--interval", "0", "--json")
        frames = [json.loads(line) for line in r.output.splitlines()]
        assert len(frames) == 2 and all(f["namespace"] == ns for f in frames)
        assert frames[0]["rings"][0]["messages"] == 1
    shmbus.unlink("r")
