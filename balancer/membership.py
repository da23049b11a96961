"""Names of a group's rings and locks, and which workers are live.

A worker ``W`` of group ``G`` owns ring ``G.w.W`` (it consumes it with the durable
name ``worker``; the leader balancer produces into it) and holds the registration lock
``G.w.W@worker`` for as long as it lives: the kernel drops the lock when it dies, which
is how the balancer learns that it is gone.  The group's other names are the
dead-letter ring ``G.dlq``, the leader lease ``G.leader``, the stats file ``G@stats``
and the balancer's durable name ``balancer.G`` on its input rings.

**Decision: a group name has no dot** (``[A-Za-z0-9_-]``, 1 to 60 characters, like a
namespace).  Every name of a group starts with the group name and a dot, so a dotless
group name makes them unambiguous: the first dot ends the group name, and no group's
rings, lease or stats can be taken for another's whatever the worker names (which may
contain dots).  With dots allowed, the rings of groups ``orders`` and ``orders.w.eu``
collided: ``orders.w.eu.w.w1`` was worker ``w1`` of the second group and worker
``eu.w.w1`` of the first, which took it over.
"""

from __future__ import annotations

import os
import re

import shmbus
from shmbus import naming
from shmbus.lock import lock_holders

WORKER_DURABLE = "worker"


GROUP_MAX_LEN = 60  # its rings append suffixes
_GROUP_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % GROUP_MAX_LEN)


def check_group(group: str) -> str:
    """Return ``group`` if it is a valid group name, else raise :class:`InvalidName`."""
    if not isinstance(group, str) or not _GROUP_RE.fullmatch(group):
        hint = (f", e.g. {group.replace('.', '-')!r}"
                if isinstance(group, str) and "." in group else "")
        raise shmbus.InvalidName(
            f"invalid group name {group!r}: expected 1 to {GROUP_MAX_LEN} characters "
            "from [A-Za-z0-9_-], without a dot (a group's rings are named GROUP.w.WORKER "
            f"and GROUP.dlq: a dot would let one group's rings pass for another's); "
            f"rename it{hint}", name=group)
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
