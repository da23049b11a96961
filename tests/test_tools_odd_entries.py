"""Foreign or odd entries in /dev/shm never stop the tools (issue 12, items 6 and 7):
each command skips and reports what is not ours or cannot be read, and goes on; never a
traceback, never a hang, and gc never removes it."""

from __future__ import annotations

import json
import os
import shutil

import posix_ipc
import pytest
from click.testing import CliRunner

import shmbus
from shmbus import naming
from shmbus.tools.cli import main

from .security import OTHER_GID, OTHER_UID, needs_root, run_as

pytestmark = pytest.mark.timeout(30)

COMMANDS = [["ls"], ["ls", "--locks"], ["ls", "--json"], ["locks"], ["gc", "--dry-run"],
            ["doctor"], ["top", "--once", "--interval", "0"]]  # and gc, last


def run(*args):
    return CliRunner().invoke(main, list(args))


def check_runs(argv, *, codes=(0,)):
    r = run(*argv)
    assert r.exit_code in codes, (argv, r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and not (
        r.exception and not isinstance(r.exception, SystemExit)), (argv, r.exception)
    return r


def dead_ring(name: str) -> None:
    with shmbus.Producer(name, capacity=1 << 14) as pub:
        pub.send(b"x")


def entries(ns: str) -> list[str]:
    return naming.owned_entries(ns, os.listdir(naming.SHM_DIR))


@pytest.fixture
def shm(ns):
    """Paths of odd entries to remove after the test (the ns fixture then checks that
    nothing else is left)."""
    made: list[str] = []
    yield made
    for path in made:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)


def test_a_plain_file_with_our_prefix_is_skipped_and_gc_goes_on(ns, shm):
    path = f"{naming.SHM_DIR}/{ns}.aaa"
    shm.append(path)
    with open(path, "wb") as f:
        f.write(b"another program's data")
    dead_ring("zzz")  # sorted after aaa: gc must reach it
    for argv in COMMANDS[:3] + [["inspect", "zzz"], ["doctor", "--json"]]:
        check_runs(argv)
    rings = {r["name"]: r for r in json.loads(run("ls", "--json").output)}
    assert "aaa" in rings["aaa"]["error"] and rings["zzz"]["messages"] == 1
    r = check_runs(["gc"])
    assert "removed ring zzz" in r.output
    assert f"kept entry {path}: not a shmbus ring" in r.output
    with open(path, "rb") as f:
        assert f.read() == b"another program's data"


def test_a_symlink_is_never_followed_nor_removed(ns, shm, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    link = f"{naming.SHM_DIR}/{ns}.r"
    shm.append(link)
    os.symlink(target, link)
    dead_ring("ok")
    for argv in COMMANDS:
        check_runs(argv)
    r = check_runs(["inspect", "r"], codes=(1,))
    assert len(r.output.strip().splitlines()) == 1
    rings = {r["name"]: r for r in json.loads(run("ls", "--json").output)}
    assert "symlink" in rings["r"]["error"] and rings["ok"]["messages"] == 1
    r = check_runs(["gc"])
    assert f"kept entry {link}: is a symlink" in r.output and "removed ring ok" in r.output
    assert os.path.islink(link) and target.read_bytes() == b"precious"


def test_a_file_where_the_lock_directory_should_be(ns, shm):
    dead_ring("r")
    lockdir = naming.lock_dir(ns)
    shm.append(lockdir)
    with open(lockdir, "w") as f:
        f.write("squatted")
    for argv in COMMANDS:
        check_runs(argv)
    check_runs(["inspect", "r"], codes=(0, 1))
    r = check_runs(["gc"])
    assert f"kept entry {lockdir}: lock directory is a regular file" in r.output
    with open(lockdir) as f:
        assert f.read() == "squatted"
    os.unlink(lockdir)
    shm.remove(lockdir)
    shmbus.unlink("r")


def test_a_fifo_in_the_lock_directory_hangs_nothing(ns, shm):
    dead_ring("r")
    lockdir = naming.lock_dir(ns)
    os.mkdir(lockdir, 0o700)
    shm.append(lockdir)
    for name in ("x", "g@stats", "l@lease", "r@slots"):
        os.mkfifo(f"{lockdir}/{name}", 0o600)
    for argv in COMMANDS + [["inspect", "r"], ["inspect", "r", "--json"]]:
        check_runs(argv)
    r = check_runs(["locks"])
    assert "x" in r.output and "FIFO" in r.output
    r = check_runs(["gc"])
    assert f"kept entry {lockdir}/x: is a FIFO" in r.output
    assert sorted(os.listdir(lockdir)) == ["g@stats", "l@lease", "r@slots", "x"]
    shutil.rmtree(lockdir)
    shm.remove(lockdir)
    shmbus.unlink("r")


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"group": 5}',
                                     b'{"group": "g", "policy": "rr"}',
                                     b'{"group": "g", "policy": "rr", "leader_pid": 1, '
                                     b'"lease_token": 1, "dispatched": 1, "redelivered": 0, '
                                     b'"dead_lettered": 0, "input_lag_bytes": {"r": 0}, '
                                     b'"workers": {"w": {"in_flight": "many"}}}'])
def test_a_malformed_stats_file_is_skipped_and_reported(ns, shm, content):
    with shmbus.Producer("r", capacity=1 << 14):
        lockdir = naming.lock_dir(ns)
        with open(f"{lockdir}/g@stats", "wb") as f:
            f.write(content)
        for argv in (["inspect", "r"], ["top", "--once", "--interval", "0"]):
            r = check_runs(argv)
            assert "g@stats" in r.output and "skipped" in r.output
        assert "g@stats" in json.loads(run("inspect", "r", "--json").output)["skipped"][0]
        os.unlink(f"{lockdir}/g@stats")
    shmbus.unlink("r")


@needs_root
def test_entries_of_another_user_are_reported_and_never_removed(ns, shm):
    """gc as root could remove anything: it must still remove only what is ours."""
    sem = posix_ipc.Semaphore(f"/{ns}.q@c0", posix_ipc.O_CREX)
    sem.close()
    theirs = [f"{naming.SHM_DIR}/sem.{ns}.q@c0", f"{naming.SHM_DIR}/{ns}.theirs"]
    shm.extend(theirs)
    dead_ring("theirs")  # a ring with our magic, but owned by another user
    shm.append(f"{naming.SHM_DIR}/sem.{ns}.theirs@p")  # ours, kept with its ring
    for path in theirs:
        os.chown(path, OTHER_UID, OTHER_GID)
    for argv in COMMANDS:
        check_runs(argv)
    r = check_runs(["gc"])
    for path in theirs:
        assert os.path.basename(path) in r.output and os.path.lexists(path)
    assert r.output.count(f"belongs to uid {OTHER_UID}") == 2


def test_gc_removes_only_what_is_provably_ours(ns, shm):
    """Another program's files that share our names' shapes are left alone: a semaphore
    named like a ring's but with another suffix, an all-zero file of a size we never
    make, a file without our magic; our own half-made segment and the semaphores of
    our gone ring are removed."""
    foreign_sem = posix_ipc.Semaphore(f"/{ns}.app@ready", posix_ipc.O_CREX)
    foreign_sem.close()
    ours_sem = posix_ipc.Semaphore(f"/{ns}.gone@c3", posix_ipc.O_CREX)
    ours_sem.close()
    odd = {f"{naming.SHM_DIR}/sem.{ns}.app@ready": None,
           f"{naming.SHM_DIR}/{ns}.node": b"\0" * 32,
           f"{naming.SHM_DIR}/{ns}.iox2_service": b"\x01" * 8192}
    for path, content in odd.items():
        shm.append(path)
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
    half_made = f"{naming.SHM_DIR}/{ns}.half"
    with open(half_made, "wb") as f:
        f.write(bytes(shmbus.layout.HEADER_SIZE * 8))
    r = check_runs(["gc"])
    assert "removed ring half: half-made" in r.output
    assert f"removed semaphore sem.{ns}.gone@c3: ring is gone" in r.output
    for path in odd:
        assert os.path.lexists(path), path
    assert sorted(entries(ns)) == sorted(os.path.basename(p) for p in odd)


def _tools_as_this_user(ns: str) -> list[tuple[list[str], int, str]]:
    """Run the read-only tools and gc in namespace ``ns``; what each said."""
    out = []
    for argv in COMMANDS + [["gc"]]:
        r = CliRunner().invoke(main, argv + ["--namespace", ns])
        crash = r.exception and not isinstance(r.exception, SystemExit)
        out.append((argv, r.exit_code, r.output + (f"crash: {r.exception!r}" if crash else "")))
    return out


@needs_root
def test_a_semaphore_of_another_user_stops_no_tool_of_an_ordinary_user(ns, shm):
    """The victim is an ordinary user (uid 1001) this time: the semaphore and the
    dead ring belong to root, which 1001 may neither open nor remove."""
    sem = posix_ipc.Semaphore(f"/{ns}.q@c0", posix_ipc.O_CREX, mode=0o600)
    sem.close()
    shm.append(f"{naming.SHM_DIR}/sem.{ns}.q@c0")
    dead_ring("rootsring")
    for argv, code, output in run_as(OTHER_UID, OTHER_GID, _tools_as_this_user, ns,
                                     timeout=30):
        assert code == 0 and "Traceback" not in output and "crash" not in output, (
            argv, output)
        if argv == ["gc"]:
            assert f"kept semaphore sem.{ns}.q@c0: belongs to uid 0" in output
            assert "belongs to uid 0" in output.split("kept entry")[1]
    assert os.path.lexists(f"{naming.SHM_DIR}/sem.{ns}.q@c0")
    shmbus.unlink("rootsring")
