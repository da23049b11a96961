"""Helpers for tests: waiting with deadlines, reaping processes, spawning children."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Callable

SPAWN = mp.get_context("spawn")


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


def start(target: Callable, *args: object) -> mp.Process:
    """Start ``target(*args)`` in a spawned (not forked) child process."""
    proc = SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def kill9(proc: mp.Process, timeout: float = 10.0) -> None:
    """SIGKILL a child we started, by pid, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout)
    assert proc.exitcode == -signal.SIGKILL, proc.exitcode


def cleanup_processes(procs: list[mp.Process], timeout: float = 5.0) -> None:
    """Terminate, join with a timeout, kill, close: leave no child behind."""
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
