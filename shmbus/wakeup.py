"""The wake-up protocol: a waiter's :class:`Sleeper` and the other side's :class:`Waker`.

This module and :mod:`shmbus.layout` are where memory ordering is reasoned about.

The protocol costs the side that makes progress no system call while nobody sleeps.  A
waiter about to sleep makes its *sleep epoch* (a word of the ring only it writes) odd,
issues a full fence, re-checks its condition, and only then sleeps; the other side,
after publishing progress, reads the waiter's epoch (one load) and wakes it only if it
is odd and not already woken for that epoch.  The fence orders the waiter's epoch
store before its re-check.  The publishing side does not fence (that would cost every
message a locked instruction), so on x86-64 its cursor store may still sit in its store
buffer when it reads the epoch: a wake-up can be missed, but only by a publish that
races with the epoch store.  That is why the first sleeps are bounded by ``max_sleep``
(:data:`MAX_SLEEP`): a missed wake-up delays a waiter by at most that much and can
never hang it.  The epoch stays odd for the whole wait, so once ``max_sleep`` has
passed every publish sees it and wakes it: later sleeps are long (``long_sleep``), and
an idle waiter wakes about twice a second instead of a hundred times.

**Where the waiter sleeps: a semaphore, or a file descriptor.**  A blocking call
(``recv``, ``send`` on a full ring) sleeps on the waiter's POSIX semaphore.  A waiter
that waits in ``select``/``poll`` or an event loop (:class:`shmbus.Poller`,
``shmbus.asyncio``, a user's ``selectors``) *arms* instead (:meth:`Sleeper.arm`): it
sets the same odd epoch with bit :data:`FD_WAIT` set, the same fence and re-check, and
then watches its wake-up FIFO (:mod:`shmbus.wakefifo`); the waking side, at the very
place where it would post the semaphore and under the same once-per-epoch rule, writes
one byte to the FIFO instead when the epoch carries that bit.  So a flowing pipeline
still makes no system call per message, whichever way its consumers wait, and the
epoch tells the waking side which of the two to use, per sleep, with no other shared
state.  The bound above holds for descriptor waiters too: whoever watches the
descriptor must time out after ``max_sleep`` (then ``long_sleep``) and look again, as
:class:`shmbus.Poller` and ``shmbus.asyncio`` do.  After waking, :meth:`Sleeper.disarm`
reads the FIFO empty and makes the epoch even.

One waiter per consumer at a time: a consumer is polled, or blocked in a receive, not
both at once from two threads.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Callable

import posix_ipc  # type: ignore[import-not-found, unused-ignore]

from . import ownership, wakefifo
from .errors import PermissionDenied, ShmbusError
from .layout import FD_WAIT

if TYPE_CHECKING:
    from .wait import WaitStrategy

__all__ = ["Sleeper", "Waker", "fence", "FD_WAIT", "MAX_SLEEP", "LONG_SLEEP"]

MAX_SLEEP = 0.01   # seconds: the longest a missed wake-up can delay a waiter
LONG_SLEEP = 0.5   # seconds: sleeps once no wake-up can be missed

_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier: taking an uncontended lock is a LOCK-prefixed
    read-modify-write on x86-64, which orders earlier stores before later loads."""
    _fence_lock.acquire()
    _fence_lock.release()


class Sleeper:
    """One waiter's side of the protocol: its sleep-epoch word, its semaphore, and
    (created on first use) its wake-up FIFO.  ``how`` is its wait strategy
    (:mod:`shmbus.wait`).

    ``words[epoch_index]`` is written only by this waiter.
    """

    def __init__(self, words: memoryview, epoch_index: int, sem_name: str,
                 how: "WaitStrategy", flag: tuple[memoryview, int] | None = None) -> None:
        self.words = words
        self.epoch_index = epoch_index
        # Optionally a byte set while asleep, so the waker can test several waiters
        # with one load (a byte store never disturbs the neighbouring bytes).
        self.flag_buf: memoryview | None
        self.flag_buf, self.flag_index = flag if flag else (None, 0)
        self.how = how
        self.sem_name = sem_name
        # Ours, or refused (PermissionDenied): see shmbus.ownership.
        self.sem = ownership.open_semaphore(sem_name, create=True)
        epoch = words[epoch_index]
        if epoch & 1:  # a previous owner died asleep: make it even
            words[epoch_index] = (epoch & ~FD_WAIT) + 1
        if self.flag_buf is not None:
            self.flag_buf[self.flag_index] = 0
        # Threads asleep in wait(); close() from another thread must not free the
        # semaphore under a thread blocked on it (sem_timedwait on a closed semaphore
        # crashes the interpreter): the last one out closes it instead.  The FIFO
        # likewise stays open while armed (a poller may be watching it).
        self._guard = threading.Lock()
        self._inside = 0
        self.closing = False
        self.fifo: int | None = None
        self.armed = False

    def wait(self, ready: Callable[[], bool], deadline: float | None,
             above: tuple[memoryview, int, int] | None = None) -> bool:
        """Wait as the strategy says until ``ready()`` is true or ``deadline``
        (time.monotonic) passes; return whether it became ready.  Returns True at once
        (without calling ``ready``) once :meth:`close` was called: the caller checks
        why it woke.  ``above=(segment, word, value)`` says that ``ready()`` means
        "that word of the segment is greater than value" (the compiled path spins on
        it without the GIL)."""
        return bool(self.how.wait(self, ready, deadline, above))

    # -- sleeping on the semaphore ------------------------------------------------------

    def sleep(self, ready: Callable[[], bool], deadline: float | None,
              max_sleep: float = MAX_SLEEP, long_sleep: float = LONG_SLEEP) -> bool:
        """The sleeping phase: sleep on the semaphore (epoch odd meanwhile) until
        ``ready()``, closing, or ``deadline``; sleeps last at most ``max_sleep`` until
        that long has passed since the epoch went odd, at most ``long_sleep`` after."""
        if deadline is not None and time.monotonic() >= deadline:
            return self.closing or ready()  # recv(0), send(timeout=0): one look
        if not self._enter():
            return True  # closed
        try:
            return self._sleep(ready, deadline, max_sleep, long_sleep)
        finally:
            self._leave()

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

    def _sleep(self, ready: Callable[[], bool], deadline: float | None,
               max_sleep: float, long_sleep: float) -> bool:
        words, i = self.words, self.epoch_index
        words[i] += 1  # odd: asleep
        if self.flag_buf is not None:
            self.flag_buf[self.flag_index] = 1
        fence()
        asleep_since = time.monotonic()
        sem = self.sem
        assert sem is not None  # closed only once the last sleeper has left
        try:
            while True:
                if self.closing or ready():
                    return True
                now = time.monotonic()
                # Only a publish racing with the epoch store can miss us: sleep short
                # until max_sleep has passed since then, long after.
                timeout = max_sleep if now - asleep_since < max_sleep else long_sleep
                if deadline is not None:
                    timeout = min(timeout, deadline - now)
                    if timeout <= 0:
                        return ready()
                try:
                    sem.acquire(timeout)
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

    # -- waiting on a file descriptor -------------------------------------------------

    def fileno(self) -> int:
        """The wake-up FIFO's descriptor (created on first use): readable after a
        wake-up while armed.  Raises :class:`PermissionDenied` if what is in its place
        is not ours, ``ShmbusError`` once closing."""
        with self._guard:
            if self.closing:
                raise ShmbusError(f"waiter {self.sem_name} is closed", name=self.sem_name)
            if self.fifo is None:
                self.fifo = wakefifo.create(*wakefifo.name_for(self.sem_name))
            return self.fifo

    def arm(self, ready: Callable[[], bool]) -> bool:
        """Ask to be woken through :meth:`fileno` (the epoch goes odd with
        :data:`FD_WAIT`, then the fence, then the re-check).  Returns True, and stays
        unarmed, if ``ready()`` already (or closing); False once armed: watch the
        descriptor (with the bounded timeouts), then :meth:`disarm`."""
        if self.armed:
            return self.closing or ready()
        if self.closing or ready():
            return True
        self.fileno()
        words, i = self.words, self.epoch_index
        words[i] = (words[i] + 1) | FD_WAIT  # odd: asleep, on the FIFO
        if self.flag_buf is not None:
            self.flag_buf[self.flag_index] = 1
        self.armed = True
        fence()
        if self.closing or ready():
            self.disarm()
            return True
        return False

    def disarm(self) -> None:
        """Stop waiting on the descriptor: read it empty, make the epoch even.
        Idempotent; frees the FIFO if :meth:`close` was called meanwhile."""
        if not self.armed:
            return
        with self._guard:
            self.armed = False
            fifo = self.fifo
            if fifo is not None:
                wakefifo.drain(fifo)
            if self.closing:  # the slot may be another consumer's by now: hands off
                if fifo is not None:
                    self.fifo = None
                    wakefifo.remove(*wakefifo.name_for(self.sem_name), fifo)
                return
        words, i = self.words, self.epoch_index
        if self.flag_buf is not None:
            self.flag_buf[self.flag_index] = 0
        words[i] = (words[i] & ~FD_WAIT) + 1  # even: awake

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Wake every thread waiting here (their ``ready`` must then see the owner
        closed; a poller watching the FIFO finds it readable) and free the semaphore
        and the FIFO once the last of them has left.  Idempotent; callable from any
        thread."""
        with self._guard:
            if self.closing:
                return
            self.closing = True
            fifo = self.fifo
            if self.armed and fifo is not None:
                wakefifo.write(fifo)  # disarm() frees it
                fifo = None
            else:
                self.fifo = None
            sem = None
            if self._inside and self.sem is not None:
                for _ in range(self._inside):
                    self.sem.release()
            else:
                sem, self.sem = self.sem, None
        if sem is not None:
            sem.close()
        if fifo is not None:
            wakefifo.remove(*wakefifo.name_for(self.sem_name), fifo)


class Waker:
    """The publishing side: wakes a sleeper when its epoch is odd, once per epoch, on
    its semaphore or (epoch with :data:`FD_WAIT`) through its FIFO."""

    def __init__(self, sem_name: str) -> None:
        self.sem_name = sem_name
        self.sem: posix_ipc.Semaphore | None = None
        self.fifo: int | None = None
        self.posted = -1
        self.closed = False
        # Posting and closing may come from two threads (a send and a close): never
        # close the semaphore under a post.  Taken only when a waiter sleeps.
        self._guard = threading.Lock()

    def wake(self, epoch: int) -> None:
        """Wake once for this sleep ``epoch`` (an odd number).  Never raises for a
        waiter it cannot reach: that waiter's sleeps are bounded."""
        if epoch == self.posted:
            return
        with self._guard:
            if self.closed:
                return
            self.posted = epoch
            if epoch & FD_WAIT:
                self._write_fifo()
                return
            if self.sem is None:
                try:
                    self.sem = ownership.open_semaphore(self.sem_name, create=False)
                except PermissionDenied:
                    return  # not ours: never post it (its waiter's sleeps are bounded)
                if self.sem is None:
                    return  # the waiter is gone; nobody to wake
            self.sem.release()

    def _write_fifo(self) -> None:
        for _ in range(2):  # the cached descriptor, then the name again
            if self.fifo is None:
                try:
                    self.fifo = wakefifo.open_writer(*wakefifo.name_for(self.sem_name))
                except (OSError, ShmbusError):
                    return  # not ours (never written to), or unreadable: bounded sleeps
                if self.fifo is None:
                    return  # nobody reads it: the waiter is gone
            if wakefifo.write(self.fifo):
                return
            # Its reader is gone: the slot may have a new owner with a new FIFO.
            os.close(self.fifo)
            self.fifo = None

    def close(self) -> None:
        with self._guard:
            self.closed = True
            sem, self.sem = self.sem, None
            fifo, self.fifo = self.fifo, None
        if sem is not None:
            sem.close()
        if fifo is not None:
            os.close(fifo)
