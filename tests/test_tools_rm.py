"""``shmbus rm``: never removes a live ring unless --force; an empty durable name is bad
usage, never "the whole ring"."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import shmbus
from shmbus import naming
from shmbus.tools.cli import main

from . import procs as P
from .support import SPAWN, kill9, start

pytestmark = pytest.mark.timeout(60)


def run(*args):
    return CliRunner().invoke(main, list(args))


def exists(ns: str, ring: str) -> bool:
    return os.path.lexists(naming.segment_path(ns, ring))


def test_rm_refuses_a_ring_with_a_live_producer_and_names_it(ns):
    with shmbus.Producer("live", capacity=1 << 14) as pub:
        r = run("rm", "live")
        assert r.exit_code == 1, r.output
        assert f"producer pid {os.getpid()}" in r.output and "--force" in r.output
        assert "Traceback" not in r.output and exists(ns, "live")
        pub.send(b"still mine")  # nothing happened to it
    assert run("rm", "live").exit_code == 0 and not exists(ns, "live")


def test_rm_refuses_a_ring_with_a_live_consumer_in_another_process(ns, procs):
    shmbus.Producer("r", capacity=1 << 14).close()
    attached = SPAWN.Event()
    consumer = start(P.attach_and_hang, ns, "r", attached)
    procs.append(consumer)
    assert attached.wait(30)
    r = run("rm", "r")
    assert r.exit_code == 1 and f"consumer pid {consumer.pid}" in r.output
    assert exists(ns, "r")
    with pytest.raises(shmbus.RingBusy):
        from shmbus.unlink import remove
        remove("r")
    r = run("rm", "r", "--force")
    assert r.exit_code == 0 and "removed ring 'r'" in r.output and not exists(ns, "r")
    kill9(consumer)
    from shmbus.cleanup import collect
    collect()  # the consumer's semaphore, if it made one


def test_rm_of_a_ring_nobody_uses(ns):
    with shmbus.Producer("idle", capacity=1 << 14) as pub:
        pub.send(b"x")
    with shmbus.Consumer("idle", durable="d"):
        pass
    r = run("rm", "idle")
    assert r.exit_code == 0 and not exists(ns, "idle")
    r = run("rm", "idle")
    assert r.exit_code == 1 and "does not exist" in r.output


@pytest.mark.parametrize("durable", ["", "bad/name"])
def test_rm_with_a_bad_durable_name_is_bad_usage_and_removes_nothing(ns, durable):
    shmbus.Producer("keep", capacity=1 << 14).close()
    r = run("rm", "keep", "--durable", durable)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and exists(ns, "keep")
    shmbus.unlink("keep")
