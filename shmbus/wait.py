"""Waiting for a cursor to move: the wait strategies and the wake-up protocol.

This module and :mod:`shmbus.layout` are where memory ordering is reasoned about.

Strategies (after the Disruptor's WaitStrategy family), as the ``wait=`` argument:

``"spin"``      re-read the cursor in a loop: lowest latency, burns a core while waiting
                (with two cores that core is the other process's: use with care);
``"yield"``     re-read, calling ``sched_yield`` between reads;
``"sleep"``     sleep on the waiter's POSIX semaphore at once;
``"adaptive"``  (default) spin briefly, then yield briefly, then sleep.

The wake-up protocol costs the side that makes progress no system call while nobody
sleeps.  A waiter about to sleep makes its *sleep epoch* odd, issues a full fence,
re-checks its condition, and only then sleeps on its semaphore; the other side, after
publishing progress, reads the waiter's epoch (one load) and posts the semaphore only if
it is odd and not already posted for that epoch.  The fence orders the waiter's epoch
store before its re-check.  The publishing side does not fence (that would cost every
message a locked instruction), so on x86-64 its cursor store may still sit in its store
buffer when it reads the epoch: a wake-up can be missed, but only by a publish that
races with the epoch store.  That is why the first sleeps are bounded by ``max_sleep``:
a missed wake-up delays a waiter by at most that much and can never hang it.  The epoch
stays odd for the whole wait, so once ``max_sleep`` has passed every publish sees it and
posts: later sleeps are long (``long_sleep``), and an idle consumer wakes about twice a
second instead of a hundred times.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import posix_ipc

from . import hotpath, ownership
from .errors import PermissionDenied


__all__ = ["WaitStrategy", "strategy", "fence", "Sleeper", "STRATEGIES"]

_SPIN_CHUNK = 4096  # compiled spins between two looks at closing, deadline and signals
# (shmbus/csrc/hotpath.h: SPIN_CHUNK: a compiled recv spins at most that much itself)

_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier: taking an uncontended lock is a LOCK-prefixed
    read-modify-write on x86-64, which orders earlier stores before later loads."""
    _fence_lock.acquire()
    _fence_lock.release()


@dataclass(frozen=True)
class WaitStrategy:
    """How to wait: ``spin`` reads, then ``yield_for`` seconds of ``sched_yield``, then
    (if ``sleep``) semaphore sleeps: of at most ``max_sleep`` seconds until that long
    has passed since the waiter said it sleeps (the bound on a missed wake-up), of at
    most ``long_sleep`` after (no wake-up can be missed then: every later publish sees
    the waiter's odd epoch)."""

    name: str
    spin: int
    yield_for: float
    sleep: bool
    max_sleep: float = 0.01
    long_sleep: float = 0.5


STRATEGIES = {
    "spin": WaitStrategy("spin", spin=1 << 62, yield_for=0.0, sleep=False),
    "yield": WaitStrategy("yield", spin=100, yield_for=float("inf"), sleep=False),
    "sleep": WaitStrategy("sleep", spin=0, yield_for=0.0, sleep=True),
    "adaptive": WaitStrategy("adaptive", spin=2000, yield_for=0.0002, sleep=True),
}


def strategy(wait: "str | WaitStrategy") -> WaitStrategy:
    """The strategy named ``wait`` (or ``wait`` itself); ValueError if unknown."""
    if isinstance(wait, WaitStrategy):
        return wait
    try:
        return STRATEGIES[wait]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown wait strategy {wait!r}: expected one of {', '.join(STRATEGIES)} "
            "or a shmbus.WaitStrategy") from None


class Sleeper:
    """One waiter's side of the protocol: its sleep-epoch word and its semaphore.

    ``words[epoch_index]`` is written only by this waiter.
    """

    def __init__(self, words: memoryview, epoch_index: int, sem_name: str,
                 how: WaitStrategy, flag: tuple[memoryview, int] | None = None) -> None:
        self.words = words
        self.epoch_index = epoch_index
        # Optionally a byte set while asleep, so the waker can test several waiters
        # with one load (a byte store never disturbs the neighbouring bytes).
        self.flag_buf, self.flag_index = flag if flag else (None, 0)
        self.how = how
        self.sem_name = sem_name
        # Ours, or refused (PermissionDenied): see shmbus.ownership.
        self.sem = ownership.open_semaphore(sem_name, create=True)
        if words[epoch_index] & 1:  # a previous owner died asleep: make it even
            words[epoch_index] += 1
        if self.flag_buf is not None:
            self.flag_buf[self.flag_index] = 0
        # Threads asleep in wait(); close() from another thread must not free the
        # semaphore under a thread blocked on it (sem_timedwait on a closed semaphore
        # crashes the interpreter): the last one out closes it instead.
        self._guard = threading.Lock()
        self._inside = 0
        self.closing = False

    def close(self) -> None:
        """Wake every thread waiting here (their ``ready`` must then see the owner
        closed) and free the semaphore once the last of them has left.  Idempotent;
        callable from any thread."""
        with self._guard:
            if self.closing:
                return
            self.closing = True
            if self._inside:
                for _ in range(self._inside):
                    self.sem.release()
                return
            sem, self.sem = self.sem, None
        if sem is not None:
            sem.close()

    def _enter(self) -> bool:
        """Count a thread that is about to sleep on the semaphore; False once closing
        (the semaphore may be gone).  Only sleepers are counted: spinning and
        yielding never touch the semaphore."""
        with self._guard:
            if self.closing:
                return False
            self._inside += 1
            return True

    def _leave(self) -> None:
        with self._guard:
            self._inside -= 1
            if not (self.closing and self._inside == 0 and self.sem is not None):
                return
            sem, self.sem = self.sem, None
        sem.close()

    def wait(self, ready: Callable[[], bool], deadline: float | None,
             above: tuple[memoryview, int, int] | None = None) -> bool:
        """Wait until ``ready()`` is true or ``deadline`` (time.monotonic) passes;
        return whether it became ready.  Returns True at once (without calling
        ``ready``) once :meth:`close` was called: the caller checks why it woke.
        ``above=(segment, word, value)`` says that ``ready()`` means "that word of the
        segment is greater than value": the compiled hot path then spins on it
        without the GIL."""
        how = self.how
        if above is not None and hotpath.compiled:
            spin_above, spins = hotpath.native.spin_above, how.spin
            if deadline is not None and time.monotonic() >= deadline:
                spins = 0  # recv(timeout=0): one look, no spin
            while spins > 0:  # in chunks: closing, the deadline and signals in between
                if self.closing or spin_above(*above, min(spins, _SPIN_CHUNK)) and ready():
                    return True
                spins -= _SPIN_CHUNK
                if deadline is not None and time.monotonic() >= deadline:
                    return ready()
        else:
            for _ in range(how.spin):
                if self.closing or ready():
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return ready()
        if how.yield_for:
            until = time.monotonic() + how.yield_for
            while True:
                if self.closing or ready():
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                if now >= until:
                    break
                os.sched_yield()
        if not how.sleep:  # never sleeps: keep yielding until ready or the deadline
            while not (self.closing or ready()):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                os.sched_yield()
            return True
        if not self._enter():
            return True  # closed
        try:
            return self._sleep(ready, deadline)
        finally:
            self._leave()

    def _sleep(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        how = self.how
        words, i = self.words, self.epoch_index
        words[i] += 1  # odd: asleep
        if self.flag_buf is not None:
            self.flag_buf[self.flag_index] = 1
        fence()
        asleep_since = time.monotonic()
        try:
            while True:
                if self.closing or ready():
                    return True
                now = time.monotonic()
                # Only a publish racing with the epoch store can miss us: sleep short
                # until max_sleep has passed since then, long after.
                timeout = how.max_sleep if now - asleep_since < how.max_sleep \
                    else how.long_sleep
                if deadline is not None:
                    timeout = min(timeout, deadline - now)
                    if timeout <= 0:
                        return ready()
                try:
                    self.sem.acquire(timeout)
                except (posix_ipc.BusyError, posix_ipc.SignalError):
                    pass  # timed out, or a signal handler ran: re-check either way
        finally:
            # Closed by another thread: the slot may already belong to another
            # consumer (whose Sleeper evens the epoch and clears the flag): hands off.
            if not self.closing:
                try:
                    if self.flag_buf is not None:
                        self.flag_buf[self.flag_index] = 0
                    words[i] += 1  # even: awake
                except ValueError:
                    pass  # closed meanwhile: the segment was let go of


class Waker:
    """The publishing side: posts a sleeper's semaphore when its epoch is odd."""

    def __init__(self, sem_name: str) -> None:
        self.sem_name = sem_name
        self.sem: posix_ipc.Semaphore | None = None
        self.posted = -1
        self.closed = False
        # Posting and closing may come from two threads (a send and a close): never
        # close the semaphore under a post.  Taken only when a waiter sleeps.
        self._guard = threading.Lock()

    def wake(self, epoch: int) -> None:
        """Post once for this sleep ``epoch`` (an odd number)."""
        if epoch == self.posted:
            return
        with self._guard:
            if self.closed:
                return
            self.posted = epoch
            if self.sem is None:
                try:
                    self.sem = ownership.open_semaphore(self.sem_name, create=False)
                except PermissionDenied:
                    return  # not ours: never post it (its waiter's sleeps are bounded)
                if self.sem is None:
                    return  # the waiter is gone; nobody to wake
            self.sem.release()

    def close(self) -> None:
        with self._guard:
            self.closed = True
            sem, self.sem = self.sem, None
        if sem is not None:
            sem.close()
