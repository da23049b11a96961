"""Fixtures: a unique namespace per test, and checks that each test leaves nothing in
/dev/shm (segments, semaphores, lock directories: anything of a namespace it created),
no child process behind, and no child's failure unreported."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import uuid

import posix_ipc
import psutil
import pytest

from shmbus import naming

from . import support
from .support import cleanup_processes

_counter = itertools.count()
# The namespace an entry of /dev/shm belongs to: {ns}.{ring}, sem.{ns}.{ring}@c{i},
# {ns}@locks and whatever else shmbus makes starts with the namespace and a "." or "@".
_ENTRY_NS = re.compile(r"([A-Za-z0-9_-]{1,64})[.@]")
# A namespace with a pid in it (t{pid}x..., bench{pid}x..., demo{pid}, chaos{pid}x...).
_NS_PID = re.compile(r"[A-Za-z_-]*?([0-9]+)(?:x|$)")


def _shm_entries() -> set[str]:
    try:
        return set(os.listdir(naming.SHM_DIR))
    except FileNotFoundError:
        return set()


def _namespace_of(entry: str) -> str | None:
    m = _ENTRY_NS.match(entry[4:] if entry.startswith("sem.") else entry)
    return m.group(1) if m else None


def _leftovers(ns: str) -> list[str]:
    """Every entry of /dev/shm that belongs to namespace ``ns``."""
    return sorted(e for e in _shm_entries() if _namespace_of(e) == ns)


def _remove(ns: str, entries: list[str]) -> None:
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
        _remove(name, left)
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


# Namespaces whose leftovers the ns fixture has already reported.
_checked_namespaces: set[str] = set()


def _our_pids() -> set[int]:
    me = psutil.Process()
    pids = {me.pid}
    try:
        pids.update(p.pid for p in me.children(recursive=True))
    except psutil.Error:
        pass
    return pids


def _held_elsewhere(ns: str, ours: set[int]) -> bool:
    """Whether a live process that is not this one or its child maps or opens an
    object of namespace ``ns`` (another test run is using it right now)."""
    marks = (f"{naming.SHM_DIR}/{ns}.", f"{naming.SHM_DIR}/{ns}@",
             f"{naming.SHM_DIR}/sem.{ns}.")
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


def _someone_elses(ns: str, ours: set[int]) -> bool:
    m = _NS_PID.match(ns)
    if m is not None:
        pid = int(m.group(1))
        if pid not in ours and psutil.pid_exists(pid):
            return True  # made by a live process that is not ours: another run's
    return _held_elsewhere(ns, ours)


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm():
    """Fails a test that leaves in /dev/shm an entry of shmbus's shape that was not
    there before it (for tests that make namespaces of their own instead of using the
    ``ns`` fixture: benchmarks, the demo, the chaos run).  An entry of a namespace that
    a live process outside this test run is using is not this test's."""
    before = _shm_entries()
    yield
    new = {e for e in _shm_entries() - before if _namespace_of(e) is not None}
    by_ns: dict[str, list[str]] = {}
    for e in sorted(new):
        ns = _namespace_of(e)
        if ns not in _checked_namespaces:
            by_ns.setdefault(ns, []).append(e)
    if not by_ns:
        return
    ours = _our_pids()
    left = []
    for ns, entries in by_ns.items():
        if not _someone_elses(ns, ours):
            _remove(ns, entries)
            left += entries
    if left:
        pytest.fail(f"test left {left} in /dev/shm")
