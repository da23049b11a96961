"""The balancer's statistics, kept in a small JSON file in ``/dev/shm`` (beside the
lock files) for ``shmbus inspect`` / ``shmbus top``: rewritten atomically a few times a
second by the leader."""

from __future__ import annotations

import json
import os
import time

from shmbus import naming

from . import membership


def write(namespace: str, group: str, data: dict) -> None:
    path = membership.stats_path(namespace, group)
    tmp = f"{path}.{os.getpid()}.tmp"
    naming.make_dir(naming.lock_dir(namespace))
    with open(tmp, "w") as f:
        json.dump({**data, "updated_at": time.time()}, f)
    os.replace(tmp, path)


def read(namespace: str | None, group: str) -> dict | None:
    """The group's last published stats, or None."""
    ns = naming.resolve_namespace(namespace)
    try:
        with open(membership.stats_path(ns, group)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def remove(namespace: str, group: str) -> None:
    try:
        os.unlink(membership.stats_path(namespace, group))
    except FileNotFoundError:
        pass
