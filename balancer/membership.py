"""Names of a group's rings and locks, and which workers are live.

A worker ``W`` of group ``G`` owns ring ``G.w.W`` (it consumes it with the durable
name ``worker``; the leader balancer produces into it) and holds the registration lock
``G.w.W@worker`` for as long as it lives: the kernel drops the lock when it dies, which
is how the balancer learns that it is gone.
"""

from __future__ import annotations

import os

import shmbus
from shmbus import naming
from shmbus.lock import lock_holders

WORKER_DURABLE = "worker"


def check_group(group: str) -> str:
    naming.check_name(group, "group name")
    if len(group) > 60:
        raise shmbus.InvalidName(f"group name {group!r} is too long: at most 60 "
                                 "characters (its rings append suffixes)", name=group)
    return group


def worker_ring(group: str, worker: str) -> str:
    name = f"{group}.w.{worker}"
    if len(name) > naming.NAME_MAX_LEN:
        raise shmbus.InvalidName(
            f"worker name {worker!r} is too long for group {group!r}: group and worker "
            f"together must fit {naming.NAME_MAX_LEN - 3} characters", name=worker)
    return name


def dead_letter_ring(group: str) -> str:
    return f"{group}.dlq"


def leader_lease(group: str) -> str:
    return f"{group}.leader"


def input_durable(group: str) -> str:
    return f"balancer.{group}"


def registration_lock(group: str, worker: str) -> str:
    return naming.ring_lock_name(worker_ring(group, worker), "worker")


def stats_path(namespace: str, group: str) -> str:
    return f"{naming.lock_dir(namespace)}/{group}@stats"


def worker_rings(namespace: str, group: str) -> dict[str, str]:
    """{worker name: ring name} of every worker ring of the group in /dev/shm."""
    prefix = f"{group}.w."
    try:
        entries = os.listdir(naming.SHM_DIR)
    except OSError:
        return {}
    return {ring[len(prefix):]: ring for ring in naming.ring_names_in(namespace, entries)
            if ring.startswith(prefix)}


def is_registered(namespace: str, group: str, worker: str) -> bool:
    """Whether a live process holds the worker's registration lock."""
    path = f"{naming.lock_dir(namespace)}/{registration_lock(group, worker)}"
    return any(not h.waiting for h in lock_holders(path))
