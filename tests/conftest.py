"""Fixtures: a unique namespace per test, and checks that each test leaves nothing in
/dev/shm (segments, semaphores, lock directories: anything of a namespace it created),
no child process behind, and no child's failure unreported."""

from __future__ import annotations

import itertools
import os
import uuid

import psutil
import pytest

from . import support
from .support import cleanup_processes

_counter = itertools.count()
# Namespaces whose leftovers the ns fixture has already checked.
_checked_namespaces: set[str] = set()


def _leftovers(ns: str) -> list[str]:
    """Every entry of /dev/shm that belongs to namespace ``ns``."""
    return sorted(e for e in support.shm_entries() if support.namespace_of(e) == ns)


def _children() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if "resource_tracker" in cmd or child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        out.append(child)
    return out


@pytest.fixture
def ns(monkeypatch) -> str:
    """A namespace no other test uses; fails the test if anything of it is left in
    /dev/shm afterwards (and removes it, so one leak does not fail later tests)."""
    name = f"t{os.getpid()}x{next(_counter)}x{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("SHMBUS_NAMESPACE", name)
    yield name
    _checked_namespaces.add(name)
    left = _leftovers(name)
    if left:
        support.remove_entries(left)
        pytest.fail(f"test left {left} in /dev/shm")


@pytest.fixture
def procs():
    """A list to put started child processes in; each is reaped after the test."""
    started: list = []
    yield started
    cleanup_processes(started)


@pytest.fixture(autouse=True)
def no_stray_children():
    before = {p.pid for p in _children()}
    yield
    stray = [p for p in _children() if p.pid not in before]
    if stray:
        for p in stray:
            try:
                p.kill()
            except psutil.Error:
                pass
        pytest.fail(f"test left child processes {[p.pid for p in stray]}")


@pytest.fixture(autouse=True)
def child_failures_fail_the_test():
    """A child started with support.start that dies of an exception fails the test at
    once with that exception (see tests/support.py), or at the latest here."""
    support.raise_child_failure()  # a report that came between tests
    support.child_reports_interrupt(True)
    try:
        yield
    finally:
        support.child_reports_interrupt(False)
    support.raise_child_failure()


def pytest_configure(config) -> None:
    support.install_child_reports()


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm():
    """Fails a test that leaves in /dev/shm an entry of shmbus's shape that was not
    there before it (for tests that make namespaces of their own instead of using the
    ``ns`` fixture: benchmarks, the demo, the chaos run), and removes it."""
    before = support.shm_entries()
    yield
    left = support.shm_leftovers(before, skip=_checked_namespaces)
    if left:
        support.remove_entries(left)
        pytest.fail(f"test left {left} in /dev/shm")
