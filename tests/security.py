"""Run code as another user, for tests of what one uid can do to another's objects.

``run_as(uid, gid, fn, *args, timeout=10, **kwargs)`` forks; the child drops every
supplementary group, then its gid, then its uid, calls ``fn(*args, **kwargs)`` and
sends back the result, or the exception it raised, pickled through a pipe.  The parent
waits up to ``timeout`` seconds, reaps the child, and returns the result or re-raises
the child's exception (with the child's traceback as ``__cause__`` text when the
exception does not pickle).  A child that does not answer in time is SIGKILLed, reaped,
and :class:`ChildTimeout` is raised.

Why fork and not a new interpreter: the child needs no read access to the virtual
environment or the source tree (CI's may be unreadable by the second uid), only to
``/dev/shm``.  Import in the parent whatever ``fn`` needs.

The uids need not exist in ``/etc/passwd``.  Dropping to another uid needs root:
:data:`needs_root` skips a test otherwise (CI runs as root).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
import traceback
import warnings
from typing import Any, Callable

import pytest

__all__ = ["OTHER_UID", "OTHER_GID", "THIRD_UID", "THIRD_GID", "ChildTimeout",
           "ChildError", "needs_root", "run_as", "run_forked"]

OTHER_UID = OTHER_GID = 1001   # "the attacker" / "the other user"
THIRD_UID = THIRD_GID = 1002   # a third user (e.g. a member of a shared group)

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="changing uid needs root (CI runs as root)")


class ChildTimeout(AssertionError):
    """The child run by :func:`run_as` did not finish within its timeout."""


class ChildError(AssertionError):
    """The child raised an exception that could not be sent back as itself."""


def run_as(uid: int, gid: int, fn: Callable[..., Any], *args: Any, timeout: float = 10,
           **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` in a forked child running as ``uid``:``gid`` (no
    supplementary groups) and return its result; re-raise what it raised."""
    return _run((uid, gid), fn, args, kwargs, timeout)


def run_forked(fn: Callable[..., Any], *args: Any, timeout: float = 10,
               **kwargs: Any) -> Any:
    """Like :func:`run_as`, but the child keeps this process's user: for code that may
    hang or break the process's state (a deadlock is then a :class:`ChildTimeout`)."""
    return _run(None, fn, args, kwargs, timeout)


def _run(ids: tuple[int, int] | None, fn: Callable, args: tuple, kwargs: dict,
         timeout: float) -> Any:
    uid = os.getuid() if ids is None else ids[0]
    rfd, wfd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(rfd)
        _child(wfd, ids, fn, args, kwargs)
    os.close(wfd)
    try:
        raw = _read_all(rfd, pid, timeout)
    finally:
        os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if not raw:
        raise ChildError(f"child pid {pid} (uid {uid}) sent nothing back; exit status "
                         f"{os.waitstatus_to_exitcode(status)}")
    ok, value = pickle.loads(raw)
    if ok:
        return value
    raise value


def _child(wfd: int, ids: tuple[int, int] | None, fn: Callable, args: tuple,
           kwargs: dict) -> None:
    code = 0
    uid = os.getuid() if ids is None else ids[0]
    try:
        try:
            if ids is not None:
                os.setgroups([])
                os.setgid(ids[1])
                os.setuid(ids[0])
            payload = (True, fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            payload = (False, e)
        try:
            raw = pickle.dumps(payload)
        except Exception:  # noqa: BLE001 - the result or exception does not pickle
            what = ("".join(traceback.format_exception(payload[1])) if not payload[0]
                    else repr(payload[1]))
            raw = pickle.dumps((False, ChildError(
                f"child (uid {uid}) sent back something that does not pickle:\n{what}")))
        view = memoryview(raw)
        while view:
            view = view[os.write(wfd, view):]
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)  # never run the parent's atexit handlers or pytest's teardown


def _read_all(fd: int, pid: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise ChildTimeout(f"child pid {pid} did not finish within {timeout} s "
                               "(killed)")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class Victim:
    """A process of ours (or of ``uid``) that takes no part in shmbus and waits until
    the test ends it: what an attacker would like us to kill."""

    def __init__(self, uid: int | None = None) -> None:
        self._r, self._w = os.pipe()
        ready_r, ready_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            try:
                os.close(self._w)
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                os.write(ready_w, b"r")
                select.select([self._r], [], [], 30)
            finally:
                os._exit(0)
        os.close(self._r)
        os.close(ready_w)
        assert select.select([ready_r], [], [], 10)[0], "victim did not start"
        os.close(ready_r)
        from shmbus import liveness
        self.start_time = liveness.start_time_of(self.pid)

    def alive(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def end(self) -> None:
        os.close(self._w)
        os.waitpid(self.pid, 0)


def purge(namespace: str) -> None:
    """Remove everything of ``namespace`` from /dev/shm, whoever made it (as root)."""
    import shutil

    from shmbus import naming
    for entry in naming.owned_entries(namespace, os.listdir(naming.SHM_DIR)):
        path = f"{naming.SHM_DIR}/{entry}"
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def make_shared_lock_dir(namespace: str) -> None:
    """(As a member) make the namespace's lock directory: the member owns it."""
    from shmbus import lockdir
    os.close(lockdir.open_dir(namespace))


def swap_for_symlink(namespace: str, target: str) -> None:
    """(As the member who owns the lock directory) move it aside and put a symbolic
    link to ``target`` in its place: /dev/shm is sticky, but the directory is his."""
    from shmbus import naming
    directory = naming.lock_dir(namespace)
    os.rename(directory, directory + "-moved")
    os.symlink(target, directory)


def undo_swap(namespace: str) -> None:
    import shutil

    from shmbus import naming
    directory = naming.lock_dir(namespace)
    if os.path.islink(directory):
        os.unlink(directory)
    if os.path.isdir(directory + "-moved"):
        shutil.rmtree(directory + "-moved")
