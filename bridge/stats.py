"""A bridge's statistics for ``shmbus inspect`` / ``top`` / ``metrics``: a small JSON
file in the namespace's lock directory, beside the balancer's, rewritten atomically a
few times a second (never per message) by a thread of the bridge's process.

One file per bridge, ``{ring}@bridge-{direction}[.{durable}]@{pid}.{n}@stats`` (``n``
tells apart the bridges of one process; standbys publish too: their state says so); its name ends in ``@stats`` like the
balancer's, so ``shmbus locks`` leaves it out, and it carries the writer's pid, so
``shmbus gc`` removes it once that process is dead (kill -9).  A bridge's clean stop
removes its own.  It is written exactly like the balancer's stats
(:func:`shmbus.balancer.stats.write`: a ``0600`` temporary file made with ``O_EXCL`` in
the checked lock directory, renamed over the name, never through a symlink); readers
accept only a regular file of ours (:mod:`shmbus.tools.stats_files`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from shmbus import liveness, lockdir
from shmbus.balancer import stats as files
from shmbus.errors import ShmbusError

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("shmbus.bridge")

INTERVAL = 0.25  # seconds between two writes of a running bridge's stats
_NAME = re.compile(
    r"(?P<ring>[^@]+)@bridge-(?:in|out)(?:\.[^@]*)?@(?P<pid>[0-9]+)\.[0-9]+@stats")
_count = itertools.count()


def stem(ring: str, role: str, pid: int) -> str:
    """The stats file of a new bridge of ``role`` (its lock's role: ``bridge-out.D`` or
    ``bridge-in``) on ``ring`` in process ``pid`` is ``{stem}@stats`` (the name
    :mod:`shmbus.balancer.stats` gives a group's: its writer is reused as it is)."""
    return f"{ring}@{role}@{pid}.{next(_count)}"


def writer_of(name: str) -> tuple[str, int] | None:
    """``(ring, pid)`` of a bridge stats file's name, or None if ``name`` is not one."""
    m = _NAME.fullmatch(name)
    return None if m is None else (m["ring"], int(m["pid"]))


def writer_is_dead(dir_fd: int, name: str, path: str) -> bool:
    """Whether the process that writes the bridge stats file ``name`` (of the checked
    lock directory ``dir_fd``; ``path`` for messages) is provably gone: its pid from
    the name, its start time from the file (a pid used again is another process).
    Raises :class:`~shmbus.PermissionDenied` for a file that is not ours."""
    writer = writer_of(name)
    if writer is None:
        raise ValueError(f"{name!r} is not a bridge stats file")
    start = 0  # unknown: judge by the pid alone
    fd = lockdir.open_file(dir_fd, name, path, create=False, write=False)
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0))
        if isinstance(data, dict) and isinstance(data.get("start_time"), int):
            start = data["start_time"]
    except (ValueError, RecursionError):
        pass
    finally:
        os.close(fd)
    return liveness.is_dead(writer[1], start)


def state_of(relay: Relay) -> str:
    """``connected``, ``reconnecting`` (leading, the server lost or not reached yet
    after a failure), ``leading`` (connecting for the first time), ``standby`` or
    ``starting``."""
    if relay.connected.is_set():
        return "connected"
    if relay.leading.is_set():
        return "reconnecting" if relay.stats["failures"] else "leading"
    return "standby" if relay.standing_by.is_set() else "starting"


def summary(relay: Relay, name: str) -> dict[str, Any]:
    """What the bridge publishes: who it is (``name``: its file's :func:`stem`, which
    tells apart the bridges of one ring and direction), its state, every counter of ``stats``,
    and the counters every direction has (``relayed``: acknowledged by JetStream
    (out) or written into the ring (in); ``refused``: pickles kept out (in);
    ``lost``: overwritten before relayed (out); ``reconnects``)."""
    s = dict(relay.stats)
    me = liveness.current()
    server = relay.server if isinstance(relay.server, str) else ",".join(relay.server)
    return {
        "name": name, "direction": relay.direction, "ring": relay.ring, "namespace": relay.namespace,
        "server": server, "subject": relay.subject, "stream": relay.stream,
        "durable": getattr(relay, "durable", None), "pid": me.pid,
        "start_time": me.start_time, "state": state_of(relay),
        "relayed": s.get("acked", s.get("written", 0)), "refused": s.get("refused", 0),
        "lost": s.get("lost", 0), "reconnects": max(0, s["connects"] - 1),
        "last_error": s["last_error"], "stats": s,
    }


class Publisher:
    """Writes a relay's :func:`summary` every :data:`INTERVAL` seconds from a daemon
    thread, from :meth:`start` until :meth:`stop` (which removes the file)."""

    def __init__(self, relay: Relay, role: str) -> None:
        self.relay = relay
        self.role = role
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._stem = ""

    def start(self) -> None:
        self._done.clear()
        self._stem = stem(self.relay.ring, self.role, liveness.current().pid)
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"{self.role}-{self.relay.ring}-stats")
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        try:
            # (with the lock directory if that empties it: the bridge's lock is gone)
            lockdir.remove_file(self.relay.namespace, self._stem + "@stats", rmdir=True)
        except (ShmbusError, OSError) as e:
            log.warning("bridge %s %s: could not remove its stats: %s",
                        self.relay.direction, self.relay.ring, e)

    def _loop(self) -> None:
        warned = False
        while True:
            try:
                files.write(self.relay.namespace, self._stem, summary(self.relay, self._stem))
            except (ShmbusError, OSError) as e:  # stats are never worth a relay
                if not warned:
                    warned = True
                    log.warning("bridge %s %s: cannot publish its stats: %s",
                                self.relay.direction, self.relay.ring, e)
            if self._done.wait(INTERVAL):
                return
