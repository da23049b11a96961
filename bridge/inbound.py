"""``Inbound``: relay a JetStream subject into a ring (``shmbus bridge in``).

::

    JetStream ==durable pull consumer, fetch==> Inbound --send_many--> [ ring ] --> consumers
        ^                                          |
        +------- ack (AckAll) after the write -----+

The bridge is the ring's producer.  It pulls from a durable JetStream pull consumer
(:mod:`shmbus.bridge.pull`: requests kept outstanding, messages taken in bulk),
writes what arrived into the ring with one ``send_many`` and acknowledges it (one
AckAll) only after its messages are in the ring: a crash, kill -9 included, loses
nothing.

**Decision:** the key of each message the bridge writes is the message's stream
sequence in decimal ASCII (``b"1234"``): the ring itself then says what it holds.  A
bridge that starts reads the ring's last message and, on every (re)connect, sets its
JetStream consumer to deliver from the next stream sequence, and it drops anything
delivered again at or below it; so nothing is written twice, whatever was or was not
acknowledged before a crash.  (The sender's ring key and seq travel in the headers
``Shmbus-Key`` / ``Shmbus-Seq``; they are not written into the ring.)  The JetStream
consumer (``durable``, default ``shmbus-{host}-{uid}-{namespace}-{ring}``) is deleted
and created again at each connect for that: the ring, not the server, is the cursor.  A
ring removed and created again empty is filled again from the start of the stream.

On a ``block`` ring a full ring holds the bridge back (and, past the consumer's ack
wait, JetStream redelivers; the redeliveries are dropped as above).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import shmbus
from shmbus import ring as ring_records
from shmbus.codecs import is_pickle
from shmbus.errors import RingNotFound, Timeout
from shmbus.layout import RECORD_HEADER

from .headers import consumer_name
from .pull import Puller
from .relay import Relay, ServerLost, log

if TYPE_CHECKING:
    from shmbus.choices import OnFull

_FETCH_WAIT = 0.25  # seconds a take waits for messages (how soon stop is noticed)
_SEND_WAIT = 0.25   # seconds a send waits for room in a full ring, between checks
_ACK_WAIT = 300.0   # seconds before JetStream redelivers an unacknowledged message


def stream_seq_token(reply: str) -> str:
    """The stream sequence (decimal) in a JetStream message's reply subject:
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``
    or, with a domain, ``$JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.
    <stream seq>...`` (what nats-py's ``msg.metadata`` parses, at a fraction of its
    cost: no datetime, no dataclass per message)."""
    tokens = reply.split(".")
    if len(tokens) in (9, 11, 12) and tokens[1] == "ACK":
        token = tokens[5] if len(tokens) == 9 else tokens[7]
        if token.isdigit():
            return token
    raise ValueError(f"not a JetStream message's reply subject: {reply!r}")


class Inbound(Relay):
    """Relay JetStream subject ``subject`` on ``server`` into ring ``ring``; see the
    module's docstring.  ``stream``: as for :class:`~shmbus.bridge.Outbound` (created
    if missing).  ``capacity`` (and ``on_full``): create the ring if it does not
    exist (without a capacity a missing ring is :class:`~shmbus.RingNotFound`).
    ``batch``: messages per pull request.  ``durable``: the JetStream consumer's name.

    ``accept_pickle``: let object frames of the pickle codec into the ring.  By
    default they are refused (acknowledged, counted in ``stats["refused"]``, logged,
    never written): whoever may publish on the subject (other hosts, other users of
    the NATS account) is not the ring's own user, and ``recv_obj`` unpickles what is
    in the ring, which runs code.  Every other message, object frames of the other
    codecs included, goes through.  Pass True only if you trust every publisher.

    ``run()``, ``start()``, ``stop()`` and the context manager as for ``Outbound``;
    ``stats``: written, skipped (delivered again, already in the ring), refused
    (pickles kept out), idle_fetches (fetches that found nothing), connects, failures,
    last_error.
    """

    direction = "in"

    def __init__(self, server: str | list[str], subject: str, ring: str, *,
                 stream: str | None = None, namespace: str | None = None,
                 durable: str | None = None, capacity: int | None = None,
                 on_full: OnFull = "block", batch: int = 1024,
                 accept_pickle: bool = False, **kwargs: Any) -> None:
        super().__init__(ring, server, subject, stream=stream, namespace=namespace,
                         **kwargs)
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        self.durable = durable or consumer_name(self.namespace, ring)
        self.capacity, self.on_full, self.batch = capacity, on_full, batch
        self.accept_pickle = accept_pickle
        self.stats.update(written=0, skipped=0, refused=0, idle_fetches=0)
        self.last = 0  # the stream sequence of the ring's last message (0: none)

    def _open_ring(self) -> shmbus.Producer:
        try:
            return shmbus.Producer(self.ring, create=False, namespace=self.namespace)
        except RingNotFound:
            if self.capacity is None:
                raise
        return shmbus.Producer(self.ring, capacity=self.capacity, on_full=self.on_full,
                               namespace=self.namespace)

    def _last_written(self, producer: shmbus.Producer) -> int:
        """The stream sequence in the key of the ring's last message (0 if the ring is
        empty; its producer is us, so it cannot change meanwhile)."""
        seg = producer._seg
        rec = ring_records.last_record(seg.words, seg.data, seg.capacity, name=self.ring)
        if rec is None:
            return 0
        start = (rec.pos & (seg.capacity - 1)) + RECORD_HEADER
        key = bytes(seg.data[start:start + rec.key_length])
        if not key.isdigit():
            log.warning("bridge in %s: the ring's last message (seq %d) has key %r, not a "
                        "stream sequence: relaying the whole stream", self.ring, rec.seq,
                        key[:40])
            return 0
        return int(key)

    async def _serve(self, end: float | None) -> None:
        producer = self._open_ring()
        try:
            self.last = self._last_written(producer)
            await self._over_connections(
                end, lambda nc, lost: self._relay(nc, producer, lost, end))
        finally:
            producer.close()

    async def _subscribe(self, js, stream: str) -> None:
        """(Re)create the pull consumer so that it delivers from the stream sequence
        after the ring's last message."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError
        try:
            await js.delete_consumer(stream, self.durable)
        except NotFoundError:
            pass
        start = dict(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                     opt_start_seq=self.last + 1) if self.last else {}
        await js.add_consumer(stream, ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.ALL, ack_wait=_ACK_WAIT,
            filter_subject=self.subject, max_ack_pending=max(4 * self.batch, 1000),
            **start))

    async def _relay(self, nc, producer: shmbus.Producer, lost: asyncio.Event,
                     end: float | None) -> None:
        js = nc.jetstream()
        stream = await self._ensure_stream(js)
        await self._subscribe(js, stream)
        puller = Puller(nc, stream, self.durable, self.batch)
        await puller.start()
        self.connected.set()
        self._backoff.reset()
        log.info("bridge in %s: relaying from %s subject %s (stream %s) after stream "
                 "sequence %d", self.ring, self.server, self.subject, stream, self.last)
        stats = self.stats
        while not self._expired(end):
            if lost.is_set():
                raise ServerLost(f"lost the connection to {self.server}")
            msgs = await puller.take(_FETCH_WAIT)
            if not msgs:
                stats["idle_fetches"] += 1
                continue
            last = self.last
            payloads, keys = [], []
            refused = 0
            for m in msgs:
                token = stream_seq_token(m.reply)
                sseq = int(token)
                if sseq > last:
                    last = sseq
                    if not self.accept_pickle and is_pickle(m.data):
                        refused += 1
                        continue
                    payloads.append(m.data)
                    keys.append(token.encode())
            if refused:
                self._refused(refused, last)
            stats["skipped"] += len(msgs) - len(payloads) - refused
            if payloads:
                written = stats["written"]
                if not await self._write(producer, payloads, keys):
                    return  # stopped while the ring was full: nothing acknowledged
                stats["written"] = written + len(payloads)
            self.last = last
            await msgs[-1].ack()  # AckAll: this one and every one before it

    def _refused(self, n: int, sseq: int) -> None:
        before = self.stats["refused"]
        self.stats["refused"] = before + n
        if before == 0 or (before + n) // 1000 > before // 1000:  # not once per message
            log.warning("bridge in %s: refused %d pickled object(s) from %s (up to stream "
                        "sequence %d): unpickling runs code, and anyone who may publish "
                        "on %s could have sent them; pass accept_pickle=True "
                        "(--accept-pickle) only if you trust every publisher",
                        self.ring, self.stats["refused"], self.subject, sseq, self.subject)

    async def _write(self, producer: shmbus.Producer, payloads: list, keys: list) -> bool:
        """Write the batch into the ring, waiting for room while not stopped (the
        loop serves the connection between waits); False if stopped first (what was
        written is in the ring, and the ring says so)."""
        while True:
            before = producer.seq
            try:
                producer.send_many(payloads, keys=keys, timeout=_SEND_WAIT)
                return True
            except Timeout:
                done = producer.seq - before  # published before the ring filled up
                if done:
                    self.last = int(keys[done - 1])
                    self.stats["written"] += done
                payloads, keys = payloads[done:], keys[done:]
                if self._stop.is_set():
                    return False
                await asyncio.sleep(0)
