"""The wake-up protocol in one process: a sleeper in a thread, woken by a Waker."""

from __future__ import annotations

import mmap
import threading
import time

import posix_ipc

from shmbus import naming
from shmbus.wait import Sleeper, Sleeping, Waker

from .support import await_until


def test_a_post_wakes_a_long_sleeper_and_the_epoch_stays_odd_while_it_sleeps(ns):
    # Sleeps of up to 30 s once falling asleep is over: only the post can wake it soon.
    how = Sleeping(max_sleep=0.001, long_sleep=30.0)
    words = memoryview(mmap.mmap(-1, 4096)).cast("Q")
    name = naming.consumer_semaphore_name(ns, "w", 0)  # the ns fixture checks it goes
    sleeper = Sleeper(words, 3, name, how)
    flag = threading.Event()
    outcome = {}

    def wait():
        t0 = time.monotonic()
        outcome["ready"] = sleeper.wait(flag.is_set, time.monotonic() + 20)
        outcome["waited"] = time.monotonic() - t0

    t = threading.Thread(target=wait)
    try:
        t.start()
        await_until(lambda: words[3] & 1, 10, what="the waiter sleeping")
        epoch = words[3]
        time.sleep(0.05)  # let it pass its short sleeps: the period under test
        assert words[3] == epoch  # one sleep epoch for the whole wait
        flag.set()
        Waker(name).wake(epoch)
        t.join(15)
        assert outcome["ready"] is True
        assert outcome["waited"] < 10  # woken by the post, not by a 20 s deadline
        assert not words[3] & 1        # awake again
    finally:
        flag.set()
        t.join(30)
        sleeper.close()
        posix_ipc.unlink_semaphore(name)


# -- the strategy family ----------------------------------------------------------------

import os
import signal
import sys

import pytest

import shmbus
from shmbus import wait as W
from shmbus.layout import S_SLEEP, slot_word


def test_names_give_the_family_and_an_instance_is_taken_as_it_is():
    assert isinstance(W.strategy("spin"), W.BusySpin)
    assert W.strategy("yield") == W.Yielding(spins=100)
    assert W.strategy("sleep") == W.Sleeping(max_sleep=0.01, long_sleep=0.5)
    assert W.strategy("adaptive") == W.Adaptive(2000, 0.0002, W.Sleeping())
    mine = W.Adaptive(spins=5, yield_for=0.0, then=W.Yielding(spins=0))
    assert W.strategy(mine) is mine
    with pytest.raises(ValueError, match="unknown wait strategy 'nap'"):
        W.strategy("nap")
    with pytest.raises(TypeError, match="base of the wait strategies"):
        shmbus.WaitStrategy("old", spin=0, yield_for=0.0, sleep=True)
    for bad in (lambda: W.Yielding(spins=-1), lambda: W.Sleeping(max_sleep=0),
                lambda: W.Adaptive(yield_for=-1.0), lambda: W.Sleeping(long_sleep="1")):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError):
        W.Adaptive(then="sleep")


def _epoch_after_a_timeout(how) -> tuple[int, int]:
    with shmbus.Producer("r", capacity=4096), shmbus.Consumer("r", wait=how) as sub:
        word = slot_word(sub.slot) + S_SLEEP
        before = sub._words[word]
        with pytest.raises(shmbus.Timeout):
            sub.recv(timeout=0.02)
        return before, sub._words[word]


@pytest.mark.parametrize("how, sleeps", [
    (W.BusySpin(), False), (W.Yielding(spins=3), False), (W.Sleeping(), True),
    (W.Adaptive(spins=10, yield_for=0.001), True),
    (W.Adaptive(spins=10, yield_for=0.0, then=W.Yielding()), False),  # then is used
    (W.Adaptive(spins=0, yield_for=0.0, then=W.BusySpin()), False),
])
def test_only_strategies_with_a_sleeping_phase_sleep(ns, how, sleeps):
    before, after = _epoch_after_a_timeout(how)
    assert (after > before) is sleeps  # the epoch went odd (and back) only to sleep
    assert not after & 1
    shmbus.unlink("r")


def test_a_wake_up_missed_while_falling_asleep_delays_by_at_most_max_sleep(ns):
    """A publish racing with the epoch store is not seen by the re-check after the
    fence and posts nothing: only the bounded first sleep finds it."""
    how = Sleeping(max_sleep=0.05, long_sleep=30.0)
    words = memoryview(mmap.mmap(-1, 4096)).cast("Q")
    name = naming.consumer_semaphore_name(ns, "m", 0)
    sleeper = Sleeper(words, 3, name, how)
    calls = []

    def ready() -> bool:  # the re-check after the fence misses it; it is there after
        calls.append(words[3] & 1)
        return len(calls) > 1

    try:
        t0 = time.monotonic()
        assert sleeper.wait(ready, t0 + 20) is True
        assert time.monotonic() - t0 < 10  # a 30 s (long) sleep would end at 20 s
        assert calls[0] == 1  # the re-check ran with the epoch already odd
    finally:
        sleeper.close()
        posix_ipc.unlink_semaphore(name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["spin", "yield", "sleep", "adaptive"])
def test_closing_wakes_a_waiting_receive_with_each_strategy(ns, how):
    with shmbus.Producer("r", capacity=4096):
        sub = shmbus.Consumer("r", wait=how)
        got = []
        t = threading.Thread(target=lambda: got.append(_recv_error(sub)))
        t.start()
        main = t.ident
        await_until(lambda: _in_wait(main), 10, what="the receive waiting")
        t0 = time.monotonic()
        sub.close()
        t.join(15)
        assert isinstance(got[0], shmbus.Closed), got
        assert time.monotonic() - t0 < 10  # woken by close, not by its 20 s timeout
    shmbus.unlink("r")


def _recv_error(sub):
    try:
        sub.recv(timeout=20)
    except Exception as e:
        return e


def _in_wait(thread_id: int) -> bool:
    """Whether that thread is inside a strategy's wait (spinning, yielding, asleep)."""
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_code.co_name in ("_spin", "_yield", "_sleep"):
            return True
        frame = frame.f_back
    return False


class Interrupted(Exception):
    pass


@pytest.mark.timeout(30)
def test_ctrl_c_interrupts_a_spinning_receive(ns):
    def on_sigint(*_):
        raise Interrupted()

    previous = signal.signal(signal.SIGINT, on_sigint)
    main = threading.get_ident()
    spinning = threading.Event()

    def interrupt():
        await_until(lambda: _in_wait(main), 10, what="the receive spinning")
        spinning.set()
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt)
    try:
        with shmbus.Producer("r", capacity=4096), \
                shmbus.Consumer("r", wait="spin") as sub:
            t.start()
            t0 = time.monotonic()
            with pytest.raises(Interrupted):
                sub.recv(timeout=20)
            assert spinning.is_set()
            assert time.monotonic() - t0 < 10  # not the 20 s timeout
    finally:
        t.join(15)
        signal.signal(signal.SIGINT, previous)
        shmbus.unlink("r")
