"""Process identity and liveness.

A process is identified by its pid *and* its start time, so that a pid reused by an
unrelated process after the original died is not mistaken for the original.  Start
times are kept as integer hundredths of a second since the epoch (what psutil derives
from the kernel's start tick), which is exact enough to tell two processes apart.

A process is ``ALIVE`` (running, sleeping or stopped: a SIGSTOPped process may resume
and act), ``DEAD`` (gone, a zombie, or its pid now belongs to another process), or
``UNKNOWN`` (it exists but may not be inspected, or it is in a PID namespace we cannot
see into).  Only ``DEAD`` allows a cleanup.

PID namespaces (containers sharing ``/dev/shm`` with the host or with each other): a
pid means something only in its own PID namespace, so shmbus records, beside each pid
and start time, the inode of the recorder's PID namespace (:func:`pid_namespace`, the
inode of ``/proc/self/ns/pid``, which the kernel keeps the same in every namespace).
A process recorded in another namespace than ours is never judged by its pid here:

* it is ``ALIVE`` if we can see it: some process in ``/proc`` is in that namespace, has
  that pid there (the last ``NSpid`` of its status) and that start time;
* it is ``DEAD`` only with proof: the namespace is visible (some process of ours is in
  it) and no process in it is the one recorded; or we are in the host's (initial) PID
  namespace, where every process of the machine is visible, and could inspect every one;
* otherwise ``UNKNOWN`` (a sibling container, or the host seen from a container): never
  cleaned up.  Remove such a ring from where its processes ran, or with ``--force``.

Judging a foreign process scans ``/proc``; it happens only where liveness is judged
(opening, reclaiming slots while blocked, ``gc``, ``inspect``), never per message.
"""

from __future__ import annotations

import enum
import os

import psutil

__all__ = ["Liveness", "ProcessId", "current", "start_time_of", "liveness", "is_dead",
           "pid_namespace", "local_pid"]


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
_ns: int = 0
_ns_pid = -1

# The inode of the initial ("host") PID namespace: a kernel constant
# (PROC_PID_INIT_INO in include/linux/proc_ns.h).
INITIAL_PID_NS = 0xEFFFFFFC


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
        st = start_time_of(_proc_pid(pid))
        _current = ProcessId(pid, st if st is not None else 0)
        _current_pid = pid
    assert _current is not None
    return _current


def _proc_pid(pid: int) -> int:
    """Our pid as ``/proc`` numbers it: not ``pid`` when ``/proc`` was mounted for
    another PID namespace (``unshare --pid`` without a new ``/proc``), where
    ``/proc/{pid}`` is another process (its start time is not ours)."""
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return pid


def pid_namespace() -> int:
    """The inode of the calling process's PID namespace (0 if ``/proc`` cannot say),
    recomputed after ``fork`` (a child may be in a new namespace)."""
    global _ns, _ns_pid
    pid = os.getpid()
    if pid != _ns_pid:
        try:
            _ns = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            _ns = 0
        _ns_pid = pid
    return _ns


def liveness(pid: int, start_time: int, pid_ns: int = 0) -> Liveness:
    """Whether the process ``(pid, start_time)`` of PID namespace ``pid_ns`` can still
    act.

    A zombie (killed but not yet reaped) counts as dead: it runs no more code.  A
    start time of 0 means "unknown", in which case only the pid is checked.  A
    ``pid_ns`` of 0 means "unknown namespace": the pid is judged as one of ours (what
    older records allow; callers that can should record and pass the namespace).
    """
    if pid <= 0:
        return Liveness.DEAD
    if pid_ns and pid_ns != pid_namespace():
        return _foreign(pid, start_time, pid_ns)[0]
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


def is_dead(pid: int, start_time: int, pid_ns: int = 0) -> bool:
    """Whether the process is provably gone (``UNKNOWN`` is not dead)."""
    return liveness(pid, start_time, pid_ns) is Liveness.DEAD


def local_pid(pid: int, start_time: int, pid_ns: int = 0) -> int | None:
    """The pid under which the live process ``(pid, start_time)`` of PID namespace
    ``pid_ns`` is known in ours (``pid`` itself for one of our namespace), or None if it
    is not alive or not visible from here.  Signal a recorded process only through this:
    a pid from another namespace names some other process here."""
    if not pid_ns or pid_ns == pid_namespace():
        return pid if liveness(pid, start_time) is Liveness.ALIVE else None
    state, here = _foreign(pid, start_time, pid_ns)
    return here if state is Liveness.ALIVE else None


def _foreign(pid: int, start_time: int, pid_ns: int) -> tuple[Liveness, int | None]:
    """Liveness of pid ``pid`` of another PID namespace, from what ``/proc`` shows, and
    its pid in ours when it is found."""
    seen_ns = False
    complete = pid_namespace() == INITIAL_PID_NS and not _proc_hides_pids()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return Liveness.UNKNOWN, None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != pid_ns:
                continue
            seen_ns = True
            inner, zombie = _ns_pid_and_state(entry)
        except FileNotFoundError:
            continue  # exited meanwhile
        except OSError:
            if not _in_proc_namespace(entry):
                complete = False  # may not inspect it: it might be the one
            continue
        if inner != pid:
            continue
        if start_time and start_time_of(int(entry)) != start_time:
            continue  # the pid was reused inside that namespace
        return (Liveness.DEAD, None) if zombie else (Liveness.ALIVE, int(entry))
    return (Liveness.DEAD if seen_ns or complete else Liveness.UNKNOWN), None


def _ns_pid_and_state(entry: str) -> tuple[int, bool]:
    """The pid of process ``/proc/{entry}`` in its own (innermost) namespace, and
    whether it is a zombie."""
    inner, zombie = -1, False
    with open(f"/proc/{entry}/status") as f:
        for line in f:
            if line.startswith("State:"):
                zombie = line.split()[1] in ("Z", "X")
            elif line.startswith("NSpid:"):
                inner = int(line.split()[-1])
                break
    return inner, zombie


def _in_proc_namespace(entry: str) -> bool:
    """Whether process ``/proc/{entry}`` is in the PID namespace of ``/proc`` itself
    (its ``NSpid`` has one pid), hence not in any namespace below it."""
    try:
        with open(f"/proc/{entry}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        pass
    return False


_hides: bool | None = None


def _proc_hides_pids() -> bool:
    """Whether ``/proc`` is mounted with ``hidepid`` (then absence proves nothing)."""
    global _hides
    if _hides is None:
        _hides = True
        try:
            with open("/proc/self/mounts") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[1] == "/proc":
                        opts = fields[3].split(",")
                        _hides = any(o.startswith("hidepid=") and
                                     o not in ("hidepid=0", "hidepid=off") for o in opts)
        except OSError:
            pass
    return _hides
