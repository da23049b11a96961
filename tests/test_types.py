"""A user's program type-checks with ``mypy --strict`` against shmbus's annotations.

mypy runs as CI runs it: ``python -m mypy --strict --follow-imports=silent examples/``
with ``MYPYPATH`` at the repository root, so it checks the examples against the source
tree the tests run (``silent``: shmbus is used like an installed package, its types
are read and errors inside it are not reported).  The examples must pass, and a small
program with the mistakes issue 14 lists must fail, each mistake on its own line: the
types are proven to catch them, not only to be present.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each line marked "# error" must be reported by mypy; nothing else may be.
MISTAKES = '''\
from __future__ import annotations

import numpy as np

import shmbus
import shmbus.asyncio
from shmbus.balancer import Balancer, Worker
from shmbus.bridge import Inbound


def user(pub: shmbus.Producer, sub: shmbus.Consumer) -> None:
    pub.send("text")  # error
    pub.send(b"x", key=5)  # error
    shmbus.Producer("r", on_full="drop")  # error
    shmbus.Consumer("r", start="first")  # error
    msg = sub.recv(timeout=1.0)
    msg.seq + "a"  # error
    msg.data + 1  # error
    msg.key + 1  # error
    msg[0]  # error
    pub.send_many(["a", "b"])  # error
    shmbus.Consumer("r", wait="nap")  # error
    for ring in shmbus.list_rings():
        ring["messages"] + "x"  # error
    shmbus.inspect("r")["no_such_field"]  # error
    sub.recv_array("u1", 8).no_such_attribute  # error
    shmbus.Yielding(spins="many")  # error
    shmbus.BusySpin(100)  # error
    shmbus.Poller().register("orders")  # error
    shmbus.Outbox("results").send("text")  # error
    shmbus.Inbox("results").recv().seq + "a"  # error
    Balancer("g", ["r"], policy="random")  # error
    Worker("g", "w", wait="nap")  # error
    Inbound("nats://127.0.0.1:4222", "s", "r", on_full="drop")  # error
    shmbus.Lease("l", ttl=1, on_stale="steal")  # error


async def user_async() -> None:
    async with shmbus.asyncio.Producer("r", on_full="drop") as pub:  # error
        await pub.send("text")  # error
    async with shmbus.asyncio.Consumer("r") as sub:
        msg = await sub.recv()
        msg.seq + "a"  # error
    async with shmbus.asyncio.Worker("g", "w") as worker:
        (await worker.recv()).key + 1  # error


def fine(pub: shmbus.Producer, sub: shmbus.Consumer) -> None:
    pub.send(b"x", key="k")
    pub.send(memoryview(b"x"), key=b"k")
    pub.send(bytearray(b"x"), key=None)
    pub.send(np.zeros(8, np.uint8))  # a buffer to numpy's stubs only from Python 3.12
    pub.send_many([np.zeros(8, np.uint8), b"y"])
    shmbus.Producer("r", on_full="overwrite", wait=shmbus.Sleeping())
    shmbus.Consumer("r", start="earliest", wait="spin")
    msg = sub.recv(timeout=1.0)
    seq: int = msg.seq
    data: memoryview = msg.data
    key: bytes | None = msg.key
    deliveries: int = msg.deliveries
    kept: shmbus.Message = msg
    assert isinstance(kept, shmbus.Message) and bytes(kept) and len(kept) >= 0
    sender: str | None = msg.sender
    msg.release()
    rings: list[shmbus.RingSummary] = shmbus.list_rings()
    info: shmbus.RingInfo = shmbus.inspect("r")
    locks: list[shmbus.LockInfo] = shmbus.list_locks()
    leases: list[shmbus.LeaseEntry] = shmbus.list_leases()
    print(seq, data, key, deliveries, sender, rings, info, locks, leases)
    with Worker("g", "w", wait=shmbus.Adaptive(spins=10)) as worker:
        got: int = worker.recv(timeout=1.0).seq
    with Balancer("g", ["r"], policy="consistent-hash") as balancer:
        dispatched: int = balancer.stats()["dispatched"]
    with shmbus.Outbox("results") as outbox:
        outbox.send(b"x", key="k")
    poller = shmbus.Poller()
    poller.register(sub)
    poller.register(shmbus.Inbox("results"))
    poller.register(worker)
    print(got, dispatched)
'''


def _mypy(tmp_path: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), *paths],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)


def _errors(output: str, path: Path | str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for line in output.splitlines():
        m = re.match(rf"{re.escape(str(path))}:(\d+): error: (.*)", line)
        if m:
            found.setdefault(int(m.group(1)), []).append(m.group(2))
    return found


@pytest.mark.timeout(180)
def test_examples_pass_mypy_strict_and_mistakes_are_caught(tmp_path: Path) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(MISTAKES)
    # One run for both (mypy's start-up and the numpy stubs dominate its time).
    out = _mypy(tmp_path, "examples/", str(program))
    text = out.stdout + out.stderr
    examples = [line for line in text.splitlines() if line.startswith("examples")]
    assert not examples, "mypy --strict on examples/:\n" + "\n".join(examples)
    expected = {n for n, line in enumerate(MISTAKES.splitlines(), 1)
                if line.endswith("# error")}
    reported = _errors(text, program)
    missed = sorted(expected - set(reported))
    assert not missed, "mypy accepted: " + "; ".join(
        MISTAKES.splitlines()[n - 1].strip() for n in missed) + "\n" + text
    extra = {n: reported[n] for n in sorted(set(reported) - expected)}
    assert not extra, f"mypy reported errors on correct lines: {extra}\n{text}"
    assert out.returncode == 1, text  # errors found, and no crash
