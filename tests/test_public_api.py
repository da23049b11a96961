"""The public surface DESIGN.md promises: names and signatures stay put."""

from __future__ import annotations

import inspect

from shmbus import balancer
import shmbus

# Every name shmbus.__all__ exports: a name added or removed is a decision, made here too.
PUBLIC = {"Producer", "Consumer", "Message", "Inbox", "Outbox", "Poller", "FileLock", "Lease",
          "Fence", "WaitStrategy", "BusySpin", "Yielding", "Sleeping", "Adaptive",
          "list_rings", "inspect", "list_locks", "list_leases", "unlink", "compiled",
          "ShmbusError", "RingNotFound", "RingBusy", "DurableBusy", "LayoutMismatch",
          "CorruptRing", "MessageTooLarge", "InvalidName", "Timeout", "LeaseLost",
          "NotHeld", "ShmFull", "Closed", "PermissionDenied", "AlreadyHeld", "Released",
          "FrameError", "CodecUnavailable", "LAYOUT_VERSION",
          # the plain data of list_rings, inspect, list_locks, list_leases, Lease.holder
          "RingSummary", "RingInfo", "ProducerInfo", "ConsumerInfo", "LockInfo",
          "LockHolderInfo", "LeaseHolder", "LeaseEntry"}


def test_all_names_exist():
    assert set(shmbus.__all__) == PUBLIC
    assert all(hasattr(shmbus, name) for name in shmbus.__all__)
    assert {"Balancer", "Worker", "RoundRobin", "ConsistentHash"} <= set(balancer.__all__)


def _kwonly(fn) -> dict:
    params = inspect.signature(fn).parameters
    return {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY}


def test_signatures_match_the_contract():
    p = _kwonly(shmbus.Producer.__init__)
    assert {k: p[k] for k in ("capacity", "create", "on_full", "namespace")} == \
        {"capacity": None, "create": True, "on_full": "block", "namespace": None}
    c = _kwonly(shmbus.Consumer.__init__)
    assert {k: c[k] for k in ("durable", "start", "namespace")} == \
        {"durable": None, "start": "latest", "namespace": None}
    assert _kwonly(shmbus.FileLock.__init__)["shared"] is False
    assert "ttl" in _kwonly(shmbus.Lease.__init__)
    for name in ("send", "send_many", "claim", "unlink", "close"):
        assert callable(getattr(shmbus.Producer, name))
    for name in ("recv", "try_recv", "recv_many", "release", "close"):
        assert callable(getattr(shmbus.Consumer, name))
    for name in ("data", "key", "seq", "timestamp_ns", "release", "deliveries"):
        assert hasattr(shmbus.Message, name)


def test_errors_are_also_builtins():
    assert issubclass(shmbus.Timeout, TimeoutError)
    assert issubclass(shmbus.RingNotFound, FileNotFoundError)
    assert issubclass(shmbus.InvalidName, ValueError)
    assert all(issubclass(getattr(shmbus, n), shmbus.ShmbusError)
               for n in PUBLIC if n.endswith(("Error", "Found", "Busy", "Mismatch", "Ring",
                                               "Large", "Name", "Lost", "Held", "Full"))
               and n != "ShmbusError")


def test_every_package_ships_py_typed():
    """PEP 561: type checkers use shmbus's annotations only if each installed package
    carries a ``py.typed`` marker (and pyproject installs it as package data)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    data, dirs = tool["package-data"], tool["package-dir"]
    for package in tool["packages"]:
        if package.rpartition(".")[0] in dirs:  # shmbus.tools.benchkit
            continue  # PEP 561: its parent's marker covers a subpackage
        source = root / dirs.get(package, package.replace(".", "/"))
        assert (source / "py.typed").is_file(), f"{source} has no py.typed"
        assert "py.typed" in data.get(package, []), f"{package}: py.typed not in package-data"
