"""The balancer's statistics, kept in a small JSON file in ``/dev/shm`` (beside the
lock files) for ``shmbus inspect`` / ``shmbus top``: rewritten atomically a few times a
second by the leader.

The file lives in the namespace's lock directory, which is checked to be ours
(:mod:`shmbus.lockdir`), and every file is opened relative to that checked directory
without following symlinks: the temporary file is created with ``O_EXCL`` (``0600``)
and renamed over ``{group}@stats``; a reader accepts only a regular file of ours.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, TypedDict

from shmbus import lockdir, naming

from . import membership

_MAX_SIZE = 1 << 20  # a stats file is a few KiB; never read more than this


class WorkerStats(TypedDict):
    """One worker in :class:`BalancerStats`."""

    in_flight: int       # dispatched to it, not yet acknowledged
    dispatched: int


class BalancerStats(TypedDict):
    """``Balancer.stats()``: what the leader publishes (:func:`read` returns it, plus
    ``updated_at``, as the file says: any member of a shared namespace may write it)."""

    group: str
    policy: str
    leader_pid: int
    lease_token: int
    dispatched: int
    redelivered: int
    dead_lettered: int
    workers: dict[str, WorkerStats]
    input_lag_bytes: dict[str, int]  # per input ring
    pending: int
    waiting_for_workers: list[str]
    keys_in_handoff: int


def write(namespace: str, group: str, data: Mapping[str, Any]) -> None:
    """Publish ``data`` (plus ``updated_at``) as the group's stats.  Raises
    :class:`shmbus.PermissionDenied` if the lock directory is not ours."""
    path = membership.stats_path(namespace, group)
    name = os.path.basename(path)
    tmp = f"{name}.{os.getpid()}.tmp"
    body = json.dumps({**data, "updated_at": time.time()}).encode()
    while True:
        dir_fd = lockdir.open_dir(namespace)
        try:
            _write_new(dir_fd, tmp, f"{os.path.dirname(path)}/{tmp}", body)
            try:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError:  # (e.g. a directory under the stats name): leave no tmp
                _unlink_quietly(dir_fd, tmp)
                raise
            return
        except FileNotFoundError:
            continue  # the directory was removed meanwhile (its last lock released)
        finally:
            os.close(dir_fd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _write_new(dir_fd: int, name: str, path: str, body: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)  # left by a process of ours that died mid-write
    except FileNotFoundError:
        pass
    fd = lockdir.open_file(dir_fd, name, path, exclusive=True)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.unlink(name, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)


def read(namespace: str | None, group: str) -> dict[str, Any] | None:
    """The group's last published stats, or None if there are none or they are not a
    JSON object (whatever the file holds: in a namespace shared with a group, any
    member can write it).  Raises :class:`shmbus.PermissionDenied` if the file or its directory
    is not ours."""
    ns = naming.resolve_namespace(namespace)
    path = membership.stats_path(ns, group)
    try:
        dir_fd = lockdir.open_dir(ns, create=False)
    except FileNotFoundError:
        return None
    try:
        fd = lockdir.open_file(dir_fd, os.path.basename(path), path, create=False,
                               write=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dir_fd)
    try:
        raw = os.read(fd, _MAX_SIZE)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # (nested deeper than the parser recurses)
        return None
    return data if isinstance(data, dict) else None


def remove(namespace: str, group: str) -> None:
    """Remove the group's stats file if it is ours."""
    lockdir.remove_file(namespace, os.path.basename(membership.stats_path(namespace, group)))
