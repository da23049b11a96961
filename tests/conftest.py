"""Fixtures: a unique namespace per test, and checks that each test leaves nothing in
/dev/shm and no child process behind."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid

import posix_ipc
import psutil
import pytest

from shmbus import naming

from .support import cleanup_processes

_counter = itertools.count()


def _leftovers(ns: str) -> list[str]:
    try:
        return naming.owned_entries(ns, os.listdir(naming.SHM_DIR))
    except FileNotFoundError:
        return []


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
