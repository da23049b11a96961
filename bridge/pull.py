"""``Puller``: a JetStream pull consumer that keeps pull requests outstanding and takes
what arrives in bulk.

nats-py's ``fetch()`` waits for each message with a timer and a task of its own and
asks again only when a batch is complete: measured here at ~45 k msg/s for 64-byte
messages.  A puller instead subscribes once to an inbox, sends pull requests
(``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``, ``batch`` messages, expiring
after ``expires`` seconds) so that about two batches are always requested, and hands
out everything that arrived since the last call (measured ~220 k msg/s on the same
machine).  The consumer delivers in stream order across requests; status messages
(no reply subject) end requests (408: expired, with the count it did not deliver),
or report trouble (409 and others: :class:`~shmbus.bridge.relay.ServerLost`, and the
bridge reconnects).
"""

from __future__ import annotations

import asyncio
import json
import time

from .relay import ServerLost

_HEARTBEAT = "100"   # idle heartbeat / flow control: nothing to do
_EXPIRED = "408"     # the request expired; Nats-Pending-Messages it did not deliver
_NO_MESSAGES = "404"


class Puller:
    """Pull requests for consumer ``consumer`` of ``stream`` over connection ``nc``;
    call :meth:`start` once, then :meth:`take`."""

    def __init__(self, nc, stream: str, consumer: str, batch: int,
                 expires: float = 5.0) -> None:
        self.nc, self.batch, self.expires = nc, batch, expires
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.request = json.dumps({"batch": batch,
                                   "expires": int(expires * 1e9)}).encode()
        self.inbox = nc.new_inbox()
        self._box: list = []
        self._trouble: str | None = None
        self._arrived = asyncio.Event()
        self.outstanding = 0     # messages requested, neither delivered nor expired
        self._asked_at = 0.0

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox, cb=self._on_msg)

    async def _on_msg(self, msg) -> None:
        if msg.reply:  # a message of the stream ($JS.ACK... reply subject)
            self._box.append(msg)
        else:
            headers = msg.headers or {}
            status = headers.get("Status", "")
            if status == _EXPIRED:
                self.outstanding -= int(headers.get("Nats-Pending-Messages", 0) or 0)
            elif status not in (_HEARTBEAT, _NO_MESSAGES):
                self._trouble = f"JetStream status {status} {headers.get('Description', '')}"
        self._arrived.set()

    async def take(self, wait: float) -> list:
        """What arrived since the last call, waiting up to ``wait`` seconds for
        something (``[]`` if nothing); asks for more first when fewer than a batch
        are outstanding.  Raises :class:`ServerLost` on a status that is trouble."""
        now = time.monotonic()
        if self.outstanding >= self.batch and now - self._asked_at > 2 * self.expires:
            self.outstanding = 0  # a request's end went missing: do not stall on it
        if self.outstanding < self.batch:
            await self.nc.publish(self.next_subject, self.request, reply=self.inbox)
            self.outstanding += self.batch
            self._asked_at = now
        if not self._box and self._trouble is None:
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except asyncio.TimeoutError:
                pass
        self._arrived.clear()
        if self._trouble is not None:
            raise ServerLost(self._trouble)
        msgs, self._box = self._box, []
        self.outstanding -= len(msgs)
        return msgs
