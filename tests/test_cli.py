"""The shmbus command: output, --json, exit codes, gc after kill -9."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import shmbus
from tools.cli import main

from . import procs as P
from .support import SPAWN, kill9, start

pytestmark = pytest.mark.timeout(120)


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_ls_inspect_locks_on_a_live_ring(ns):
    with shmbus.Producer("orders", capacity=1 << 16) as pub, \
            shmbus.Consumer("orders", durable="billing") as sub:
        pub.send_many([b"a", b"b", b"c"])
        sub.recv(timeout=1)
        r = run("ls")
        assert r.exit_code == 0 and "orders" in r.output and "64K" in r.output
        data = json.loads(run("ls", "--json").output)
        assert data[0]["messages"] == 3 and data[0]["durable"] == 1
        r = run("inspect", "orders")
        assert r.exit_code == 0 and "billing" in r.output and "alive" in r.output
        info = json.loads(run("inspect", "orders", "--json").output)
        assert info["consumers"][0]["next_seq"] == 0  # "a" not yet released
        r = run("locks")
        assert r.exit_code == 0 and "orders@producer" in r.output
    assert run("rm", "orders").exit_code == 0


def test_errors_have_exit_codes_and_one_line(ns):
    r = run("inspect", "missing")
    assert r.exit_code == 1 and "does not exist" in r.output
    assert "Traceback" not in r.output
    assert run("inspect", "bad/name").exit_code == 2
    assert run("rm", "missing").exit_code == 1
    assert run("nosuchverb").exit_code == 2


def test_gc_after_kill9_of_every_participant(ns, procs):
    shmbus.Producer("g", capacity=1 << 14).close()
    started, ready = SPAWN.Event(), SPAWN.Event()
    consumer = start(P.attach_and_hang, ns, "g", ready)
    producer = start(P.produce, ns, "g", 1 << 14, -1, started)
    procs.extend([consumer, producer])
    assert ready.wait(30) and started.wait(30)
    assert json.loads(run("gc", "--json").output) == []  # everything is alive
    kill9(producer)
    kill9(consumer)
    dry = json.loads(run("gc", "--dry-run", "--json").output)
    assert {"kind": "ring", "name": "g", "reason": "no live producer or consumer"} in dry
    assert shmbus.list_rings() != []  # dry run removed nothing
    r = run("gc")
    assert r.exit_code == 0 and "removed ring g" in r.output
    # the ns fixture now checks that /dev/shm holds nothing of this namespace


def test_installed_command_runs_as_a_subprocess(ns):
    out = subprocess.run([sys.executable, "-m", "shmbus", "ls", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_demo_runs_and_cleans_up():
    out = subprocess.run([sys.executable, "-m", "shmbus", "demo", "--seconds", "1",
                          "--workers", "2"], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "summary:" in out.stdout and "worker1:" in out.stdout
    assert "nothing left in /dev/shm" in out.stdout
