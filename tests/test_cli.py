"""The shmbus command: output, --json, exit codes, gc after kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import posix_ipc
import pytest
from click.testing import CliRunner

import shmbus
from shmbus.tools.cli import main

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
        r = run("ls", "--locks")
        assert "orders@producer" in r.output and "RING" in r.output
        assert "locks" in json.loads(run("ls", "--locks", "--json").output)
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
    assert json.loads(run("gc", "--json").output) == {"removed": [], "kept": []}  # alive
    kill9(producer)
    kill9(consumer)
    dry = json.loads(run("gc", "--dry-run", "--json").output)["removed"]
    assert {"kind": "ring", "name": "g", "reason": "no live producer or consumer"} in dry
    assert shmbus.list_rings() != []  # dry run removed nothing
    r = run("gc")
    assert r.exit_code == 0 and "removed ring g" in r.output
    # the ns fixture now checks that /dev/shm holds nothing of this namespace


def test_installed_command_runs_as_a_subprocess(ns):
    out = subprocess.run([sys.executable, "-m", "shmbus", "ls", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout) == []


def test_installed_console_script_runs_as_a_subprocess(ns, tmp_path):
    """The `shmbus` entry point installed next to this interpreter (what users run),
    run from a directory where the source tree is not importable."""
    script = os.path.join(os.path.dirname(sys.executable), "shmbus")
    assert os.access(script, os.X_OK), f"no shmbus console script beside {sys.executable}"
    env = {**os.environ, "SHMBUS_NAMESPACE": ns}
    env.pop("PYTHONPATH", None)

    def sh(*args):
        return subprocess.run([script, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=60)

    out = sh("ls", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
    assert sh("send", "s", "hello", "--capacity", "4096").returncode == 0
    out = sh("tail", "s", "--from", "earliest", "--count", "1")
    assert out.returncode == 0 and out.stdout == "0\t-\thello\n", out.stderr
    for argv, code in ((["inspect", "bad name"], 2), (["inspect", "missing"], 1)):
        out = sh(*argv)
        assert out.returncode == code and "Traceback" not in out.stderr, out.stderr
        errors = [line for line in out.stderr.splitlines() if "Error" in line]
        assert len(errors) == 1 and errors[0].startswith("Error: "), out.stderr
    shmbus.unlink("s")


def test_demo_runs_and_cleans_up():
    out = subprocess.run([sys.executable, "-m", "shmbus", "demo", "--seconds", "1",
                          "--workers", "2"], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "summary:" in out.stdout and "worker1:" in out.stdout
    assert "nothing left in /dev/shm" in out.stdout


def test_send_and_tail(ns):
    assert run("send", "t", "hello", "--capacity", "65536", "--count", "2").exit_code == 0
    r = CliRunner().invoke(main, ["send", "t", "-", "--key", "k"], input="a\nb\n")
    assert r.exit_code == 0
    r = run("tail", "t", "--from", "earliest", "--count", "4")
    assert r.output.splitlines() == ["0\t-\thello", "1\t-\thello", "2\tk\ta", "3\tk\tb"]
    r = run("tail", "t", "--from", "earliest", "--count", "1", "--format", "json")
    assert json.loads(r.output) == {"seq": 0, "key": None, "size": 5, "data": "hello",
                                    "timestamp_ns": json.loads(r.output)["timestamp_ns"]}
    assert run("tail", "t", "--from", "earliest", "--count", "1", "--format", "hex"
               ).output.strip().endswith("68656c6c6f")
    assert shmbus.inspect("t")["consumers"] == []  # tail left no slot behind
    assert run("send", "t").exit_code == 2
    assert run("tail", "missing", "--count", "1").exit_code == 1
    shmbus.unlink("t")


def test_tail_and_top_against_another_process(ns, procs):
    shmbus.Producer("live", capacity=1 << 16).close()
    started = SPAWN.Event()
    with shmbus.Consumer("live", durable="audit"):
        pass
    procs.append(start(P.produce, ns, "live", 1 << 16, 300, started))
    assert started.wait(30)
    r = run("tail", "live", "--from", "earliest", "--count", "300", "--format", "hex")
    assert r.exit_code == 0 and len(r.output.splitlines()) == 300
    r = run("top", "--once", "--interval", "0.1")
    assert r.exit_code == 0 and "live" in r.output and "audit" in r.output
    data = json.loads(run("top", "--iterations", "1", "--interval", "0.1", "--json").output)
    (ring,) = [r for r in data["rings"] if r["name"] == "live"]
    assert [c["name"] for c in ring["consumers"]] == ["audit"]
    procs[-1].join(30)
    shmbus.unlink("live")


def test_doctor(ns):
    r = run("doctor")
    assert r.exit_code == 0 and "/dev/shm size" in r.output and "CPU architecture" in r.output
    assert {c["check"] for c in json.loads(run("doctor", "--json").output)} >= {
        "/dev/shm size", "/dev/shm permissions", "CPU architecture", "leftovers"}


def test_quick_bench_reports_peers():
    r = run("bench", "--messages", "2000", "--only", "multiprocessing.Pipe", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):])
    assert data["results"]["shmbus"]["msgs_per_s"] > 0
    assert set(data["results"]) == {"shmbus", "shmbus-pure", "multiprocessing.Pipe"}
    assert all(v["p50_us"] > 0 and v["idle_cpu_percent"] >= 0
               for v in data["results"].values())


@pytest.mark.parametrize("argv", [
    ["inspect", "bad name"], ["tail", "a/b"], ["send", "x/y", "data"], ["rm", "@"],
    ["ls", "--namespace", "has.dot"], ["top", "--iterations", "0"],
    ["balancer", "run", "in", "--group", "g", "--policy", "random"],
    ["demo", "--workers", "0"], ["send", "r"], ["tail", "r", "--format", "xml"],
])
def test_bad_usage_exits_2(ns, argv):
    r = run(*argv)
    assert r.exit_code == 2, (argv, r.output)
    assert "Traceback" not in r.output


@pytest.mark.parametrize("argv", [["inspect", "nope"], ["tail", "nope", "--count", "1"],
                                  ["send", "nope", "x"], ["rm", "nope"],
                                  ["rm", "nope", "--durable", "d"]])
def test_missing_ring_exits_1(ns, argv):
    r = run(*argv)
    assert r.exit_code == 1 and "nope" in r.output, (argv, r.output)


def test_balancer_run_command(ns, procs):
    shmbus.Producer("in", capacity=1 << 16).close()
    results, stop = SPAWN.Queue(), SPAWN.Event()
    procs.append(start(P.run_worker, ns, "g", "w", results, stop))
    with shmbus.Producer("in") as pub:
        pub.send_many([b"1", b"2", b"3"])
    r = run("balancer", "run", "in", "--group", "g", "--seconds", "1.5")
    assert r.exit_code == 0 and "dispatched 3" in r.output
    got = sorted(results.get(timeout=10)[2] for _ in range(3))
    assert got == [b"1", b"2", b"3"]
    stop.set()
    procs[-1].join(10)
    from shmbus.cleanup import collect
    shmbus.unlink("in")
    collect(force=True)


def test_demo_leftover_check_sees_semaphores(ns):
    from shmbus.tools.demo import leftovers
    sem = posix_ipc.Semaphore(f"/{ns}.demo.in@c0", posix_ipc.O_CREX)
    try:
        assert leftovers(ns) == [f"sem.{ns}.demo.in@c0"]
    finally:
        sem.unlink()
        sem.close()
    assert leftovers(ns) == []


VERBS = [["ls"], ["inspect"], ["top"], ["metrics"], ["tail"], ["send"], ["rm"], ["gc"],
         ["locks"], ["doctor"], ["balancer"], ["balancer", "run"], ["demo"], ["bench"]]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_of_each_verb_shows_an_example(verb):
    r = run(*verb, "--help")
    assert r.exit_code == 0, r.output
    example = r.output[r.output.index("Example"):]
    assert f"shmbus {' '.join(verb)} " in example, r.output


def test_every_verb_is_in_the_help_test():
    listed = {v[0] for v in VERBS}
    assert set(main.commands) - {"bridge"} <= listed  # bridge: its own tests


def test_send_capacity_accepts_sizes_as_ls_prints_them(ns):
    for given, capacity in (("64K", 1 << 16), ("1M", 1 << 20), ("8192", 8192),
                            ("0.5M", 1 << 19), ("16KiB", 1 << 14), ("5000", 8192)):
        r = run("send", "s", "x", "--capacity", given)
        assert r.exit_code == 0, (given, r.output)
        assert shmbus.inspect("s")["capacity"] == capacity, given
        printed = json.loads(run("ls", "--json").output)[0]["capacity"]
        assert printed == capacity
        shmbus.unlink("s")
    from shmbus.tools import fmt  # what ls prints reads back as the same size
    assert run("send", "s", "x", "--capacity", fmt.size(1 << 15)).exit_code == 0
    assert shmbus.inspect("s")["capacity"] == 1 << 15
    assert "32K" in run("ls").output
    shmbus.unlink("s")


@pytest.mark.parametrize("given, problem", [
    ("12Q", "is not a size: expected bytes (65536) or a number with K, M, G or T"),
    ("1K", "out of range: expected 4K to 1T"), ("M", "is not a size"),
    ("-1M", "is not a size"), ("2T", "out of range")])
def test_send_capacity_refuses_what_is_not_a_size(ns, given, problem):
    r = run("send", "s", "x", "--capacity", given)
    assert r.exit_code == 2 and problem in r.output, r.output
    assert "Traceback" not in r.output and shmbus.list_rings() == []


def test_size_parses_what_ls_prints():
    from shmbus.tools.options import Size
    size = Size(0, 1 << 50)
    assert [size.convert(v, None, None) for v in ("1.5G", "1M", "64k", "512B", "1.5K",
                                                  "4096", " 2 M ")] == [
        3 << 29, 1 << 20, 1 << 16, 512, 1536, 4096, 2 << 20]
