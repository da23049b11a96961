"""How to wait for a cursor to move: the wait strategy family (after the Disruptor's).

Each strategy is a small object whose :meth:`WaitStrategy.wait` waits for one waiter
(its :class:`~shmbus.wakeup.Sleeper`) until ``ready()`` is true or a deadline passes:

``BusySpin()``            ``wait="spin"``: re-read the cursor in a loop.  Lowest
                          latency; burns a core while waiting (on a two-core host that
                          core is the other process's: use with care).
``Yielding(spins=100)``   ``wait="yield"``: spin a little, then ``sched_yield`` between
                          reads (the Disruptor's YieldingWaitStrategy).
``Sleeping()``            ``wait="sleep"``: sleep on the waiter's semaphore at once,
                          until the other side posts it (see :mod:`shmbus.wakeup`).
``Adaptive()``            ``wait="adaptive"`` (default): spin, then yield for a while,
                          then fall back to another strategy (``Sleeping()`` by
                          default): a composition, like the Disruptor's
                          PhasedBackoffWaitStrategy.

``wait=`` takes a name or an instance (``Adaptive(spins=500, then=Yielding())``).
Every field of a strategy changes how it waits; none is accepted and ignored.

Spinning reads the cursor without a system call; on the compiled path
(:mod:`shmbus.hotpath`) it runs without the GIL in chunks of ``_SPIN_CHUNK`` reads,
between which closing, the deadline and signals (Ctrl-C) are looked at.  The wake-up
protocol, and why the first sleeps are bounded, is in :mod:`shmbus.wakeup`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import hotpath
from .wakeup import LONG_SLEEP, MAX_SLEEP, Sleeper, Waker, fence

if TYPE_CHECKING:
    from .choices import WaitName

__all__ = ["WaitStrategy", "BusySpin", "Yielding", "Sleeping", "Adaptive", "strategy",
           "STRATEGIES", "Sleeper", "Waker", "fence"]

_SPIN_CHUNK = 4096  # compiled spins between two looks at closing, deadline and signals
# (shmbus/csrc/hotpath.h: SPIN_CHUNK: a compiled recv spins at most that much itself)
_FOREVER = 1 << 62  # spins

Ready = Callable[[], bool]


class WaitStrategy:
    """The family's base: ``wait(sleeper, ready, deadline, above)`` returns True once
    ``ready()`` is true (or the sleeper is closing: the caller checks why it woke),
    False when ``deadline`` (``time.monotonic()``; None: never) has passed.

    ``above=(segment, word, value)`` says that ``ready()`` means "that word of the
    segment is greater than value": the compiled path spins on it without the GIL."""

    if not TYPE_CHECKING:  # (else type checkers take its signature for every strategy's)
        def __new__(cls, *args: Any, **kwargs: Any) -> "WaitStrategy":
            if cls is WaitStrategy:
                raise TypeError(
                    "WaitStrategy is the base of the wait strategies: use "
                    "shmbus.BusySpin(), Yielding(spins=100), Sleeping() or Adaptive(spins, "
                    "yield_for, then=...), or a name: 'spin', 'yield', 'sleep', 'adaptive'")
            return super().__new__(cls)

    #: Reads before the first system call: the compiled ``recv`` spins that much itself.
    spin: int = 0

    def wait(self, sleeper: Sleeper, ready: Ready, deadline: float | None,
             above: tuple[memoryview, int, int] | None = None) -> bool:
        raise NotImplementedError


def _spin(sleeper: Sleeper, ready: Ready, deadline: float | None,
          above: tuple[memoryview, int, int] | None, spins: int) -> bool | None:
    """Re-read up to ``spins`` times: True when ready (or closing), False when the
    deadline passed, None when the spins ran out first."""
    if above is not None and hotpath.compiled:
        spin_above = hotpath.native.spin_above  # type: ignore[union-attr]
        if deadline is not None and time.monotonic() >= deadline:
            spins = 0  # recv(timeout=0): one look, no spin
        while spins > 0:  # in chunks: closing, the deadline and signals in between
            if sleeper.closing or spin_above(*above, min(spins, _SPIN_CHUNK)) and ready():
                return True
            spins -= _SPIN_CHUNK
            if deadline is not None and time.monotonic() >= deadline:
                return ready()
        return None
    for _ in range(spins):
        if sleeper.closing or ready():
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return ready()
    return None


def _yield(sleeper: Sleeper, ready: Ready, deadline: float | None,
           until: float | None) -> bool | None:
    """``sched_yield`` between reads: True when ready (or closing), False when the
    deadline passed, None when ``until`` passed first (None: never)."""
    while True:
        if sleeper.closing or ready():
            return True
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        if until is not None and now >= until:
            return None
        os.sched_yield()


@dataclass(frozen=True)
class BusySpin(WaitStrategy):
    """Re-read the cursor until it moves or the deadline passes (``wait="spin"``)."""

    spin = _FOREVER

    def wait(self, sleeper: Sleeper, ready: Ready, deadline: float | None,
             above: tuple[memoryview, int, int] | None = None) -> bool:
        while True:  # _FOREVER spins end only in theory; the deadline ends them
            got = _spin(sleeper, ready, deadline, above, _FOREVER)
            if got is not None:
                return got


@dataclass(frozen=True)
class Yielding(WaitStrategy):
    """Spin ``spins`` reads, then ``sched_yield`` between reads until the cursor moves
    or the deadline passes (``wait="yield"``, with 100 spins): never sleeps."""

    spins: int = 100

    def __post_init__(self) -> None:
        _check_count("spins", self.spins)

    @property
    def spin(self) -> int:  # type: ignore[override]
        return self.spins

    def wait(self, sleeper: Sleeper, ready: Ready, deadline: float | None,
             above: tuple[memoryview, int, int] | None = None) -> bool:
        got = _spin(sleeper, ready, deadline, above, self.spins)
        if got is not None:
            return got
        return bool(_yield(sleeper, ready, deadline, None))


@dataclass(frozen=True)
class Sleeping(WaitStrategy):
    """Sleep on the waiter's semaphore until the other side posts it (``wait="sleep"``).

    The first sleeps last at most ``max_sleep`` seconds, until that long has passed
    since the waiter said it sleeps: the bound on a missed wake-up (see
    :mod:`shmbus.wakeup`); later ones at most ``long_sleep`` (no wake-up can be
    missed by then; the waiter still wakes that often to look at closing and its
    deadline)."""

    max_sleep: float = MAX_SLEEP
    long_sleep: float = LONG_SLEEP

    def __post_init__(self) -> None:
        for name in ("max_sleep", "long_sleep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")

    def wait(self, sleeper: Sleeper, ready: Ready, deadline: float | None,
             above: tuple[memoryview, int, int] | None = None) -> bool:
        return sleeper.sleep(ready, deadline, self.max_sleep, self.long_sleep)


@dataclass(frozen=True)
class Adaptive(WaitStrategy):
    """Spin ``spins`` reads, then yield for ``yield_for`` seconds, then wait as
    ``then`` does (``wait="adaptive"``: 2000 spins, 0.2 ms of yielding, then
    :class:`Sleeping`)."""

    spins: int = 2000
    yield_for: float = 0.0002
    then: WaitStrategy = field(default_factory=Sleeping)

    def __post_init__(self) -> None:
        _check_count("spins", self.spins)
        if isinstance(self.yield_for, bool) or \
                not isinstance(self.yield_for, (int, float)) or not self.yield_for >= 0:
            raise ValueError(f"yield_for must be a number of seconds >= 0, "
                             f"got {self.yield_for!r}")
        if not isinstance(self.then, WaitStrategy):
            raise TypeError(f"then must be a WaitStrategy, got {self.then!r}")

    @property
    def spin(self) -> int:  # type: ignore[override]
        return self.spins

    def wait(self, sleeper: Sleeper, ready: Ready, deadline: float | None,
             above: tuple[memoryview, int, int] | None = None) -> bool:
        got = _spin(sleeper, ready, deadline, above, self.spins)
        if got is None and self.yield_for:
            got = _yield(sleeper, ready, deadline, time.monotonic() + self.yield_for)
        if got is not None:
            return got
        return self.then.wait(sleeper, ready, deadline, above)


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


STRATEGIES: dict[str, WaitStrategy] = {
    "spin": BusySpin(),
    "yield": Yielding(),
    "sleep": Sleeping(),
    "adaptive": Adaptive(),
}


def strategy(wait: "WaitName | WaitStrategy") -> WaitStrategy:
    """The strategy named ``wait`` (or ``wait`` itself); ValueError if unknown."""
    if isinstance(wait, WaitStrategy):
        return wait
    try:
        return STRATEGIES[wait]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown wait strategy {wait!r}: expected one of {', '.join(STRATEGIES)} "
            "or a shmbus wait strategy (BusySpin(), Yielding(), Sleeping(), "
            "Adaptive())") from None
