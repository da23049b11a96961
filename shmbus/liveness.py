"""Process identity and liveness.

A process is identified by its pid *and* its start time, so that a pid reused by an
unrelated process after the original died is not mistaken for the original.  Start
times are kept as integer hundredths of a second since the epoch (what psutil derives
from the kernel's start tick), which is exact enough to tell two processes apart.

A process is ``ALIVE`` (running, sleeping or stopped: a SIGSTOPped process may resume
and act), ``DEAD`` (gone, a zombie, or its pid now belongs to another process), or
``UNKNOWN`` (it exists but may not be inspected).  Only ``DEAD`` allows a cleanup.
"""

from __future__ import annotations

import enum
import os

import psutil

__all__ = ["Liveness", "ProcessId", "current", "start_time_of", "liveness"]


class Liveness(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


class ProcessId(tuple):
    """``(pid, start_time)``: one process, unambiguous even after pid reuse."""

    __slots__ = ()

    def __new__(cls, pid: int, start_time: int) -> "ProcessId":
        return tuple.__new__(cls, (pid, start_time))

    @property
    def pid(self) -> int:
        return self[0]

    @property
    def start_time(self) -> int:
        return self[1]


_current: ProcessId | None = None
_current_pid = -1


def start_time_of(pid: int) -> int | None:
    """The start time (hundredths of a second since the epoch) of ``pid``, or None if
    there is no such process."""
    try:
        return round(psutil.Process(pid).create_time() * 100)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError):
        return None


def current() -> ProcessId:
    """The calling process's identity (recomputed after ``fork``)."""
    global _current, _current_pid
    pid = os.getpid()
    if pid != _current_pid:
        st = start_time_of(pid)
        _current = ProcessId(pid, st if st is not None else 0)
        _current_pid = pid
    assert _current is not None
    return _current


def liveness(pid: int, start_time: int) -> Liveness:
    """Whether the process ``(pid, start_time)`` can still act.

    A zombie (killed but not yet reaped) counts as dead: it runs no more code.  A
    start time of 0 means "unknown", in which case only the pid is checked.
    """
    if pid <= 0:
        return Liveness.DEAD
    try:
        proc = psutil.Process(pid)
        if start_time and round(proc.create_time() * 100) != start_time:
            return Liveness.DEAD
        if proc.status() == psutil.STATUS_ZOMBIE:
            return Liveness.DEAD
        return Liveness.ALIVE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return Liveness.DEAD
    except psutil.AccessDenied:
        return Liveness.UNKNOWN


def is_dead(pid: int, start_time: int) -> bool:
    return liveness(pid, start_time) is Liveness.DEAD
