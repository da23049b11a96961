"""Follow-ups to the red team's review of the security model (README "Security model",
issue 12): holes left in the tools, gc, the inspectors and the balancer.  Each attack
runs as another uid (:func:`tests.security.run_as`), a member of the group the
namespace is shared with, against this (root, as in CI) process.

* A member writes a stats file nested deeper than the JSON parser recurses:
  ``shmbus inspect`` and ``shmbus top`` report it and go on, never a traceback.
* The lock directory's path leads elsewhere between our check and our use (a member
  who made it swaps it for a symlink; or, once the release of its last lock removed
  ours, makes it again as a symlink): ``shmbus gc`` removes nothing there,
  ``shmbus inspect`` opens nothing there, ``shmbus locks`` lists nothing there.
* A member puts a directory (or a FIFO, a symlink) where a balancer group's stats file
  goes: the balancer cannot publish its stats, says so, and goes on dispatching.
"""

from __future__ import annotations

import json
import os
import threading

import pytest
from click.testing import CliRunner

import shmbus
from shmbus.balancer import Balancer, Worker, stats
from shmbus import lockdir, naming
from shmbus.tools.cli import main

from .security import (THIRD_UID, make_shared_lock_dir, needs_root, purge, run_as,
                       swap_for_symlink, undo_swap)

pytestmark = [needs_root, pytest.mark.timeout(30)]

SHARED_GID = 1500  # the group a namespace is shared with; THIRD_UID is a member


def _cli(*args: str):
    """Run the shmbus command; it must end by itself, never with a traceback."""
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), (
        args, r.output, r.exception)
    assert "Traceback" not in r.output, (args, r.output)
    return r


# -- a stats file nested deeper than the parser recurses -------------------------------


def _forge_stats(namespace: str, body: bytes) -> None:
    """(As a member) publish group ``g``'s stats the ordinary way, then overwrite them."""
    stats.write(namespace, "g", {"dispatched": 1})
    fd = os.open(f"{naming.lock_dir(namespace)}/g@stats",
                 os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)


def test_the_tools_skip_stats_nested_deeper_than_the_parser_recurses(ns, monkeypatch):
    """JSON nested 100,000 deep (within the 1 MiB the tools read) makes the parser
    raise RecursionError: ``inspect`` and ``top`` report the file as skipped, like any
    other malformed stats file, and show the rest."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    try:
        with shmbus.Producer("r", capacity=1 << 14) as pub:
            pub.send(b"x")
            run_as(THIRD_UID, SHARED_GID, _forge_stats, ns, b"[" * 100_000)
            for argv in (["inspect", "r"], ["top", "--once", "--interval", "0"]):
                r = _cli(*argv)
                assert r.exit_code == 0, (argv, r.output)
                assert "g@stats" in r.output and "skipped" in r.output, (argv, r.output)
    finally:
        purge(ns)


# -- the lock directory's path leads elsewhere between the check and the use ----------


def _elsewhere(tmp_path, name: str, content: str) -> str:
    """A directory outside /dev/shm holding a file ``name`` of ours."""
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / name).write_text(content)
    os.chmod(elsewhere / name, 0o600)
    return str(elsewhere)


def _stats_of(group: str, policy: str) -> dict:
    return {"group": group, "policy": policy, "leader_pid": 1, "lease_token": 1,
            "dispatched": 7, "redelivered": 0, "dead_lettered": 0,
            "input_lag_bytes": {"r": 0}, "workers": {}}


def test_gc_never_removes_a_file_through_a_replaced_lock_directory(ns, tmp_path,
                                                                   monkeypatch):
    """gc checks the lock directory (ours), then removes the stale files in it (here:
    the stats of a group nobody leads).  Between the two the directory may go (the
    release of its last lock removes it; in a shared namespace a member can empty it
    first) and a member may make it again as a symlink to a directory of his choosing:
    gc must remove the file it checked, never a file of that name there."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    elsewhere = _elsewhere(tmp_path, "g@stats", "precious")
    directory = naming.lock_dir(ns)
    stats.write(ns, "g", {"dispatched": 1})  # ours, stale: no balancer leads g
    real_unlink = os.unlink
    swapped = []

    def unlink_after_the_swap(path, *args, **kwargs):
        if str(path).endswith("g@stats") and not swapped:
            os.rename(directory, directory + "-moved")  # (stands in for its removal)
            run_as(THIRD_UID, SHARED_GID, os.symlink, elsewhere, directory)
            swapped.append(True)
        return real_unlink(path, *args, **kwargs)
    try:
        monkeypatch.setattr(os, "unlink", unlink_after_the_swap)
        r = _cli("gc")
        monkeypatch.setattr(os, "unlink", real_unlink)
        assert swapped, ("gc removed no stats file", r.output)
        with open(f"{elsewhere}/g@stats") as f:
            assert f.read() == "precious"
        assert os.listdir(directory + "-moved") == []  # removed where it was checked
    finally:
        monkeypatch.setattr(os, "unlink", real_unlink)
        undo_swap(ns)
        purge(ns)


def test_inspect_never_opens_a_stats_file_through_a_swapped_lock_directory(
        ns, tmp_path, monkeypatch):
    """The member who made a shared lock directory swaps it for a symlink between our
    check of the directory and our opening of a stats file in it: ``shmbus inspect``
    (as root) must open the file in the directory it checked, never the file of that
    name where the link leads (any file root can read, or a device whose opening does
    something), and never show what it holds."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    elsewhere = _elsewhere(tmp_path, "g@stats", json.dumps(_stats_of("g", "OUTSIDE")))
    outside = os.stat(f"{elsewhere}/g@stats")
    shmbus.Producer("r", capacity=1 << 14).close()  # (its last lock removes the directory)
    run_as(THIRD_UID, SHARED_GID, make_shared_lock_dir, ns)
    stats.write(ns, "g", _stats_of("g", "INSIDE"))
    real_open = os.open
    swapped, opened = [], []

    def open_after_the_swap(path, *args, **kwargs):
        if str(path).endswith("g@stats") and not swapped:
            run_as(THIRD_UID, SHARED_GID, swap_for_symlink, ns, elsewhere)
            swapped.append(True)
        fd = real_open(path, *args, **kwargs)
        st = os.fstat(fd)
        opened.append((st.st_dev, st.st_ino))
        return fd
    try:
        monkeypatch.setattr(os, "open", open_after_the_swap)
        r = _cli("inspect", "r")
        monkeypatch.setattr(os, "open", real_open)
        assert swapped, ("inspect opened no stats file", r.output)
        assert (outside.st_dev, outside.st_ino) not in opened
        assert "OUTSIDE" not in r.output
        assert "balancer g (input)" in r.output and "INSIDE" in r.output
    finally:
        monkeypatch.setattr(os, "open", real_open)
        undo_swap(ns)
        purge(ns)


def test_locks_never_lists_a_directory_through_a_swapped_lock_directory(
        ns, tmp_path, monkeypatch):
    """The same swap between our check of the lock directory and our listing of it:
    ``shmbus locks`` (as root) must list the directory it checked, never the one the
    link leads to (which would tell the member the names, types and owners of files
    he cannot see)."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    elsewhere = _elsewhere(tmp_path, "someone-elses-secret", "")
    run_as(THIRD_UID, SHARED_GID, make_shared_lock_dir, ns)
    lock = shmbus.FileLock("ours")
    lock.acquire(timeout=1)
    real_listdir = os.listdir
    swapped = []

    def listdir_after_the_swap(path=".", *args, **kwargs):
        if path != naming.SHM_DIR and not swapped:
            run_as(THIRD_UID, SHARED_GID, swap_for_symlink, ns, elsewhere)
            swapped.append(True)
        return real_listdir(path, *args, **kwargs)
    try:
        monkeypatch.setattr(os, "listdir", listdir_after_the_swap)
        r = _cli("locks")
        monkeypatch.setattr(os, "listdir", real_listdir)
        assert swapped, ("locks listed no directory", r.output)
        assert "someone-elses-secret" not in r.output
        assert "ours" in r.output and str(os.getpid()) in r.output
    finally:
        monkeypatch.setattr(os, "listdir", real_listdir)
        lock.release()
        undo_swap(ns)
        purge(ns)


# -- something else than our stats file under a balancer group's stats name -------------


def _plant_stats_entry(namespace: str, kind: str, target: str) -> None:
    """(As a member) make the shared lock directory and put a ``kind`` under group
    ``g``'s stats name."""
    os.close(lockdir.open_dir(namespace))
    path = f"{naming.lock_dir(namespace)}/g@stats"
    if kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path, 0o660)
    else:
        os.symlink(target, path)


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_a_planted_stats_entry_never_stops_the_balancer(ns, tmp_path, monkeypatch, kind):
    """Publishing its stats (for ``shmbus inspect``/``top``) fails when a directory sits
    under their name (a FIFO or a symlink it replaces, never follows): the balancer
    keeps dispatching, says why in ``stats_error``, and stops cleanly, leaving no
    temporary file behind."""
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    shmbus.Producer("in", capacity=1 << 16).close()
    run_as(THIRD_UID, SHARED_GID, _plant_stats_entry, ns, kind, str(victim))
    b = Balancer("g", ["in"], poll=0.01)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            b.run()
        except BaseException as e:  # noqa: BLE001 - the test reports it
            failures.append(e)
    thread = threading.Thread(target=run, daemon=True)
    try:
        with Worker("g", "w") as w:
            thread.start()
            with shmbus.Producer("in") as pub:
                pub.send_many([b"%d" % i for i in range(20)])
            got = [bytes(w.recv(timeout=5)) for _ in range(20)]
            assert got == [b"%d" % i for i in range(20)]
            assert thread.is_alive() and not failures
            if kind == "directory":
                assert "g@stats" in (b.stats_error or ""), b.stats_error
            else:
                assert b.stats_error is None
                assert stats.read(ns, "g")["group"] == "g"  # published over it
        assert b.stop(timeout=10)
        thread.join(10)
        assert not failures, failures
        assert victim.read_text() == "precious"
        left = [n for n in os.listdir(naming.lock_dir(ns)) if n.endswith(".tmp")]
        assert left == []
    finally:
        b.stop(timeout=10)
        from shmbus.cleanup import collect
        collect(force=True)
        purge(ns)
