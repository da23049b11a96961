"""``Relay``: what both directions of a bridge share: one live bridge per (ring,
direction) with standbys, the thread and asyncio loop, (re)connecting with backoff,
stopping, stats (published for ``shmbus inspect`` / ``top`` / ``metrics`` while it
runs: :mod:`shmbus.bridge.stats`).

nats-py is asyncio-based; a relay runs its own event loop in the thread that calls
:meth:`Relay.run` (or the thread :meth:`Relay.start` makes), and uses shmbus's blocking
API on the ring side with short timeouts, so the loop keeps serving the connection.

One live bridge per (ring, direction): a relay first takes the file lock
``{ring}@bridge-in``, or ``{ring}@bridge-out.{durable}`` (one per cursor: a ring may be
relayed to two places under two durable names), in the ring's namespace; a second
relay of the same ring, direction (and cursor) waits for it as a standby.  The kernel releases the lock the moment its
holder dies (kill -9 included), so a standby takes over at once, and resumes where the
dead one left the ring (its durable cursor, or the ring's last message).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shmbus import naming
from shmbus.errors import ShmbusError, Timeout
from shmbus.lock import FileLock

from . import stats

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("shmbus.bridge")

_STOP_LATENCY = 0.1  # seconds: how soon a running relay notices stop()


class ServerLost(Exception):
    """The connection to the server failed mid-relay (internal: the relay reconnects)."""


def _nats():
    try:
        import nats  # noqa: F401
    except ImportError as e:  # pragma: no cover - the extra is not installed
        raise ImportError("the shmbus bridge needs nats-py: pip install 'shmbus[nats]'") \
            from e
    return nats


class Backoff:
    """Waits between reconnection attempts: ``first`` seconds, doubling to ``most``."""

    def __init__(self, first: float = 0.1, most: float = 5.0) -> None:
        self.first, self.most = first, most
        self.next = first

    def step(self) -> float:
        now, self.next = self.next, min(self.next * 2, self.most)
        return now

    def reset(self) -> None:
        self.next = self.first


class Relay:
    """Base of :class:`~shmbus.bridge.Outbound` and :class:`~shmbus.bridge.Inbound`.

    Keyword arguments both take: ``connect_timeout`` (seconds per attempt to
    connect) and ``backoff`` (``(first, most)`` seconds between attempts, doubling).
    Events: ``standing_by`` (another relay of this ring and direction leads),
    ``leading``, ``connected``.
    """

    direction = ""

    def __init__(self, ring: str, server: str | list[str], subject: str, *,
                 stream: str | None, namespace: str | None,
                 connect_timeout: float = 2.0, backoff: tuple[float, float] = (0.1, 5.0),
                 _role: str = "") -> None:
        _nats()
        naming.check_name(ring)
        if not isinstance(subject, str) or any(c in subject for c in " \t\r\n*>") \
                or not all(subject.split(".")):
            raise ValueError(f"subject must be a literal NATS subject (no spaces, no "
                             f"wildcards), got {subject!r}")
        self.ring, self.subject, self.stream = ring, subject, stream
        self.server = server
        self.namespace = naming.resolve_namespace(namespace)
        self.connect_timeout = connect_timeout
        self._backoff = Backoff(*backoff)
        role = f"bridge-{self.direction}{_role}"
        self._published = stats.Publisher(self, role)
        self._lock = FileLock(naming.ring_lock_name(ring, role), namespace=self.namespace,
                              reentrant=False, _internal=True)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._finished.set()
        self._thread: threading.Thread | None = None
        self._runner: threading.Thread | None = None
        self.standing_by = threading.Event()  # found another relay leading
        self.leading = threading.Event()    # this relay holds the (ring, direction)
        self.connected = threading.Event()  # ... and is connected to the server
        self.error: BaseException | None = None  # what ended start()'s thread, if anything
        self.stats: dict[str, Any] = {"connects": 0, "failures": 0, "last_error": None}

    # -- lifetime ---------------------------------------------------------------------

    def run(self, duration: float | None = None) -> None:
        """Wait to lead (as a standby while another relay of this ring and direction
        runs), then relay until :meth:`stop` (or ``duration`` seconds).  Raises what
        the ring side raises (:class:`~shmbus.RingNotFound`, ...); server trouble is
        never raised: the relay says so (logging, ``stats``) and retries."""
        self._finished.clear()
        self._runner = threading.current_thread()
        end = None if duration is None else time.monotonic() + duration
        self._published.start()
        try:
            if self._lead_when_free(end):
                try:
                    asyncio.run(self._serve(end))
                finally:
                    self.leading.clear()
                    self.connected.clear()
                    self._lock.release()
        finally:
            self._published.stop()
            self._runner = None
            self._finished.set()

    def start(self) -> threading.Thread:
        """Run in a daemon thread of its own; returns it.  An error that ends the
        thread is kept in ``error`` (and raised by the ``with`` block's exit)."""
        def target() -> None:
            try:
                self.run()
            except BaseException as e:  # kept for the owner; the thread just ends
                self.error = e
                log.error("bridge %s %s: stopped by %r", self.direction, self.ring, e)
        self._thread = threading.Thread(target=target, daemon=True,
                                        name=f"bridge-{self.direction}-{self.ring}")
        self._finished.clear()  # a stop() right after start() waits for the thread
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> bool:
        """End :meth:`run` (from any thread, or a signal handler): unacknowledged work
        stays where it is safe (in the ring, or in the stream).  Waits up to
        ``timeout`` for that (not when called from the relay's own thread); returns
        whether it has ended.  It is final: a later ``run`` returns at once (make a
        new object to relay again)."""
        self._stop.set()
        if self._runner is threading.current_thread():
            return False
        return self._finished.wait(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        error, self.error = self.error, None
        if error is not None and exc_type is None:
            raise error  # what ended the thread, never lost in it

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- waiting to lead ----------------------------------------------------------------

    def _lead_when_free(self, end: float | None) -> bool:
        waited = False
        while not self._stop.is_set():
            if end is not None and time.monotonic() > end:
                return False
            try:
                self._lock.acquire(timeout=_STOP_LATENCY)
            except Timeout:
                if not waited:
                    waited = True
                    self.standing_by.set()
                    log.info("bridge %s %s: another bridge relays this ring; standing by",
                             self.direction, self.ring)
                continue
            self.leading.set()
            return True
        return False

    # -- the server -----------------------------------------------------------------------

    async def _connect(self, on_lost):
        """A new connection, or None after a failed attempt (logged, backed off).
        nats-py's own reconnection is off: a connection that drops is closed and
        replaced, so nothing published on the old one is sent later behind newer
        messages (the subject's order is the ring's)."""
        nats = _nats()

        async def quiet(e: Exception) -> None:
            log.debug("bridge %s %s: %r", self.direction, self.ring, e)

        async def lost() -> None:
            on_lost()

        nc = nats.aio.client.Client()
        try:
            await nc.connect(
                # (0 attempts would mean: retry forever inside connect; 1 tries each
                # server twice, then raises NoServersError.)
                self.server, allow_reconnect=False, max_reconnect_attempts=1,
                reconnect_time_wait=0,
                # The subject was checked once here; the reply subjects are ours:
                # no regular expressions per message.
                skip_subject_validation=True,
                connect_timeout=self.connect_timeout, error_cb=quiet,
                disconnected_cb=lost, closed_cb=lost,
                name=f"shmbus-bridge-{self.direction}-{self.namespace}-{self.ring}")
        except Exception as e:  # noqa: BLE001 - every failure to connect is retried
            # A connect that failed half-way (a server stopping as we connect) leaves
            # its socket open in nats-py: close it here.
            await self._close(nc)
            transport = getattr(nc, "_transport", None)
            if transport is not None:
                transport.close()
            await self._failed(f"cannot reach {self.server}", e)
            return None
        self.stats["connects"] += 1
        return nc

    async def _failed(self, what: str, e: BaseException | None) -> None:
        """Log a failure and wait the backoff (or until stopped)."""
        self.connected.clear()
        self.stats["failures"] += 1
        why = f" ({type(e).__name__}: {e})" if e is not None else ""
        self.stats["last_error"] = what + why
        wait = self._backoff.step()
        log.warning("bridge %s %s: %s%s; retrying in %.1f s", self.direction, self.ring,
                    what, why, wait)
        await self._pause(wait)

    async def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, _STOP_LATENCY))

    async def _ensure_stream(self, js) -> str:
        """The stream that stores the subject: the one named (created if missing),
        else the one that captures the subject, else a new one (see
        :func:`~shmbus.bridge.headers.stream_name`)."""
        from nats.js.errors import NotFoundError

        from .headers import stream_name
        name = self.stream
        if name is None:
            try:
                return await js.find_stream_name_by_subject(self.subject)
            except NotFoundError:
                name = stream_name(self.subject)
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(name=name, subjects=[self.subject])
            log.info("bridge %s %s: created stream %s for subject %s", self.direction,
                     self.ring, name, self.subject)
        return name

    async def _serve(self, end: float | None) -> None:
        raise NotImplementedError

    async def _over_connections(self, end: float | None, relay) -> None:
        """Connect, ``await relay(nc, lost)`` (``lost``: an event set when the
        connection drops), and again after every server failure (logged, backed
        off) until stopped.  A shmbus error (the ring side) ends it."""
        while not self._expired(end):
            lost = asyncio.Event()

            def on_lost(lost=lost) -> None:
                lost.set()
                self._connection_lost()

            nc = await self._connect(on_lost)
            if nc is None:
                continue
            try:
                await relay(nc, lost)
            except ServerLost as e:
                await self._failed(str(e), None)
            except ShmbusError:
                raise
            except Exception as e:  # noqa: BLE001 - nats-py's, asyncio's, OSError
                await self._failed(f"relaying with {self.server} failed", e)
            finally:
                await self._close(nc)

    def _connection_lost(self) -> None:
        """Called (in the loop) when the connection drops."""

    def _expired(self, end: float | None) -> bool:
        return self._stop.is_set() or (end is not None and time.monotonic() > end)

    async def _close(self, nc) -> None:
        if nc is None:
            return
        try:
            await asyncio.wait_for(nc.close(), timeout=self.connect_timeout)
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass
