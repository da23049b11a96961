"""``Outbound``: relay a ring to a JetStream subject (``shmbus bridge out``).

::

    producer --> [ ring ] --durable cursor--> Outbound ==publish, window==> JetStream
                     ^                            |
                     +------ release after ack ---+

The bridge reads the ring as a durable consumer (``durable``, default
``nats-bridge``) and publishes up to ``window`` messages before it waits for their
acknowledgements, all on one reply subscription.  It releases ring messages only once
JetStream has acknowledged them and every message before them: kill -9 of the bridge
or of the server, or a network outage, loses nothing; what was published but not yet
acknowledged is published again, and JetStream drops it as a duplicate
(``Nats-Msg-Id``: the ring's identity and seq, see :mod:`shmbus.bridge.headers`) if
it was stored within the stream's duplicate window.  Beyond the window, a bridge
that (re)connects reads the last message stored on its subject and skips the ring
messages up to it if it came from this ring.  The subject's order is the ring's
order: a connection that fails is closed and replaced, and the publishing starts
again at the first unacknowledged message.

While the server is unreachable the bridge retries with backoff (0.1 s doubling to
5 s) and says so (logger ``shmbus.bridge``, ``stats["last_error"]``).  Meanwhile its
durable cursor stays put: on a ``block`` ring it holds the producer back once the ring
is full (that is the promise: nothing acknowledged is lost); on an ``overwrite`` ring
the producer goes on and the bridge counts what it lost (``stats["lost"]``, logged).
"""

from __future__ import annotations

import asyncio

import shmbus
from shmbus import layout, naming
from shmbus.errors import Timeout

from .framing import headers_block, hpub, raw_sender
from .headers import MSG_ID, SEQ, key_header, msg_id, parse_msg_id, ring_identity
from .relay import Relay, ServerLost, log

_IDLE_WAIT = 0.05  # seconds a recv waits for the ring while nothing is in flight


class _Acks:
    """The replies to one window of publishes on one reply subscription: counted, and
    checked only for an error (no JSON parsing per acknowledgement)."""

    def __init__(self, cut: int) -> None:
        self.cut = cut  # length of the reply prefix; the rest is the message's index
        self.done = asyncio.Event()
        self.lost = False
        self.reset(0)

    def reset(self, n: int) -> None:
        self.status = bytearray(n)  # 0 waiting, 1 stored (or a duplicate), 2 refused
        self.count, self.n = 0, n
        self.error: str | None = None
        self.done.clear()

    async def on_reply(self, msg) -> None:
        i = int(msg.subject[self.cut:])
        data = msg.data
        if i >= self.n or self.status[i]:
            return  # not of this window (cannot happen on a fresh connection)
        # '"error":' is the key of an error reply: a stream named "error" shows as
        # '"error"' followed by ',' or '}', and a quote inside a name is escaped.
        if data and b'"error":' not in data:
            self.status[i] = 1
        else:
            self.status[i] = 2
            if self.error is None:
                hdr = msg.headers or {}
                self.error = (data.decode("utf-8", "replace") if data else
                              f"status {hdr.get('Status')} {hdr.get('Description', '')}"
                              .strip())
        self.count += 1
        if self.count >= self.n:
            self.done.set()

    def on_lost(self) -> None:
        self.lost = True
        self.done.set()

    def stored(self) -> int:
        """How many of the window, from its start, are stored."""
        bad = [i for i in (self.status.find(0), self.status.find(2)) if i >= 0]
        return min(bad) if bad else self.n


class Outbound(Relay):
    """Relay ring ``ring`` to JetStream subject ``subject`` on ``server`` (a URL or a
    list of URLs), see the module's docstring.  ``stream``: the stream to store in
    (created if missing); None: the stream that captures the subject, else a new
    ``shmbus-{subject}``.  ``namespace``: the ring's.  ``durable``: the bridge's
    durable cursor in the ring.  ``window``: publishes in flight at most, and
    ``window_bytes``: their payload bytes at most (beyond one message).
    ``ack_timeout``: seconds to wait for a window's acknowledgements before the
    connection is given up and replaced.

    ``run()`` blocks (as a standby while another bridge relays this ring out with
    the same ``durable``),
    ``start()`` runs it in a thread, ``stop()`` ends it; a context manager starts and
    stops it.  ``stats``: published, acked, skipped (already in the stream), lost
    (overwrite rings), connects, failures, last_error.  Raises
    :class:`~shmbus.RingNotFound` if the ring does not exist (from ``run``).
    """

    direction = "out"

    def __init__(self, ring: str, server: str | list[str], subject: str, *,
                 stream: str | None = None, namespace: str | None = None,
                 durable: str = "nats-bridge", window: int = 1024,
                 window_bytes: int = 8 << 20, ack_timeout: float = 5.0,
                 **kwargs) -> None:
        naming.check_name(durable, "durable name")
        super().__init__(ring, server, subject, stream=stream, namespace=namespace,
                         _role="." + durable, **kwargs)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.durable, self.window, self.ack_timeout = durable, window, ack_timeout
        self.window_bytes = window_bytes
        self.stats.update(published=0, acked=0, skipped=0, lost=0)
        self._pending: list[shmbus.Message] = []  # read from the ring, not acknowledged
        self._acks: _Acks | None = None  # the current connection's

    async def _serve(self, end: float | None) -> None:
        consumer = shmbus.Consumer(self.ring, durable=self.durable, start="earliest",
                                   namespace=self.namespace)
        try:
            # The ring this consumer reads, never whatever has its name by now.
            created = layout.read_header(consumer._seg.buf)["created_at_ns"]
            identity = ring_identity(self.namespace, self.ring, created)
            await self._over_connections(
                end, lambda nc, lost: self._relay(nc, consumer, identity, end))
        finally:
            # What was not acknowledged stays unreleased: the next bridge sends it.
            consumer.close(release=False)
            self._pending = []

    def _connection_lost(self) -> None:
        if self._acks is not None:
            self._acks.on_lost()

    async def _relay(self, nc, consumer: shmbus.Consumer, identity: str,
                     end: float | None) -> None:
        js = nc.jetstream()
        stream = await self._ensure_stream(js)
        stored = await self._last_stored(js, stream, identity)
        inbox = nc.new_inbox() + "."
        self._acks = acks = _Acks(len(inbox))
        if not nc.is_connected:  # dropped before the acks existed to hear it
            raise ServerLost(f"lost the connection to {self.server}")
        await nc.subscribe(inbox + "*", cb=acks.on_reply)
        await nc.flush()
        self.connected.set()
        self._backoff.reset()
        log.info("bridge out %s: relaying to %s subject %s (stream %s)", self.ring,
                 self.server, self.subject, stream)
        while not self._expired(end):
            if acks.lost:
                raise ServerLost(f"lost the connection to {self.server}")
            if not self._pending:
                self._pending = self._read(consumer)
                if not self._pending:
                    await asyncio.sleep(0)  # let the client serve the connection
                    continue
            window = self._skip_stored(stored)
            if window:
                await self._send(nc, window, identity, inbox, acks)

    def _skip_stored(self, stored: int) -> list[shmbus.Message]:
        """The pending messages after ring seq ``stored`` (already in the stream);
        releases the pending messages if that is all of them."""
        pending = self._pending
        if pending[0].seq > stored:
            return pending
        skip = 1
        while skip < len(pending) and pending[skip].seq <= stored:
            skip += 1
        self.stats["skipped"] += skip
        if skip == len(pending):
            pending[-1].release()
            self._pending = []
        return pending[skip:]

    async def _send(self, nc, window: list[shmbus.Message], identity: str, inbox: str,
                    acks: _Acks) -> None:
        """Publish ``window`` (all in flight at once), wait for the acknowledgements,
        release what is stored; raise :class:`ServerLost` if not all of it is."""
        rest = self._cut(window, nc.max_payload)
        if rest:
            window = window[:len(window) - len(rest)]
        acks.reset(len(window))
        raw = raw_sender(nc)
        if raw is not None:  # see shmbus.bridge.framing
            subject, ident, prefix = self.subject.encode(), identity.encode(), inbox.encode()
            pieces: list = []
            for i, m in enumerate(window):
                pieces += hpub(subject, b"%s%d" % (prefix, i),
                               headers_block(ident, m.seq, m.key), m.data)
            await raw(pieces)
        else:
            for i, m in enumerate(window):
                seq = m.seq
                headers = {MSG_ID: msg_id(identity, seq), SEQ: str(seq)}
                if m.key is not None:
                    name, value = key_header(m.key)
                    headers[name] = value
                await nc.publish(self.subject, m.data, reply=f"{inbox}{i}",
                                 headers=headers)
        self.stats["published"] += len(window)
        try:
            await asyncio.wait_for(acks.done.wait(), self.ack_timeout)
        except asyncio.TimeoutError:
            pass
        ok = acks.stored()
        if ok:
            window[ok - 1].release()  # and every message before it
            self.stats["acked"] += ok
        self._pending = window[ok:] + rest
        if ok < len(window):
            why = ("lost the connection" if acks.lost else
                   f"JetStream refused seq {window[ok].seq}: {acks.error}"
                   if acks.error else f"no acknowledgement within {self.ack_timeout} s")
            raise ServerLost(f"{why}; {len(window) - ok} message(s) to send again")

    def _cut(self, window: list[shmbus.Message], max_payload: int
             ) -> list[shmbus.Message]:
        """The messages of ``window`` that wait for the next window (none: []): from
        the one that would take the window past ``window_bytes`` (never the first),
        or from the first one the server cannot take.  Raises
        :class:`~shmbus.MessageTooLarge` if that is the first of the window: a message
        the server can never take stops the bridge once the messages before it are
        relayed (a retry would spin on it forever, and every message after it waits
        behind it)."""
        budget = self.window_bytes
        for i, m in enumerate(window):
            size = len(m.data)
            budget -= size
            if i and budget < 0:
                return window[i:]
            if size > max_payload:
                if i:
                    return window[i:]
                raise shmbus.MessageTooLarge(
                    f"ring {self.ring!r} message seq {m.seq} has {len(m.data)} bytes; the "
                    f"NATS server {self.server} takes at most {max_payload} "
                    "(max_payload): raise the server's max_payload, or remove the "
                    "message from the ring's bridge cursor", name=self.ring, seq=m.seq,
                    size=len(m.data), limit=max_payload)
        return []

    def _read(self, consumer: shmbus.Consumer) -> list[shmbus.Message]:
        """The next messages of the ring (none after a short wait): nothing is in
        flight, so blocking the loop briefly costs nothing."""
        try:
            batch = consumer.recv_many(self.window, timeout=_IDLE_WAIT)
        except Timeout:
            return []
        if consumer.lost != self.stats["lost"]:
            log.warning("bridge out %s: the producer overwrote %d message(s) the bridge "
                        "had not relayed (an overwrite ring)", self.ring,
                        consumer.lost - self.stats["lost"])
            self.stats["lost"] = consumer.lost
        return batch

    async def _last_stored(self, js, stream: str, identity: str) -> int:
        """The seq of this ring's last message stored on the subject, or -1 (another
        ring's, or nothing stored)."""
        from nats.js.errors import NotFoundError
        try:
            raw = await js.get_last_msg(stream, self.subject)
        except NotFoundError:
            return -1
        found = parse_msg_id((raw.headers or {}).get(MSG_ID))
        if found is None or found[0] != identity:
            return -1
        return found[1]
