"""Helpers for tests: waiting with deadlines, reaping processes, spawning children.

What a test leaves in ``/dev/shm``: :func:`shm_entries`, :func:`namespace_of`,
:func:`shm_leftovers` and :func:`remove_entries` (the ``conftest.py`` fixtures use them).

A child started with :func:`start` reports an exception it dies of: it sends the
traceback text to the parent through a pipe and signals the parent (``SIGUSR1``), whose
handler (installed by ``conftest.py`` with :func:`install_child_reports`) raises
:class:`ChildFailed` with that text at once, whatever the parent is waiting on (a
queue, an event, a join).  So a failing child fails the test with its own error, not
with ``queue.Empty`` a minute later.  :func:`cleanup_processes` and the ``conftest``
fixtures raise any report that the signal could not deliver.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import re
import shutil
import signal
import threading
import time
import traceback
from typing import Callable, Iterable

import posix_ipc
import psutil

from shmbus import naming

SPAWN = mp.get_context("spawn")

_REPORT_SIGNAL = signal.SIGUSR1
_REPORT_MAX = 12_000  # characters: fits a pipe's buffer, so sending one never blocks


class ChildFailed(Exception):
    """A child process started by :func:`start` raised: carries its traceback text."""

    def __init__(self, name: str, pid: int, report: str) -> None:
        super().__init__(name, pid, report)  # so that it pickles
        self.name, self.pid, self.report = name, pid, report

    def __str__(self) -> str:
        return f"child process {self.name} (pid {self.pid}) failed:\n{self.report}"


# Children not yet known to have ended: key -> [name, pid, reading end of the pipe].
_watched: dict[int, list] = {}
_keys = itertools.count()
_watched_guard = threading.Lock()


def await_until(pred: Callable[[], object], timeout: float = 10.0,
                interval: float = 0.001, what: str = "condition") -> object:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def _child_main(target: Callable, report, notify_pid: int, args: tuple) -> None:
    """Run ``target(*args)`` in the child; on an exception send its traceback to the
    parent, signal it, and die of the exception as before (exit code 1)."""
    try:
        target(*args)
    except SystemExit as e:
        if e.code not in (None, 0):
            _report(report, notify_pid, f"SystemExit({e.code!r})\n")
        raise
    except BaseException:
        _report(report, notify_pid, traceback.format_exc())
        raise
    finally:
        report.close()


def _report(report, notify_pid: int, text: str) -> None:
    if len(text) > _REPORT_MAX:
        text = "...\n" + text[-_REPORT_MAX:]
    try:
        report.send(text)
    except OSError:
        return  # the parent is gone: nobody to tell
    if notify_pid:
        try:
            os.kill(notify_pid, _REPORT_SIGNAL)
        except OSError:
            pass


def start(target: Callable, *args: object) -> mp.Process:
    """Start ``target(*args)`` in a spawned (not forked) child process whose exception,
    if it dies of one, is raised in this process as :class:`ChildFailed`."""
    reader, writer = SPAWN.Pipe(duplex=False)
    notify = os.getpid() if signal.getsignal(_REPORT_SIGNAL) is _on_report else 0
    proc = SPAWN.Process(target=_child_main, args=(target, writer, notify, args),
                         daemon=True, name=getattr(target, "__name__", "child"))
    key = next(_keys)
    with _watched_guard:  # before it starts: it may fail (and signal) at once
        _watched[key] = [proc.name, None, reader]
    try:
        proc.start()
        _watched[key][1] = proc.pid
    except BaseException:
        with _watched_guard:
            _watched.pop(key, None)
        reader.close()
        raise
    finally:
        writer.close()
    return proc


def child_failure(pids: "set[int] | None" = None, *,
                  blocking: bool = True) -> ChildFailed | None:
    """The first report of a failed child (among ``pids``, default every watched
    child), or None; forgets children that ended without one.  Without ``blocking``
    (in the signal handler, which may have interrupted this very function) it looks
    only if nobody else is looking."""
    if not _watched_guard.acquire(blocking):
        return None
    try:
        for key, (name, pid, reader) in list(_watched.items()):
            if pids is not None and pid not in pids:
                continue
            if not reader.poll():
                continue
            del _watched[key]
            try:
                text = reader.recv()
            except (EOFError, OSError):
                text = None  # ended (or was killed) without an exception
            finally:
                reader.close()
            if text is not None:
                return ChildFailed(name, pid, text)
    finally:
        _watched_guard.release()
    return None


def raise_child_failure(pids: "set[int] | None" = None) -> None:
    """Raise :class:`ChildFailed` if a watched child (among ``pids``) reported one."""
    failure = child_failure(pids)
    if failure is not None:
        raise failure


def _on_report(signum, frame) -> None:
    if not _interrupt.is_set():
        return  # between tests: the next check raises it, not pytest's own code
    failure = child_failure(blocking=False)
    if failure is not None:
        raise failure


_interrupt = threading.Event()


def install_child_reports() -> None:
    """Make a child's report interrupt this process (main thread only) while
    :func:`child_reports_interrupt` says so."""
    signal.signal(_REPORT_SIGNAL, _on_report)


def child_reports_interrupt(on: bool) -> None:
    """Whether a child's report raises at once (during a test) or waits for the next
    :func:`raise_child_failure`."""
    if on:
        _interrupt.set()
    else:
        _interrupt.clear()


def kill9(proc: mp.Process, timeout: float = 10.0) -> None:
    """SIGKILL a child we started, by pid, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout)
    assert proc.exitcode == -signal.SIGKILL, proc.exitcode


def cleanup_processes(procs: list[mp.Process], timeout: float = 5.0) -> None:
    """Terminate, join with a timeout, kill, close: leave no child behind.  Then raise
    :class:`ChildFailed` if one of them died of an exception nobody has seen yet."""
    pids = {p.pid for p in procs if p.pid is not None}
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            p.terminate()
    for p in procs:
        if p.pid is None:
            continue
        p.join(timeout)
        if p.exitcode is None:
            os.kill(p.pid, signal.SIGKILL)
            p.join(timeout)
        p.close()
    raise_child_failure(pids)


# -- what a test leaves in /dev/shm ---------------------------------------------------

# The namespace an entry of /dev/shm belongs to: {ns}.{ring}, sem.{ns}.{ring}@c{i},
# {ns}@locks: whatever shmbus makes starts with the namespace and a "." or an "@".
_ENTRY_NS = re.compile(r"([A-Za-z0-9_-]{1,64})[.@]")
# A namespace named after the process that runs it (t{pid}x..., bench{pid}x...,
# demo{pid}, chaos{pid}x...), and the ns fixture's own (t{pid}x{n}x{hex}).
_NS_PID = re.compile(r"[A-Za-z_-]*?([0-9]+)(?:x|$)")
_NS_FIXTURE = re.compile(r"t([0-9]+)x[0-9]+x[0-9a-f]{6}")


def shm_entries() -> set[str]:
    """The names in /dev/shm now."""
    try:
        return set(os.listdir(naming.SHM_DIR))
    except FileNotFoundError:
        return set()


def namespace_of(entry: str) -> str | None:
    """The shmbus namespace a /dev/shm entry belongs to (None: not of shmbus's shape)."""
    m = _ENTRY_NS.match(entry[4:] if entry.startswith("sem.") else entry)
    return m.group(1) if m else None


def remove_entries(entries: Iterable[str]) -> None:
    """Remove /dev/shm entries: segments, semaphores, lock directories."""
    for e in entries:
        path = f"{naming.SHM_DIR}/{e}"
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif e.startswith("sem."):
            try:
                posix_ipc.unlink_semaphore("/" + e[4:])
            except posix_ipc.ExistentialError:
                pass
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def shm_leftovers(before: set[str], skip: Iterable[str] = ()) -> list[str]:
    """Entries of shmbus's shape in /dev/shm now that were not in ``before`` and belong
    to a namespace this test run made (except the namespaces ``skip``).

    Other people's test runs share /dev/shm, so a namespace counts as ours only if it
    is named after this process or one of its children, or after a process that has
    ended and that nobody else's process is using (the ``demo<pid>`` of a finished
    ``shmbus demo``).  A namespace without a pid in its name is never counted: it may
    be another run's, between two of its steps."""
    by_ns: dict[str, list[str]] = {}
    for e in sorted(shm_entries() - before):
        ns = namespace_of(e)
        if ns is not None and ns not in skip:
            by_ns.setdefault(ns, []).append(e)
    if not by_ns:
        return []
    ours = _our_pids()
    return [e for ns, entries in by_ns.items() if _made_by_us(ns, ours)
            for e in entries]


def _our_pids() -> set[int]:
    me = psutil.Process()
    pids = {me.pid}
    try:
        pids.update(p.pid for p in me.children(recursive=True))
    except psutil.Error:
        pass
    return pids


def _made_by_us(ns: str, ours: set[int]) -> bool:
    m = _NS_PID.match(ns)
    if m is None:
        return False
    pid = int(m.group(1))
    if pid in ours:
        return True
    fixture = _NS_FIXTURE.fullmatch(ns)
    if fixture is not None:
        return int(fixture.group(1)) == os.getpid()  # another run's ns fixture's
    return not psutil.pid_exists(pid) and not _held_elsewhere(ns, ours)


def _held_elsewhere(ns: str, ours: set[int]) -> bool:
    """Whether a live process outside ``ours`` maps or opens an object of ``ns``."""
    marks = (f"{naming.SHM_DIR}/{ns}.", f"{naming.SHM_DIR}/{ns}@",
             f"{naming.SHM_DIR}/sem.{ns}.", f"{naming.SHM_DIR}/sem.{ns}@")
    for pid in psutil.pids():
        if pid in ours:
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                if any(m in line for line in f for m in marks):
                    return True
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(marks):
                    return True
        except OSError:
            continue
    return False
