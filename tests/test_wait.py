"""The wake-up protocol in one process: a sleeper in a thread, woken by a Waker."""

from __future__ import annotations

import mmap
import threading
import time

import posix_ipc

from shmbus import naming
from shmbus.wait import Sleeper, Waker, WaitStrategy

from .support import await_until


def test_a_post_wakes_a_long_sleeper_and_the_epoch_stays_odd_while_it_sleeps(ns):
    # Sleeps of up to 30 s once falling asleep is over: only the post can wake it soon.
    how = WaitStrategy("test", spin=0, yield_for=0.0, sleep=True, max_sleep=0.001,
                       long_sleep=30.0)
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
