"""FileLock: exclusion between processes and threads, death of the holder, fork."""

from __future__ import annotations

import errno
import gc
import os
import threading

import pytest

import shmbus
from shmbus import naming
from shmbus.errors import AlreadyHeld

from . import procs as P
from .security import run_forked
from .support import SPAWN, kill9, start

pytestmark = pytest.mark.timeout(120)


def test_counter_is_exact_under_contention(ns, procs, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    go = SPAWN.Event()
    workers = [start(P.increment_under_lock, ns, "counter", str(counter), 200, go)
               for _ in range(4)]
    procs.extend(workers)
    go.set()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert counter.read_text() == "800"


def test_kill9_of_holder_releases_at_once(ns, procs):
    held = SPAWN.Event()
    holder = start(P.hold_lock, ns, "k", False, held)
    procs.append(holder)
    assert held.wait(30)
    lock = shmbus.FileLock("k")
    assert not lock.try_acquire()
    (h,) = lock.holders()
    assert (h.pid, h.mode, h.waiting) == (holder.pid, "exclusive", False)
    assert h.since is not None
    with pytest.raises(shmbus.Timeout, match=f"pid {holder.pid}"):
        lock.acquire(timeout=0.05)
    kill9(holder)
    with lock.acquire(timeout=5):
        assert lock.held


def test_shared_holders_exclude_writers(ns, procs):
    held = SPAWN.Event()
    reader = start(P.hold_lock, ns, "rw", True, held)
    procs.append(reader)
    assert held.wait(30)
    with shmbus.FileLock("rw", shared=True) as mine:
        assert mine.held
        modes = sorted(h.mode for h in mine.holders())
        assert modes == ["shared", "shared"]
    writer = shmbus.FileLock("rw")
    assert not writer.try_acquire()
    kill9(reader)
    assert writer.try_acquire()
    writer.release()


def test_threads_exclude_each_other_and_reentrancy(ns):
    lock = shmbus.FileLock("t")
    with lock:
        with lock:  # reentrant in the same thread
            assert lock.held
        assert lock.held
        result = []
        other = threading.Thread(target=lambda: result.append(
            shmbus.FileLock("t").try_acquire()))
        other.start()
        other.join(10)
        assert result == [False]
    assert not lock.held
    strict = shmbus.FileLock("t", reentrant=False)
    with strict:
        # A programming error, not a reason to wait: never a Timeout (issue 11).
        for timeout in (0, 5, None):
            with pytest.raises(AlreadyHeld, match="not reentrant") as caught:
                strict.acquire(timeout)
            assert not isinstance(caught.value, shmbus.Timeout)
            assert isinstance(caught.value, (shmbus.ShmbusError, RuntimeError))
        assert not strict.try_acquire()  # not free: Producer reports RingBusy
        assert strict.held
    assert not strict.held


def test_fork_child_does_not_hold_parent_lock(ns):
    lock = shmbus.FileLock("f")
    lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # child: report through the exit code only
            code = 0
            try:
                if lock.held:
                    code = 1
                try:
                    lock.release()
                    code = 2
                except shmbus.NotHeld:
                    pass
                if shmbus.FileLock("f").try_acquire():
                    code = 3
            except BaseException:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert lock.held  # the child's exit did not release it
        assert [h.pid for h in lock.holders()] == [os.getpid()]
    finally:
        lock.release()


def test_release_not_held_and_bad_input(ns):
    lock = shmbus.FileLock("x")
    with pytest.raises(shmbus.NotHeld, match="not held"):
        lock.release()
    with pytest.raises(shmbus.InvalidName):
        shmbus.FileLock("a/b")
    with pytest.raises(ValueError, match="timeout"):
        shmbus.FileLock("x", timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire(timeout=-2)


def test_lock_files_vanish_and_list_locks(ns):
    a, b = shmbus.FileLock("a"), shmbus.FileLock("b", shared=True)
    with a, b:
        listed = {entry["name"]: entry for entry in shmbus.list_locks()}
        assert set(listed) == {"a", "b"}
        assert listed["a"]["holders"][0]["pid"] == os.getpid()
        assert listed["b"]["holders"][0]["mode"] == "shared"
    assert not os.path.exists(naming.lock_dir(ns))


def _finalizer_inside_state_for(ns: str) -> str:
    """In a forked child: a garbage collection inside ``_state_for`` runs a finalizer
    that releases another FileLock (what a Consumer's ``__del__`` does)."""
    from shmbus import lock as lock_module

    victim = shmbus.FileLock("gc-victim")
    victim.acquire()

    class Finalized:
        def __del__(self):
            victim.release()  # -> _state_for, on the thread that is inside it

    real = lock_module._PathState

    def collecting_state():
        garbage = Finalized()
        garbage.cycle = garbage  # only the cyclic collector frees it
        del garbage
        gc.collect()
        return real()

    lock_module._PathState = collecting_state
    other = shmbus.FileLock("gc-other")
    with other:
        pass
    return "no deadlock" if not victim.held else "finalizer did not run"


@pytest.mark.timeout(30)
def test_finalizer_during_state_lookup_does_not_deadlock(ns):
    # Issue 11 item 2: Producer.__init__ -> _state_for held a lock -> allocation -> GC
    # -> Consumer.__del__ -> _state_for waited for that lock on the same thread.
    assert run_forked(_finalizer_inside_state_for, ns, timeout=10) == "no deadlock"


class _NoRoom:
    """``os`` as a module sees it when /dev/shm is full: ``names`` fail with ENOSPC."""

    def __init__(self, *names: str) -> None:
        self._names = names

    def __getattr__(self, name: str):
        if name in self._names:
            def no_room(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return no_room
        return getattr(os, name)


def test_full_dev_shm_when_taking_a_lock_is_shm_full(ns, monkeypatch):
    from shmbus import lock as lock_module
    monkeypatch.setattr(lock_module, "os", _NoRoom("write"))
    with pytest.raises(shmbus.ShmFull, match="full"):
        shmbus.FileLock("x").acquire(timeout=1)
    monkeypatch.undo()
    assert not os.path.exists(naming.lock_dir(ns))  # no empty lock file left behind
    from shmbus import lockdir
    monkeypatch.setattr(lockdir, "os", _NoRoom("mkdir"))
    with pytest.raises(shmbus.ShmFull, match="full"):
        shmbus.FileLock("x").acquire(timeout=1)
    with pytest.raises(shmbus.ShmFull, match="full"):
        shmbus.Lease("l", ttl=1).acquire(timeout=1)


def test_a_lock_taken_in_one_thread_is_released_from_another(ns):
    """Closing a handle from another thread (a durable Consumer, a Producer, an Inbox:
    close() wakes a thread blocked in them) releases locks that thread did not take;
    afterwards every thread may take them again."""
    lock = shmbus.FileLock("handoff", namespace=ns)
    taker = threading.Thread(target=lock.acquire)
    taker.start()
    taker.join(10)
    assert lock.held
    lock.release()  # from this thread
    assert not lock.held and lock.holders() == []
    again = shmbus.FileLock("handoff", namespace=ns, timeout=5)
    retaker = threading.Thread(target=lambda: again.acquire() and again.release())
    retaker.start()
    retaker.join(10)
    assert not retaker.is_alive() and not again.held
