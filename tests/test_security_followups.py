"""Follow-ups to the red team's review of the security model (README "Security model",
issue 12): holes left in the tools, gc, the inspectors and the balancer.  Each attack
runs as another uid (:func:`tests.security.run_as`), a member of the group the
namespace is shared with, against this (root, as in CI) process.

* A member writes a stats file nested deeper than the JSON parser recurses:
  ``shmbus inspect`` and ``shmbus top`` report it and go on, never a traceback.
"""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

import shmbus
from balancer import stats
from shmbus import naming
from tools.cli import main

from .security import THIRD_UID, needs_root, run_as

pytestmark = [needs_root, pytest.mark.timeout(30)]

SHARED_GID = 1500  # the group a namespace is shared with; THIRD_UID is a member


def _purge(namespace: str) -> None:
    """Remove everything of ``namespace`` from /dev/shm, whoever made it (as root)."""
    for entry in naming.owned_entries(namespace, os.listdir(naming.SHM_DIR)):
        path = f"{naming.SHM_DIR}/{entry}"
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


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
        _purge(ns)
