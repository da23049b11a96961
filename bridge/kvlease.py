"""``KVLease``: a lease with :class:`shmbus.Lease`'s interface, held in a NATS KV bucket,
so that processes on different hosts can elect one holder.

Consensus and persistence are the server's (JetStream, RAFT-replicated in a cluster):

* **acquire** is a KV create of the key with a per-message TTL: it succeeds only if
  the key holds nothing (never written, deleted, or expired by its TTL);
* the **token** is the revision (stream sequence) of that create: it only grows, as
  long as the bucket is never deleted (never delete it: a new bucket starts again at
  1 and a holder with an old token would pass a fence);
* **renew** is a compare-and-set on the current revision with a new TTL (a fresh
  revision each time; the token stays the acquisition's);
* **release** deletes the key, only if the revision is still ours.

Pitfalls (measured for issue 15): TTLs are whole seconds (nats-py sends ``int(ttl)``;
``ttl`` must be an integer >= 1 here); the stream leader's failover in a 3-node
cluster took 5-6 s, so use ``ttl`` >= 15 s there; a bucket created elsewhere with
``limit_marker_ttl`` breaks re-acquiring (create after an expiry finds the marker):
let this class create the bucket (per-message TTLs allowed, history 1).

Expiry is measured on ``time.monotonic()`` from *before* each request that set the
TTL, so the local ``expires_at`` is never later than the server's.  A holder paused
past its ttl finds the lease lost (``check()`` raises :class:`~shmbus.LeaseLost`)
before acting; resources should still check tokens (:class:`shmbus.Fence` locally).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from shmbus import naming
from shmbus.errors import AlreadyHeld, LeaseLost, NotHeld, Timeout

_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_KV_OP = "KV-Operation"
_POLL = 0.1  # seconds between attempts to acquire a taken lease
_log = logging.getLogger("shmbus.bridge")


class _Loop:
    """An asyncio loop in a daemon thread, for blocking callers."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name=name)
        self.thread.start()

    def run(self, coro, timeout: float | None):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class KVLease:
    """Time-bounded ownership of ``name`` across hosts, in NATS KV bucket ``bucket`` on
    ``server`` (a URL or a list of the cluster's URLs): see the module's docstring.
    ``replicas``: the bucket's replicas when this object creates it (3 in a cluster
    of three: the lease then survives the loss of a server).

    ``acquire(timeout)``, ``renew()``, ``release()``, ``check()``; ``token``,
    ``expires_at`` (``time.monotonic()`` seconds), ``held``, ``holder()``;
    ``keepalive=True`` renews every ``ttl/3`` in the background and marks the lease
    lost when a renewal is refused or none succeeded before the expiry.  A context
    manager acquires and releases.  ``close()`` releases a held lease and closes the
    connection.  Errors: :class:`~shmbus.Timeout` (taken, or the server unreachable
    until the deadline), :class:`~shmbus.LeaseLost`, :class:`~shmbus.NotHeld`,
    :class:`~shmbus.AlreadyHeld`.
    """

    def __init__(self, name: str, *, ttl: int, server: str | list[str],
                 bucket: str = "shmbus-leases", keepalive: bool = False,
                 request_timeout: float = 5.0, replicas: int = 1) -> None:
        naming.check_name(name, "lease name")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or \
                ttl != int(ttl) or not 1 <= ttl <= 10 * 365 * 86400:
            raise ValueError(f"ttl must be a whole number of seconds >= 1 (NATS per-message "
                             f"TTLs are whole seconds), got {ttl!r}")
        naming.check_name(bucket, "bucket name")
        if "." in bucket:
            raise ValueError(f"a KV bucket name has no dots, got {bucket!r}")
        self.name, self.ttl, self.server, self.bucket = name, int(ttl), server, bucket
        self.keepalive, self.request_timeout = keepalive, request_timeout
        self.replicas = replicas  # of the bucket, if this object creates it
        self._loop = _Loop(f"kvlease-{name}")
        self._nc = self._kv = None
        self._token = 0          # revision of the acquisition
        self._revision = 0       # revision of the last write (acquire or renew)
        self._expires = 0.0
        self._lost = False
        self._pid = os.getpid()
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one request at a time (renewals vs. callers)

    # -- state ----------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return (self._token > 0 and not self._lost and self._pid == os.getpid()
                and time.monotonic() < self._expires)

    @property
    def token(self) -> int:
        """The fencing token of the current (or last) acquisition: its KV revision."""
        return self._token

    @property
    def expires_at(self) -> float:
        return self._expires

    def holder(self) -> dict[str, Any] | None:
        """The current holder (host, pid, token, revision), or None."""
        entry = self._call(self._get())
        if entry is None:
            return None
        info = json.loads(entry.value or b"{}")
        # A create cannot know its own revision: until the first renewal the
        # record says token 0, and the token is the revision.
        return {**info, "token": info.get("token") or entry.revision,
                "revision": entry.revision}

    # -- the server -----------------------------------------------------------------------

    def _call(self, coro, timeout: float | None = None):
        """Run ``coro`` in the lease's loop; wait for it at most ``timeout`` seconds
        (and never more than ``request_timeout`` and a second)."""
        most = self.request_timeout + 1
        with self._lock:
            try:
                return self._loop.run(coro, most if timeout is None else min(timeout, most))
            except TimeoutError:
                raise Timeout(f"lease {self.name!r}: no answer from {self.server} within "
                              f"{self.request_timeout} s; is the server reachable?",
                              name=self.name) from None

    async def _bucket(self):
        import nats
        from nats.js.errors import BucketNotFoundError
        if self._kv is None:
            if self._nc is None:
                async def quiet(e: Exception) -> None:  # (nats-py logs tracebacks)
                    _log.debug("lease %s: %r", self.name, e)

                self._nc = await nats.connect(self.server, max_reconnect_attempts=-1,
                                              connect_timeout=self.request_timeout,
                                              allow_reconnect=True, error_cb=quiet)
            js = self._nc.jetstream(timeout=self.request_timeout)
            try:
                self._kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(bucket=self.bucket, history=1,
                                                     replicas=self.replicas)
        return self._kv

    async def _get(self):
        from nats.js.errors import KeyNotFoundError
        kv = await self._bucket()
        try:
            return await kv.get(self.name)
        except KeyNotFoundError:  # also KeyDeletedError, its subclass
            return None

    async def _write(self, last: int, token: int) -> int:
        """Publish our record if the key's last revision is ``last`` (0: nothing
        there); return the new revision."""
        from nats.js.errors import KeyWrongLastSequenceError
        kv = await self._bucket()
        value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "token": token}).encode()
        try:
            if last == 0:
                return await kv.create(self.name, value, msg_ttl=self.ttl)
            ack = await self._nc.jetstream(timeout=self.request_timeout).publish(
                f"$KV.{self.bucket}.{self.name}", value, msg_ttl=self.ttl,
                headers={_EXPECTED_LAST: str(last)})
            return ack.seq
        except KeyWrongLastSequenceError:
            return 0
        except Exception as e:  # noqa: BLE001 - the same refusal, from a raw publish
            if getattr(e, "err_code", None) in (10071, 10164):
                return 0
            raise

    # -- the lease ------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> "KVLease":
        """Take the lease, waiting up to ``timeout`` seconds (None: forever) while
        another holder has it or the server cannot be reached; raises
        :class:`~shmbus.Timeout` naming the holder."""
        if self.held:
            raise AlreadyHeld(f"lease {self.name!r} is already held by this object (token "
                              f"{self._token}): release it first", name=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        why = "it is held"
        while True:
            began = time.monotonic()
            wait = None if deadline is None else max(0.05, deadline - began)
            try:
                revision = self._call(self._write(0, 0), wait)
            except Exception as e:  # noqa: BLE001 - unreachable, or timed out: retry
                revision, why = 0, f"the server is unreachable ({type(e).__name__}: {e})"
            else:
                why = "it is held"
            if revision:
                self._token = self._revision = revision
                self._expires, self._lost, self._pid = began + self.ttl, False, os.getpid()
                break
            if deadline is not None and time.monotonic() >= deadline:
                holder = None
                try:
                    holder = self.holder() if why == "it is held" else None
                except Exception:  # noqa: BLE001 - only for the message
                    pass
                raise Timeout(f"lease {self.name!r} in bucket {self.bucket!r} not acquired "
                              f"within {timeout} s: {why}"
                              + (f" by {holder}" if holder else ""), name=self.name)
            time.sleep(_POLL if deadline is None else
                       max(0.0, min(_POLL, deadline - time.monotonic())))
        if self.keepalive:
            self._start_keepalive()
        return self

    def renew(self) -> None:
        """Extend the lease by ``ttl`` from now (a compare-and-set on our revision).
        Raises :class:`~shmbus.LeaseLost` if it expired or another holder has it,
        :class:`~shmbus.Timeout` if the server does not answer."""
        self._check_local()
        began = time.monotonic()
        revision = self._call(self._write(self._revision, self._token))
        if not revision:
            self._lost = True
            raise self._lost_error("another holder took it (its revision moved on)")
        self._revision, self._expires = revision, began + self.ttl

    def check(self) -> None:
        """Raise :class:`~shmbus.LeaseLost` unless this object still holds the lease:
        not expired here, and the key's revision is still ours."""
        self._check_local()
        entry = self._call(self._get())
        if entry is None or entry.revision != self._revision:
            self._lost = True
            raise self._lost_error("the key now has revision "
                                   f"{entry.revision if entry else 'none (expired)'}")
        self._check_local()  # the answer may have come after the expiry

    def release(self) -> None:
        """Give the lease up: delete the key if its revision is still ours.  Raises
        :class:`~shmbus.NotHeld` if this object does not hold it."""
        self._stop_keepalive()
        if not self.held:
            raise NotHeld(f"lease {self.name!r} is not held by this object (token "
                          f"{self._token})", name=self.name)
        self._expires = 0.0
        if not self._call(self._delete(self._revision)):
            self._lost = True
            raise NotHeld(f"lease {self.name!r} (token {self._token}) was taken by another "
                          "holder before it was released", name=self.name)

    async def _delete(self, revision: int) -> bool:
        """Delete the key if its last revision is ``revision``; whether it was."""
        from nats.js.errors import APIError
        await self._bucket()
        try:
            await self._nc.jetstream(timeout=self.request_timeout).publish(
                f"$KV.{self.bucket}.{self.name}", b"",
                headers={_KV_OP: "DEL", _EXPECTED_LAST: str(revision)})
        except APIError as e:
            if e.err_code in (10071, 10164):  # wrong last sequence
                return False
            raise
        return True

    def _check_local(self) -> None:
        if self._token == 0 or self._pid != os.getpid():
            raise self._lost_error("this process never acquired it")
        if self._lost or time.monotonic() >= self._expires:
            self._lost = True
            raise self._lost_error("it expired")

    def _lost_error(self, why: str) -> LeaseLost:
        return LeaseLost(f"lease {self.name!r} (token {self._token}) is lost: {why}; do "
                         "not act on it, acquire it again", name=self.name,
                         token=self._token)

    # -- keepalive ------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, daemon=True,
                                        name=f"kvlease-keep-{self.name}")
        self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LeaseLost:
                return
            except Exception:  # noqa: BLE001 - unreachable: try again until the expiry
                if time.monotonic() >= self._expires:
                    self._lost = True
                    return

    def _stop_keepalive(self) -> None:
        self._stop.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(self.request_timeout + 1)
        self._keeper = None

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the lease if held, close the connection and the loop.  Idempotent."""
        if self._loop.loop.is_closed():
            return
        try:
            if self.held:
                self.release()
        except Exception:  # noqa: BLE001 - closing; the TTL frees the lease anyway
            pass
        self._stop_keepalive()
        if self._nc is not None:
            try:
                self._loop.run(self._nc.close(), self.request_timeout)
            except Exception:  # noqa: BLE001
                pass
        self._loop.close()

    def __enter__(self) -> "KVLease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        if self.held:
            try:
                self.release()
            except NotHeld:
                pass

    def __repr__(self) -> str:
        return (f"<KVLease {self.name!r} bucket={self.bucket!r} token={self._token} "
                f"{'held' if self.held else 'not held'}>")
