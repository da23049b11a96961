"""The balancer's API as a user meets it: a context manager, errors raised in the
caller (a missing input, a failure of the background thread), a worker's Timeout that
says when no balancer serves its group, and ``len(sub)`` / ``sub.pending`` (messages
waiting, not bytes) on consumers and workers."""

from __future__ import annotations

import logging

import pytest

import shmbus
from shmbus.balancer import Balancer, RoundRobin, Worker, read_stats

from . import procs as P
from .support import await_until, kill9, start

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def group(ns):
    shmbus.Producer("in", capacity=1 << 16).close()
    yield "g"
    from shmbus.cleanup import collect
    shmbus.unlink("in")
    collect(force=True)  # worker rings, stats, leases of the stopped group


def taken_on(group: str, worker: str):
    """Wait until the group's leader publishes stats that list ``worker``."""
    await_until(lambda: worker in ((read_stats(None, group) or {}).get("workers") or {}),
                30, what=f"worker {worker} taken on")


# -- pending: messages, not bytes ------------------------------------------------------

def test_pending_counts_messages_of_any_size(ns):
    with shmbus.Producer("r", capacity=1 << 16) as pub, shmbus.Consumer("r") as sub:
        assert len(sub) == sub.pending == 0 and sub  # an open consumer is always true
        pub.send_many([b"a", b"b" * 1000, b"c" * 3, b"d" * 200])
        assert len(sub) == 4 and sub.lag > 1000  # lag: bytes
        sub.recv(timeout=1)
        assert sub.pending == 3
        sub.recv_many(2, timeout=1)
        assert sub.pending == 1
        sub.recv(timeout=1)
        assert sub.pending == 0
        with shmbus.Consumer("r", start="earliest") as early:
            assert len(early) == 4  # its next seq is not known before a first recv
    shmbus.unlink("r")


def test_pending_of_a_resumed_durable_cursor(ns):
    with shmbus.Producer("r", capacity=1 << 16) as pub:
        with shmbus.Consumer("r", durable="d") as sub:
            pub.send_many([b"x" * (i * 7) for i in range(10)])
            sub.recv(timeout=1)
            sub.recv(timeout=1)
        with shmbus.Consumer("r", durable="d") as sub:  # resumes after the two it had
            assert sub.pending == 8
            n = len(sub.recv_many(100, timeout=1))
            assert n == 8 and sub.pending == 0
    shmbus.unlink("r")


def test_pending_on_a_lapped_overwrite_consumer_is_what_it_can_still_receive(ns):
    with shmbus.Producer("o", capacity=4096, on_full="overwrite") as pub, \
            shmbus.Consumer("o") as sub:
        for i in range(500):
            pub.send(b"%d" % i * 5)
        waiting = sub.pending
        assert 0 < waiting < 500  # the producer overwrote the rest
        got = []
        while (m := sub.try_recv()) is not None:
            got.append(m.seq)
        assert len(got) == waiting and got[-1] == 499 and sub.lost == 500 - waiting
        assert sub.pending == 0
    shmbus.unlink("o")


def test_pending_of_a_closed_consumer_raises_closed(ns):
    with shmbus.Producer("r", capacity=1 << 14):
        sub = shmbus.Consumer("r")
        sub.close()
        with pytest.raises(shmbus.Closed):
            len(sub)
    shmbus.unlink("r")


# -- Balancer: missing inputs, background errors, context manager --------------------

def test_start_on_a_missing_input_raises_in_the_caller(ns):
    b = Balancer("g", ["missing"], namespace=ns)
    with pytest.raises(shmbus.RingNotFound, match="input ring 'missing' of balancer "
                       "group 'g' does not exist.*create it first"):
        b.start()
    with pytest.raises(shmbus.RingNotFound):
        b.run()
    with pytest.raises(shmbus.RingNotFound):
        with Balancer("g", ["missing"], namespace=ns):
            pass
    assert b.join(0)  # nothing runs


class Exploding(RoundRobin):
    """A policy that fails once asked to place a message."""

    def share(self, count, room):
        raise RuntimeError("boom: policy failed")

    def pick(self, key=None, *, loads=None, skip=None):
        raise RuntimeError("boom: policy failed")


def test_an_error_that_ends_the_thread_is_raised_by_join_and_stop(group, caplog):
    caplog.set_level(logging.ERROR, "shmbus.balancer.balancer")
    with Worker(group, "w") as w:
        b = Balancer(group, ["in"], policy=Exploding(), poll=0.005)
        b.start()
        taken_on(group, "w")
        with shmbus.Producer("in") as pub:
            pub.send(b"m")
        with pytest.raises(RuntimeError, match="boom"):
            b.join(30)
        assert b.stop(5)  # raised once: stopping afterwards is quiet
        assert "stopped: RuntimeError: boom" in caplog.text
        with pytest.raises(shmbus.Timeout):
            w.recv(timeout=0)


def test_an_error_in_the_thread_is_raised_when_the_with_block_exits(group):
    with Worker(group, "w"):
        with pytest.raises(RuntimeError, match="boom"):
            with Balancer(group, ["in"], policy=Exploding(), poll=0.005) as b:
                taken_on(group, "w")
                with shmbus.Producer("in") as pub:
                    pub.send(b"m")
                b._thread.join(30)  # it ended; its error waits for the exit
                assert not b._thread.is_alive()


def test_with_block_starts_and_stops_the_balancer(group):
    with Worker(group, "w") as w:
        with Balancer(group, ["in"], poll=0.005) as b:
            with shmbus.Producer("in") as pub:
                pub.send(b"hello")
            assert bytes(w.recv(timeout=30)) == b"hello"
            assert b.leading.is_set()
        assert b.join(0) and not b.leading.is_set()
        assert read_stats(None, group) is None  # it let go: stats removed
        with Balancer(group, ["in"], poll=0.005) as again:  # the lease is free at once
            await_until(again.leading.is_set, 30, what="a new leader")


# -- Worker: a Timeout that says no balancer serves the group -------------------------

def test_worker_timeout_says_when_no_balancer_serves_it(group, ns, procs):
    with Worker(group, "w") as w:
        with pytest.raises(shmbus.Timeout, match="no balancer of group 'g' has taken "
                           "this worker on.*shmbus balancer run INPUT --group g") as e:
            w.recv(timeout=0.01)
        assert e.value.balancer is False and e.value.group == "g"
        with pytest.raises(shmbus.Timeout, match="no balancer of group 'g'"):
            w.recv_many(10, timeout=0.01)
        with pytest.raises(shmbus.Timeout, match="no balancer of group 'g'"):
            w.recv_array("u1", 10, timeout=0.01)

        balancer = start(P.run_balancer, ns, group, ["in"], "round-robin")
        procs.append(balancer)
        taken_on(group, "w")
        await_until(w._balancer_attached, 30, what="the leader writes into the ring")
        with pytest.raises(shmbus.Timeout) as e:  # a balancer serves it: a plain Timeout
            w.recv(timeout=0.01)
        assert "no balancer" not in str(e.value)
        with shmbus.Producer("in") as pub:
            pub.send(b"served")
        assert bytes(w.recv(timeout=30)) == b"served"

        kill9(balancer)  # a dead leader serves nobody
        with pytest.raises(shmbus.Timeout, match="no balancer of group 'g'"):
            w.recv(timeout=0.01)
