"""Helpers for tests: waiting with deadlines, reaping processes, spawning children.

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
import signal
import threading
import time
import traceback
from typing import Callable

SPAWN = mp.get_context("spawn")

_REPORT_SIGNAL = signal.SIGUSR1
_REPORT_MAX = 32_000  # characters: less than a pipe's buffer, so a report never blocks


class ChildFailed(Exception):
    """A child process started by :func:`start` raised: carries its traceback text."""

    def __init__(self, name: str, pid: int, report: str) -> None:
        super().__init__(f"child process {name} (pid {pid}) failed:\n{report}")
        self.name, self.pid, self.report = name, pid, report


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
