"""Child-process entry points for multiprocess tests (importable by spawn)."""

from __future__ import annotations

import hashlib
import os
import time

import shmbus
from shmbus import layout
from shmbus.layout import H_PRODUCER_SLEEP
from shmbus.segment import Segment

from .support import await_until


def make_payload(producer_id: int, seq: int, size: int = 48) -> bytes:
    """Checkable content: producer id, seq, filler, and a checksum of all that."""
    body = producer_id.to_bytes(4, "little") + seq.to_bytes(8, "little")
    body += bytes((seq + i) & 0xFF for i in range(max(0, size - len(body) - 8)))
    return body + hashlib.blake2b(body, digest_size=8).digest()


def check_payload(data: bytes) -> tuple[int, int]:
    """(producer id, seq) of a payload made by make_payload; ValueError if torn."""
    body, digest = data[:-8], data[-8:]
    if hashlib.blake2b(body, digest_size=8).digest() != digest:
        raise ValueError(f"corrupt payload {data[:16].hex()}...")
    return int.from_bytes(body[:4], "little"), int.from_bytes(body[4:12], "little")


def produce(ns: str, ring: str, capacity: int, count: int, started, producer_id: int = 1,
            on_full: str = "block", vary: bool = False) -> None:
    """Send ``count`` messages (forever if count < 0); set ``started`` after the first.
    With ``vary``, payload sizes vary from 24 to 400 bytes."""
    with shmbus.Producer(ring, capacity=capacity, namespace=ns, on_full=on_full) as pub:
        i = 0
        while count < 0 or i < count:
            seq = pub.seq
            size = 24 + (seq * 37) % 377 if vary else 48
            pub.send(make_payload(producer_id, seq, size), key=f"k{seq % 7}", timeout=30)
            if i == 0:
                started.set()
            i += 1


def consume(ns: str, ring: str, count: int, results, ready, durable: str | None = None,
            start: str = "latest") -> None:
    """Receive ``count`` messages, check each, and put their seqs on ``results``."""
    with shmbus.Consumer(ring, namespace=ns, durable=durable, start=start) as sub:
        ready.set()
        seqs = []
        while len(seqs) < count:
            for m in sub.recv_many(256, timeout=30):
                pid_, seq = check_payload(bytes(m))
                assert seq == m.seq, (seq, m.seq)
                seqs.append(m.seq)
        results.put(seqs)


def consume_and_hang(ns: str, ring: str, durable: str | None, stop_at: int, results,
                     holding) -> None:
    """Receive until the message with seq ``stop_at`` (kept, not released), report the
    seqs seen, then wait to be killed."""
    with shmbus.Consumer(ring, namespace=ns, durable=durable, start="earliest") as sub:
        holding_ready = False
        seqs = []
        while True:
            if not holding_ready:
                m = sub.recv(timeout=30)
                seqs.append(m.seq)
                if m.seq == stop_at:
                    results.put(seqs)
                    holding.set()
                    holding_ready = True
            else:
                time.sleep(3600)  # not synchronisation: waiting to be SIGKILLed


def attach_and_hang(ns: str, ring: str, attached) -> None:
    """Attach an anonymous consumer, say so, then wait to be killed."""
    sub = shmbus.Consumer(ring, namespace=ns)
    attached.set()
    time.sleep(3600)  # waiting to be SIGKILLed
    sub.close()


def idle_consumer(ns: str, ring: str, ready, results) -> None:
    """Wait on an empty ring; report the CPU seconds the waiting thread spent (not the
    process: numpy's thread pool burns some CPU after import) and what arrived."""
    with shmbus.Consumer(ring, namespace=ns) as sub:
        ready.set()
        cpu0, t0 = time.thread_time(), time.monotonic()
        msg = sub.recv(timeout=30)
        results.put((time.thread_time() - cpu0, time.monotonic() - t0, bytes(msg)))


def open_as_nobody(ns: str, ring: str, results) -> None:
    """Drop to uid 65534, try to consume, report (error type, is it a ShmbusError, is
    it a PermissionError, message)."""
    os.setgid(65534)
    os.setuid(65534)
    try:
        shmbus.Consumer(ring, namespace=ns)
    except Exception as e:  # report whatever it was
        results.put((type(e).__name__, isinstance(e, shmbus.ShmbusError),
                     isinstance(e, PermissionError), str(e)))
    else:
        results.put(("no error", False, False, ""))


def increment_under_lock(ns: str, name: str, path: str, times: int, go) -> None:
    """Read-modify-write a counter file ``times`` times, each under the lock."""
    lock = shmbus.FileLock(name, namespace=ns)
    go.wait(30)
    for _ in range(times):
        with lock:
            with open(path, "r+") as f:
                value = int(f.read() or 0)
                f.seek(0)
                f.write(str(value + 1))
                f.truncate()


def hold_lock(ns: str, name: str, shared: bool, held) -> None:
    """Take the lock, say so, then wait to be killed."""
    lock = shmbus.FileLock(name, namespace=ns, shared=shared)
    lock.acquire()
    held.set()
    time.sleep(3600)  # waiting to be SIGKILLed


def hold_lease(ns: str, name: str, ttl: float, held, tokens) -> None:
    """Acquire the lease, report its token, then wait to be stopped or killed."""
    lease = shmbus.Lease(name, ttl=ttl, namespace=ns)
    lease.acquire(timeout=30)
    tokens.put(lease.token)
    held.set()
    time.sleep(3600)  # waiting to be SIGSTOPped / SIGKILLed


def run_balancer(ns: str, group: str, inputs: list, policy: str, ttl: float = 1.0,
                 prefetch: int = 64, max_deliveries: int = 5) -> None:
    """Run a balancer (leader or standby) until killed or terminated."""
    import signal
    from shmbus.balancer import Balancer
    b = Balancer(group, inputs, policy=policy, namespace=ns, lease_ttl=ttl,
                 prefetch=prefetch, max_deliveries=max_deliveries)
    signal.signal(signal.SIGTERM, lambda *a: b.stop(0))
    b.run()


def run_worker(ns: str, group: str, name: str, results, stop, hang_after: int = -1) -> None:
    """Receive messages, report (worker, key, payload, deliveries) for each; with
    ``hang_after`` >= 0, stop releasing after that many and wait to be killed."""
    from shmbus.balancer import Worker
    with Worker(group, name, namespace=ns) as w:
        got = 0
        while not stop.is_set():
            try:
                m = w.recv(timeout=0.05)
            except shmbus.Timeout:
                continue
            results.put((name, m.key, bytes(m), m.deliveries))
            got += 1
            if got == hang_after:
                results.put((name, None, b"hanging", 0))
                time.sleep(3600)  # holding the message unreleased until SIGKILL


def fail_with(message: str) -> None:
    """Die of ValueError(message): a child that fails, to test that its parent hears."""
    raise ValueError(message)


def send_when_asleep(ns: str, ring: str, slot: int, data: bytes, how: str, sent) -> None:
    """As the ring's producer, wait until the consumer in slot ``slot`` sleeps (its
    sleep epoch, read through the segment, is odd), then publish ``data`` with the call
    ``how`` names (``send``, ``send_many``, ``claim`` or ``send_array``); put the
    time.monotonic() of the call on ``sent``."""
    import numpy as np
    seg = Segment.open(ns, ring)
    try:
        words, epoch = seg.words, layout.slot_word(slot) + layout.S_SLEEP
        with shmbus.Producer(ring, namespace=ns) as pub:
            await_until(lambda: words[epoch] & 1, 10, what=f"consumer {slot} asleep")
            sent.put(time.monotonic())
            if how == "send":
                pub.send(data)
            elif how == "send_many":
                pub.send_many([data])
            elif how == "claim":
                with pub.claim(len(data)) as buf:
                    buf[:] = data
            elif how == "send_array":
                pub.send_array(np.frombuffer(data, np.uint8).reshape(1, -1))
            else:
                raise ValueError(f"unknown way to publish: {how!r}")
        del words
    finally:
        seg.close()


def release_when_producer_sleeps(ns: str, ring: str, how: str, go, attached,
                                 results) -> None:
    """Attach to ``ring`` (filled with equal filler messages); after ``go``, wait until
    its producer sleeps (the header's producer sleep epoch is odd), then read and
    release in the way ``how`` names: ``"recv"`` (each recv releases the previous
    message), ``"recv_many"`` (each batch releases the previous one) or ``"release"``
    (one batch, then ``release()``); put the first message that is not filler on
    ``results``."""
    seg = Segment.open(ns, ring)
    words = seg.words
    with shmbus.Consumer(ring, namespace=ns) as sub:
        attached.set()
        assert go.wait(30), "the parent never filled the ring"
        await_until(lambda: words[H_PRODUCER_SLEEP] & 1, 10, what="the producer asleep")
        if how == "recv":
            filler = bytes(sub.recv(timeout=5))
            while bytes(msg := sub.recv(timeout=10)) == filler:
                pass
        elif how == "recv_many":
            batch = sub.recv_many(1 << 20, timeout=5)
            filler = bytes(batch[0])
            while all(bytes(m) == filler for m in batch):
                batch = sub.recv_many(1 << 20, timeout=10)
            msg = next(m for m in batch if bytes(m) != filler)
        elif how == "release":
            filler = bytes(sub.recv_many(1 << 20, timeout=5)[0])
            assert sub.lag == 0, "one batch did not take what the ring held"
            sub.release()
            msg = sub.recv(timeout=10)
        else:
            raise ValueError(f"unknown way to release: {how!r}")
        results.put(bytes(msg))
    del words
    seg.close()
