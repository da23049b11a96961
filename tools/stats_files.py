"""Balancer and bridge stats files as the inspectors read them: never blocking, never
trusting.

A stats file lives in the namespace's lock directory of ``/dev/shm``, where anything may
sit instead: a FIFO (an ordinary ``open`` would hang), a symlink, another user's file,
JSON of another shape or nested deeper than the parser recurses (in a namespace shared
with a group, any member can write it).  Each file is read without following a symlink and without
blocking, and its shape is checked; one that fails is reported, never a traceback.
"""

from __future__ import annotations

import json
import os

from shmbus import liveness, lockdir, naming
from shmbus.bridge.stats import writer_of
from shmbus.errors import ShmbusError
from shmbus.introspect import entry_problem, open_entry, read_entry

_MAX_BYTES = 1 << 20
_INTS = ("leader_pid", "lease_token", "dispatched", "redelivered", "dead_lettered")


def read_groups(namespace: str | None) -> tuple[list[dict], list[str]]:
    """The stats of every balancer group of the namespace, sorted by group, and one line
    per stats file that could not be used (what it is and why)."""
    return _in_lock_dir(namespace, _read_all)


def read_bridges(namespace: str | None) -> tuple[list[dict], list[str]]:
    """The stats of every bridge process of the namespace (:mod:`shmbus.bridge.stats`),
    sorted by ring, direction and pid, each with ``alive`` (whether its writer still
    runs: a bridge killed before ``shmbus gc`` shows as dead), and one line per bridge
    stats file that could not be used.  A file is read only if it is a regular file of
    ours (or of the namespace's group), never through a symlink, never blocking."""
    return _in_lock_dir(namespace, _read_bridges)


def _in_lock_dir(namespace: str | None, read) -> tuple[list[dict], list[str]]:
    directory = naming.lock_dir(naming.resolve_namespace(namespace))
    try:
        problem = entry_problem(directory, "dir", own=False)
        # Read through the checked directory's descriptor, never its path: its owner
        # may swap it for a symlink meanwhile.
        dir_fd = None if problem else open_entry(directory, own=False, kind="dir")
    except FileNotFoundError:
        return [], []
    except OSError as e:
        problem, dir_fd = _reason(e).splitlines()[0], None
    if dir_fd is None:
        return [], [f"{directory}: lock directory {problem}: skipped"]
    try:
        return read(directory, dir_fd)
    finally:
        os.close(dir_fd)


def _read_bridges(directory: str, dir_fd: int) -> tuple[list[dict], list[str]]:
    bridges, problems = [], []
    for name in os.listdir(dir_fd):
        found = writer_of(name)
        if found is None:
            continue
        writer = (*found, name[:-len("@stats")])
        path = f"{directory}/{name}"
        try:
            # lockdir.open_file: O_NOFOLLOW, O_NONBLOCK, then the owner checked on fstat
            fd = lockdir.open_file(dir_fd, name, path, create=False, write=False)
            try:
                raw = os.pread(fd, _MAX_BYTES, 0)
            finally:
                os.close(fd)
            data = json.loads(raw)
            check_bridge(data, writer)
        except FileNotFoundError:
            continue
        except RecursionError:
            problems.append(f"{path}: not bridge stats (JSON nested too deeply): skipped")
            continue
        except (ShmbusError, OSError, ValueError) as e:
            problems.append(f"{path}: {_reason(e).splitlines()[0]}: skipped")
            continue
        data["alive"] = not liveness.is_dead(data["pid"], data["start_time"])
        bridges.append(data)
    bridges.sort(key=lambda b: (b["ring"], b["direction"], b["pid"], b["name"]))
    return bridges, problems


_BRIDGE_INTS = ("pid", "start_time", "relayed", "refused", "lost", "reconnects")
_BRIDGE_STRS = ("name", "direction", "ring", "server", "subject", "state")


def check_bridge(data: object, writer: tuple[str, int, str]) -> None:
    """Raise ValueError unless ``data`` has the shape a bridge writes, for the ring, pid
    and name its file is named after (``writer``)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"not bridge stats ({what})")

    need(isinstance(data, dict), "not a JSON object")
    assert isinstance(data, dict)
    for key in _BRIDGE_STRS:
        need(isinstance(data.get(key), str), f"{key} is not a string")
    for key in _BRIDGE_INTS:
        need(_is_int(data.get(key)) and data[key] >= 0, f"{key} is not a count")
    need(data["direction"] in ("in", "out"), "direction is neither in nor out")
    need((data["ring"], data["pid"]) == writer[:2] and data["name"] == writer[2],
         "ring, pid or name not those of its file")
    need(data.get("last_error") is None or isinstance(data["last_error"], str),
         "last_error is not a string")
    need(isinstance(data.get("stats"), dict), "stats is not a JSON object")


def _read_all(directory: str, dir_fd: int) -> tuple[list[dict], list[str]]:
    groups, problems = [], []
    for name in sorted(os.listdir(dir_fd)):
        if not name.endswith("@stats") or writer_of(name) is not None:
            continue  # (a bridge's: read_bridges)
        path = f"{directory}/{name}"
        try:
            data = json.loads(read_entry(path, _MAX_BYTES, own=False, dir_fd=dir_fd))
            check(data)
        except FileNotFoundError:
            continue
        except RecursionError:  # nested deeper than the parser recurses
            problems.append(f"{path}: not balancer stats (JSON nested too deeply): "
                            "skipped")
            continue
        except (ShmbusError, OSError, ValueError) as e:
            problems.append(f"{path}: {_reason(e).splitlines()[0]}: skipped")
            continue
        groups.append(data)
    return groups, problems


def _reason(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def check(data: object) -> None:
    """Raise ValueError unless ``data`` has the shape a balancer writes."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"not balancer stats ({what})")

    need(isinstance(data, dict), "not a JSON object")
    assert isinstance(data, dict)
    need(isinstance(data.get("group"), str), "no group name")
    need(isinstance(data.get("policy"), str), "no policy")
    for key in _INTS:
        need(_is_int(data.get(key)), f"{key} is not an integer")
    lags = data.get("input_lag_bytes")
    need(isinstance(lags, dict) and all(_is_int(v) for v in lags.values()),
         "input_lag_bytes is not a map of integers")
    workers = data.get("workers")
    need(isinstance(workers, dict) and all(
        isinstance(w, dict) and _is_int(w.get("in_flight")) and _is_int(w.get("dispatched"))
        for w in workers.values()), "workers is not a map of worker counters")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
