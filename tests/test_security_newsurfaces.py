"""Attacks on the surfaces added on 2026-11-29 (wake-up FIFOs, fan-in, objects, metrics,
the bridge, gc and rm of the new objects), from a second uid
(:func:`tests.security.run_as`), with symlinks, FIFOs, wrong types and modes.

Who attacks: ``OTHER_UID``, a user outside the namespace (a private namespace: he can
only plant names directly in ``/dev/shm``), or ``THIRD_UID``, a member of the group a
namespace is shared with (he can also add, remove and replace entries of its lock
directory, which is group-writable without the sticky bit).  Sharing means trusting a
member with the ring's contents; it never means that a member runs code in our process
(pickle) or makes us follow a link, block, or remove what is not ours.
"""

from __future__ import annotations

import os
import pickle
import stat

import pytest

import shmbus
from shmbus import fanin, naming, wakefifo

from .security import (OTHER_GID, OTHER_UID, THIRD_UID, needs_root, purge, run_as)

pytestmark = [needs_root, pytest.mark.timeout(30)]

SHARED_GID = 1500  # the group a shared namespace is shared with; THIRD_UID is a member
CAP = 1 << 16


class _Pwned:
    """Unpickling this makes directory ``marker``: proof that code of the sender ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _ring_bytes_holding(obj: object, scratch_ns: str) -> bytes:
    """The bytes of a ring (made in ``scratch_ns``, then removed) whose one message is
    ``obj`` sent with ``send_obj``: what an attacker running shmbus himself would copy
    under a name of ours."""
    with shmbus.Producer("scratch", capacity=CAP, namespace=scratch_ns) as pub:
        pub.send_obj(obj)
    try:
        with open(naming.segment_path(scratch_ns, "scratch"), "rb") as f:
            return f.read()
    finally:
        shmbus.unlink("scratch", namespace=scratch_ns)


def _plant(path: str, content: bytes, mode: int) -> None:
    """(As the attacker) create ``path`` with ``content`` and ``mode``."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
    finally:
        os.close(fd)


def _symlink(target: str, path: str) -> None:
    os.symlink(target, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- fan-in: a sender ring planted by another user ------------------------------------


def test_a_sender_ring_planted_by_another_user_is_never_read(ns, tmp_path):
    """Another user creates ``{ns}.X.from.evil`` (a valid ring, mode 0666, holding a
    pickle that runs code): the Inbox refuses it (``inbox.refused`` says why), hands
    out only what our Outbox sent, and neither it nor ``shmbus gc`` removes it."""
    marker = str(tmp_path / "pwned")
    planted = naming.segment_path(ns, "X.from.evil")
    content = _ring_bytes_holding(_Pwned(marker), ns + "s")
    run_as(OTHER_UID, OTHER_GID, _plant, planted, content, 0o666)
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            with shmbus.Outbox("X", sender="good") as box:
                box.send_obj({"n": 1}, timeout=5)
                assert inbox.recv_obj(timeout=5) == {"n": 1}
                with pytest.raises(shmbus.Timeout):
                    inbox.recv_obj(timeout=0.3)
            assert "X.from.evil" in inbox.refused
            assert inbox.senders == ["good"]
        assert not os.path.exists(marker)
        from shmbus.cleanup import collect
        collect(ns)
        assert os.lstat(planted).st_uid == OTHER_UID  # still there: not ours to remove
    finally:
        _remove(planted)
        purge(ns)


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_registry_planted_by_another_user_is_refused_and_left_alone(ns, kind, tmp_path):
    """Another user puts a registry (a file of his, or a symlink to a file of ours)
    under ``{ns}.X@inbox``: the Inbox and the Outbox refuse it; gc and ``shmbus rm X``
    leave it (and the symlink's target) alone."""
    from click.testing import CliRunner

    from shmbus.cleanup import collect
    from shmbus.tools.cli import main
    path = fanin.registry_path(ns, "X")
    target = str(tmp_path / "ours")
    with open(target, "wb") as f:
        f.write(b"\0" * 128)
    os.chmod(tmp_path, 0o755)
    if kind == "file":
        run_as(OTHER_UID, OTHER_GID, _plant, path, b"\0" * 128, 0o666)
    else:
        run_as(OTHER_UID, OTHER_GID, _symlink, target, path)
    try:
        with pytest.raises(shmbus.PermissionDenied):
            shmbus.Inbox("X")
        with shmbus.Outbox("X") as box, pytest.raises(shmbus.PermissionDenied):
            box.send(b"x", timeout=1)
        collect(ns)
        r = CliRunner().invoke(main, ["rm", "X"])
        assert "Traceback" not in r.output, r.output
        st = os.lstat(path)
        assert st.st_uid == OTHER_UID
        assert os.path.getsize(target) == 128
    finally:
        _remove(path)
        purge(ns)


def test_rm_of_an_inbox_never_removes_a_sender_ring_of_another_user(ns):
    """``shmbus rm X`` removes our Inbox's rings and registry, and leaves a sender ring
    another user planted among them (it is not ours: PermissionDenied names it)."""
    from click.testing import CliRunner

    from shmbus.tools.cli import main
    planted = naming.segment_path(ns, "X.from.evil")
    with shmbus.Inbox("X", capacity=CAP), shmbus.Outbox("X", sender="good") as box:
        box.send(b"x", timeout=5)
    run_as(OTHER_UID, OTHER_GID, _plant, planted, b"\0" * 4096, 0o666)
    try:
        r = CliRunner().invoke(main, ["rm", "X"])
        assert "Traceback" not in r.output, r.output
        assert os.lstat(planted).st_uid == OTHER_UID
    finally:
        _remove(planted)
        purge(ns)


# -- objects: pickle from a member of a shared namespace never runs here ---------------


def _send_obj_as_member(name: str, obj: object) -> None:
    with shmbus.Outbox(name, sender="member") as box:
        box.send_obj(obj, timeout=10)


def test_an_inbox_on_a_shared_namespace_refuses_a_members_pickle(ns, monkeypatch, tmp_path):
    """A member's Outbox sends a pickle that runs code: the Inbox's ``recv_obj``
    refuses it (PermissionDenied), blocking and asyncio alike; json still passes."""
    import asyncio

    import shmbus.asyncio
    monkeypatch.setenv("SHMBUS_GROUP", str(SHARED_GID))
    marker = str(tmp_path / "pwned")
    try:
        with shmbus.Inbox("X", capacity=CAP) as inbox:
            run_as(THIRD_UID, SHARED_GID, _send_obj_as_member, "X", _Pwned(marker))
            with pytest.raises(shmbus.PermissionDenied):
                inbox.recv_obj(timeout=5)
        assert not os.path.exists(marker)

        inbox = shmbus.asyncio.Inbox("X", capacity=CAP)
        try:
            run_as(THIRD_UID, SHARED_GID, _send_obj_as_member, "X", _Pwned(marker))
            with pytest.raises(shmbus.PermissionDenied):
                asyncio.run(inbox.recv_obj(timeout=5))
        finally:
            inbox.close()
        assert not os.path.exists(marker)
    finally:
        purge(ns)


# -- fan-in: a corrupt registry ---------------------------------------------------------


@pytest.mark.parametrize("capacity", [3, 1 << 63])
def test_an_outbox_says_a_corrupt_registry_is_corrupt(ns, capacity):
    """A registry whose capacity word no Inbox wrote (damaged, or written by a member
    of a shared namespace) is a ShmbusError for the Outbox, never a ValueError (a
    programming error: a retry loop would not expect it)."""
    with shmbus.Inbox("X", capacity=CAP) as inbox:
        inbox._words[fanin.W_CAPACITY] = capacity
        with shmbus.Outbox("X") as box:
            with pytest.raises(shmbus.ShmbusError):
                box.send(b"x", timeout=2)
