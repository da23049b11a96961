"""``Balancer``: turns input rings into a work queue over the group's workers.

The leader (one per group, by ``shmbus.Lease``; others wait as standbys and take over
within about one lease ttl of its death) reads each input ring as the durable consumer
``balancer.GROUP`` and writes every message into exactly one worker's ring, chosen by
the policy among workers that are live and hold fewer than ``prefetch`` unacknowledged
messages.  A worker acknowledges by releasing (advancing its read position).

At-least-once: input messages are released only after they are in a worker ring.  When
a worker leaves or dies, what it had not acknowledged is read back from its ring and
dispatched again (for consistent hashing, to the key's new owner, before any newer
message for that key), counted as redelivered.  A message the worker had received (see
:mod:`shmbus.balancer.worker`) counts one delivery more; one it had not received yet keeps
its count.  A message delivered ``max_deliveries`` times goes to the group's
dead-letter ring ``GROUP.dlq`` instead.  Duplicates happen only for messages in flight
at a crash.  A message no worker can take waits in its input ring (back-pressure), not
in the balancer's memory.  Membership and redelivery: :mod:`shmbus.balancer.roster`.

Round-robin splits what it reads from an input (up to 512 messages at a time) into one
share per worker, in turn, as equal as their room allows, skipping workers that are
full (``prefetch`` unacknowledged messages, or a full ring) or dead.  Consistent
hashing never reroutes a key while its owner lives: a message whose owner is busy
waits (as does all dispatching while a live worker's ring is still held by a previous
leader), and a key that moves to a joining worker waits until the worker holding older
messages of it has acknowledged them (:mod:`shmbus.balancer.handoff`), so per-key order
holds; with ``load_factor`` (bounded loads) a key may go to the next worker when its
owner is over the bound, which trades per-key order for balance.

Messages are forwarded as raw records (:mod:`shmbus.forward`): one copy per stretch of
records bound for the same worker, no ``Message`` per message, and each keeps its
producer's ``timestamp_ns``; consistent hashing routes a run of records to their keys'
owners in one call (:mod:`shmbus.balancer.routing`; in C with the compiled hot path).
Bounded loads, custom policies, redeliveries and input records that need checked reads
go through ``recv_many``/``send_many`` instead.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from itertools import groupby
from operator import itemgetter
from typing import Any, Literal, Protocol, cast

import shmbus
from shmbus import layout, naming
from shmbus.forward import Run, forward, give_back, run_message, take_run
from shmbus.errors import DurableBusy, LeaseLost, RingNotFound, ShmbusError, Timeout
from shmbus.segment import Segment

from . import membership, stats
from .stats import BalancerStats
from .handoff import Handoffs
from .roster import Roster, _Member
from .routing import Router, router
from .policies import ConsistentHash, Policy, RoundRobin, policy as make_policy

__all__ = ["Balancer"]

# Seconds a running balancer may go without looking at stop(): bounds every wait.
_STOP_LATENCY = 0.05
# Seconds between attempts to publish stats after one failed.
_STATS_RETRY = 1.0

_log = logging.getLogger(__name__)


class LeaderLease(Protocol):
    """What the balancer needs of the lease that elects its group's leader."""

    @property
    def held(self) -> bool: ...
    @property
    def token(self) -> int: ...
    def acquire(self, timeout: float | None = None) -> Any: ...
    def check(self) -> None: ...
    def release(self) -> None: ...


class Balancer(Roster):
    """The balancer of ``group`` over ``inputs`` (ring names).

    ``policy``: ``"round-robin"`` or ``"consistent-hash"`` (or a
    :class:`balancer.policies.Policy`); ``prefetch``: unacknowledged messages a worker
    may hold; ``max_deliveries``: deliveries before a message goes to ``GROUP.dlq``;
    ``lease_ttl``: seconds a dead or hung leader blocks its standby.  ``run()`` blocks
    (as standby until it leads); ``start()`` runs it in a thread; ``stop()`` ends it.

    ``lease``: the lease that elects the group's leader, for leaders elected across
    hosts (a :class:`shmbus.bridge.KVLease` on NATS KV, created with ``keepalive=True``
    and a ttl of at least 15 s: a NATS stream leader's failover takes 5-6 s); anything
    with :class:`shmbus.Lease`'s ``acquire``, ``check``, ``release``, ``held`` and
    ``token``.  Default: a :class:`shmbus.Lease` of this host named after the group
    (``lease_ttl``).  A lease only elects: each balancer reads the input rings of its
    own host, so with a lease across hosts exactly one host's balancer dispatches (the
    others stand by), and its inputs are that host's rings.

    **Decision: a context manager starts and stops it.**  ``with Balancer(...) as b:``
    runs it in a background thread (as :meth:`start`, unless it was started already)
    and on exit stops it (:meth:`stop`) and raises what ended the thread, if anything
    did.  ``run()`` and ``start()`` raise :class:`shmbus.RingNotFound` in the caller
    when an input ring does not exist (create it first: a ``Producer`` with a
    ``capacity``); an error that ends the background thread later (an input removed
    while it runs, say) is logged and raised again, once, by the next :meth:`stop`,
    :meth:`join` or exit of the ``with`` block, so it is never lost in a thread.
    """

    def __init__(self, group: str, inputs: list[str], *,
                 policy: Literal["round-robin", "consistent-hash"] | Policy = "round-robin",
                 namespace: str | None = None, prefetch: int = 1000,
                 max_deliveries: int = 5, lease_ttl: float = 2.0,
                 dead_letter_capacity: int = 1 << 20, poll: float = 0.02,
                 lease: LeaderLease | None = None) -> None:
        membership.check_group(group)
        if not inputs:
            raise ValueError("a balancer needs at least one input ring")
        for name in inputs:
            naming.check_name(name, "input ring name")
        if prefetch < 1 or max_deliveries < 1:
            raise ValueError("prefetch and max_deliveries must be >= 1")
        self.group, self.inputs = group, list(inputs)
        self.namespace = naming.resolve_namespace(namespace)
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.prefetch, self.max_deliveries, self.poll = prefetch, max_deliveries, poll
        self.dead_letter_capacity = dead_letter_capacity
        self.lease: LeaderLease = lease if lease is not None else shmbus.Lease(
            membership.leader_lease(group), ttl=lease_ttl, namespace=self.namespace,
            on_stale="kill", keepalive=True)
        self.members: dict[str, _Member] = {}
        self.counters = {"dispatched": 0, "redelivered": 0, "dead_lettered": 0}
        self._stop = threading.Event()
        self._finished = threading.Event()  # set while run() is not running
        self._finished.set()
        self._runner: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # what ended the background thread
        self._consumers: list[shmbus.Consumer] = []
        self._pending: collections.deque = collections.deque()
        self._gone: dict[str, str] = {}  # gone workers whose leftovers wait: name -> ring
        self._dlq: shmbus.Producer | None = None
        # Raw forwarding serves these policies; others (bounded loads, custom) get
        # messages.  Key -> owner is cached while membership holds.
        self._hashing = isinstance(self.policy, ConsistentHash) and not self.policy.load_factor
        self._forwarding = isinstance(self.policy, RoundRobin) or self._hashing
        self._handoffs = Handoffs()  # keys whose older messages another worker holds
        self._owners: dict[bytes | None, str] = {}
        self._router: Router | None = None  # routes runs by key (consistent hashing)
        self._unjoined: set[str] = set()  # registered workers whose ring is still busy
        self.leading = threading.Event()
        # Why the last attempt to publish (or remove) our stats failed, None if it
        # worked: a planted entry must never stop the balancer (see _publish_stats).
        self.stats_error: str | None = None
        self._stats_retry_at = 0.0

    # -- lifetime ---------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Run the balancer in a background (daemon) thread and return the thread.
        Raises :class:`shmbus.RingNotFound` here if an input ring does not exist, and
        RuntimeError if it was started already."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"balancer of group {self.group!r} is already started")
        self._check_inputs()
        self._error = None
        self._finished.clear()  # so that a join() right after this waits for the thread
        self._thread = threading.Thread(target=self._run_in_thread,
                                        name=f"balancer-{self.group}", daemon=True)
        self._thread.start()
        return self._thread

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as e:  # kept for stop()/join(): never lost in the thread
            self._error = e
            _log.error("balancer of group %r stopped: %s: %s (stop() or join() raises "
                       "it)", self.group, type(e).__name__, e)

    def _check_inputs(self) -> None:
        """Raise :class:`shmbus.RingNotFound` unless every input ring exists."""
        for name in self.inputs:
            try:
                Segment.open(self.namespace, name).close()
            except RingNotFound as e:
                raise RingNotFound(
                    f"input ring {name!r} of balancer group {self.group!r} does not exist "
                    f"(namespace {self.namespace!r}): create it first (a Producer with a "
                    "capacity, or `shmbus send NAME --capacity SIZE`), then start the "
                    "balancer", name=name) from e

    def stop(self, timeout: float = 10.0) -> bool:
        """End :meth:`run` (from any thread, or a signal handler): a running balancer
        notices within about ``_STOP_LATENCY`` seconds whatever it was doing, lets go of
        what it holds (inputs, worker rings, the lease) and returns.  Waits up to
        ``timeout`` seconds for that (not when called from the thread running it);
        returns whether ``run`` has ended.  A later ``run`` returns at once.  Raises
        what ended the background thread of :meth:`start`, if anything did (once)."""
        self._stop.set()
        if self._runner is threading.current_thread():
            return False
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: forever) for :meth:`run` to end (it
        ends by :meth:`stop`, ``duration`` or an error); return whether it has.  Raises
        what ended the background thread of :meth:`start`, if anything did (once: a
        later ``join`` or ``stop`` returns normally)."""
        ended = self._finished.wait(timeout)
        if ended and self._thread is not None:
            self._thread.join(timeout)  # _error is set before the thread ends
        error, self._error = self._error, None
        if error is not None:
            raise error
        return ended

    def __enter__(self) -> "Balancer":
        if self._thread is None or not self._thread.is_alive():
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
            return
        try:  # an error in the block goes first; the thread's was logged
            self.stop()
        except BaseException as error:
            if exc.__context__ is None:
                exc.__context__ = error

    def run(self, duration: float | None = None) -> None:
        """Wait to lead, then dispatch until :meth:`stop` (or ``duration`` seconds).
        A leader that loses its lease (it was paused past its ttl) stops dispatching at
        once and goes back to waiting as a standby.  Raises
        :class:`shmbus.RingNotFound` at once if an input ring does not exist."""
        self._check_inputs()
        self._finished.clear()
        self._runner = threading.current_thread()
        try:
            self._run(duration)
        finally:
            self._runner = None
            self._finished.set()

    def _run(self, duration: float | None) -> None:
        end = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set():
            if end is not None and time.monotonic() > end:
                return
            try:
                self.lease.acquire(timeout=min(self.poll * 5, _STOP_LATENCY))
            except Timeout:
                continue
            try:
                self._lead(end)
            except LeaseLost:
                continue  # someone else leads now: be a standby again
            except DurableBusy:
                # The previous leader is still letting go of an input (it lost the
                # lease a moment ago): step down and try again shortly.
                self._stop.wait(self.poll)
                continue
            finally:
                self._close()

    def _lead(self, end: float | None) -> None:
        self._begin()
        next_refresh = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if end is not None and now > end:
                return
            if now >= next_refresh:
                self.lease.check()  # LeaseLost ends the leadership
                self._refresh_members()
                self._publish_stats()
                next_refresh = now + self.poll
            if not self._pump():
                self._idle(next_refresh)

    def _begin(self) -> None:
        """Start leading (the lease is ours): open the inputs."""
        self.leading.set()
        self._consumers = [shmbus.Consumer(r, durable=membership.input_durable(self.group),
                                           start="earliest", namespace=self.namespace)
                           for r in self.inputs]

    def _close(self) -> None:
        self.leading.clear()
        for c in self._consumers:  # what was dispatched is acknowledged, what waits is not
            c.close(release=not any(m._consumer is c for m in self._pending))
        self._consumers = []
        self._pending.clear()
        self._gone.clear()
        self._unjoined.clear()
        self._handoffs.clear()
        for m in self.members.values():
            m.producer.close()
        self.members.clear()
        if self._dlq is not None:
            self._dlq.close()
            self._dlq = None
        self._unpublish_stats()
        if self.lease.held:
            try:
                self.lease.release()
            except ShmbusError:
                pass

    # -- dispatching ------------------------------------------------------------------

    def _pump(self) -> bool:
        """Move what is available from the inputs to workers; False if nothing moved.
        Input messages are zero-copy views until the next ``recv_many`` releases them,
        which happens only once every one of them sits in a worker ring."""
        if self._unjoined and isinstance(self.policy, ConsistentHash):
            # A live worker not yet joined owns keys: sending them elsewhere now would
            # overtake what it still holds (per-key order).  Wait for the next round.
            return False
        if self._handoffs.held:
            self._handoffs.settle(self.members)
        if self._gone:
            before = self.counters["redelivered"] + self.counters["dead_lettered"]
            if not self._drain_gone():
                return self.counters["redelivered"] + self.counters["dead_lettered"] > before
        if self._pending:
            before = len(self._pending)
            self._pending = collections.deque(self._place(list(self._pending)))
            if self._pending:
                return len(self._pending) < before
        moved = False
        for consumer in self._consumers:
            if not self.members:
                break
            if self._forwarding:
                forwarded = self._forward_run(consumer)
                if forwarded is not None:  # else: records that need checked reads
                    moved = moved or forwarded
                    if self._pending:
                        return True
                    continue
            try:
                batch = consumer.recv_many(256, timeout=0)  # releases the previous batch
            except Timeout:
                continue
            moved = True
            unplaced = self._place(batch)
            if unplaced:
                self._pending.extend(unplaced)  # retried before any newer message
                return True
        return moved

    def _forward_run(self, consumer: shmbus.Consumer) -> bool | None:
        """Forward a run of input records to workers as raw records (no ``Message``
        per message; see :mod:`shmbus.forward`); True if any moved, None if this input
        needs the message path now.  What no worker can take now is left in the input
        (or, if a worker ring filled up behind others that took later records, kept
        in ``_pending``), so per-key order holds as in :meth:`_place`."""
        router = None
        if self._hashing:
            router = self._key_router()
            if router is None:  # no worker on the ring yet
                return None
        run = take_run(consumer, 512, keys=router is not None and router.needs_keys)
        if not run:
            return run
        count = len(run.bounds) - 1
        room = {n: self.prefetch - m.in_flight() for n, m in self.members.items()}
        picks: dict[str, range | list[int]]
        if router is not None:
            picks, placed = self._hash_picks(run, router, room)
        else:
            picks, placed = {}, 0
            for name, n in self.policy.share(count, room):
                picks[name] = range(placed, placed + n)
                placed += n
        refused: list[int] = []
        for name, indexes in picks.items():
            member = self.members[name]
            sent = forward(member.producer, run, indexes)
            member.dispatched += sent
            self.counters["dispatched"] += sent
            refused += indexes[sent:]
        if refused:  # later records went elsewhere: the refused ones wait as messages
            self._pending.extend(run_message(consumer, run, i)
                                 for i in sorted(refused) + list(range(placed, count)))
        elif placed < count:
            give_back(consumer, run, placed)  # read again next time
        return placed > len(refused)

    def _key_router(self) -> Router | None:
        """The router of the policy's current ring (a new one after a membership
        change): compiled, when the compiled hot path runs; None while the ring is
        empty."""
        r = self._router
        if r is None or not r.current(self.policy):
            r = self._router = router(self.policy)
        return r

    def _hash_picks(self, run: Run, router: Router,
                    room: dict[str, int]) -> tuple[dict, int]:
        """Which records (by index) go to which owner, and how many lead the run up
        to the first whose owner has no room or whose key is in handoff (that one and
        all after it wait)."""
        owners, lists = router.route(run)
        names = router.names
        held = self._handoffs.held
        if not held and all(room[names[w]] >= len(idx)
                            for w, idx in enumerate(lists) if idx):
            return {names[w]: idx for w, idx in enumerate(lists) if idx}, len(owners)
        blocks = self._handoffs.blocks
        picks: dict[str, list[int]] = {}
        for i, w in enumerate(owners):
            name = names[w]
            if room[name] <= 0 or (held and blocks(run.key(i), name)):
                return picks, i
            room[name] -= 1
            picks.setdefault(name, []).append(i)
        return picks, len(owners)

    def _idle(self, until: float) -> None:
        """Nothing to move: wait for input (one input: sleep on it), briefly."""
        timeout = max(0.0, min(until - time.monotonic(), self.poll, _STOP_LATENCY))
        if len(self._consumers) == 1 and self.members and not self._pending:
            try:
                batch = self._consumers[0].recv_many(256, timeout=timeout)
            except Timeout:
                return
            self._pending.extend(batch)
        else:
            self._stop.wait(min(timeout, 0.001))

    def _place(self, msgs: list, delivered: list[int] | None = None) -> list:
        """Dispatch ``msgs`` in order, one ``send_many`` per worker; return those that
        found no place (from the first that could not be placed on, so that order
        holds), to be tried again before anything newer.  ``delivered``: for messages
        dispatched again, how many times each was delivered so far."""
        hashing = self._hashing
        held, blocks = self._handoffs.held, self._handoffs.blocks
        room = {n: self.prefetch - m.in_flight() for n, m in self.members.items()}
        loads = ({n: self.prefetch - r for n, r in room.items()}
                 if isinstance(self.policy, ConsistentHash) and self.policy.load_factor
                 else None)
        skip = room.__getitem__  # used as "no room left" below
        buckets: dict[str, list] = {}
        unplaced: list = []
        for i, msg in enumerate(msgs):
            deliveries = delivered[i] if delivered is not None else 0
            if deliveries >= self.max_deliveries:
                self._dead_letter(msg.data, msg.key, deliveries)
                continue
            if hashing:
                # A key stays with its owner: when the owner is busy, or another worker
                # still holds older messages of the key, the message waits (rerouting
                # it, or sending it on, would break the key's order).
                name = self.policy.pick(msg.key)
                if name is not None and (room[name] <= 0 or
                                         (held and blocks(msg.key, name))):
                    name = None
            else:
                name = self.policy.pick(msg.key, loads=loads,
                                        skip=lambda w: skip(w) <= 0)
            if name is None:
                unplaced = msgs[i:]
                break
            room[name] -= 1
            if loads is not None:
                loads[name] += 1
            buckets.setdefault(name, []).append((msg, deliveries))
        leftovers = []
        for name, items in buckets.items():
            leftovers += self._send_bucket(self.members[name], items, delivered is not None)
        if leftovers:  # a worker ring was full: those wait, in their original order
            order = {id(m): k for k, m in enumerate(msgs)}
            unplaced = sorted(leftovers + unplaced, key=lambda m: order[id(m)])
        return unplaced

    def _send_bucket(self, member: _Member, items: list, again: bool) -> list:
        """Send ``items`` (message, deliveries so far) to one worker (``again``: they
        come from a worker that left); return the messages its full ring refused."""
        shift = layout.REC_REDELIVERY_SHIFT
        producer = member.producer
        sent = 0
        # One send_many per run of equal delivery counts, in order (normally one run).
        for flags, run in groupby(items, key=itemgetter(1)):
            group = [m for m, _ in run]
            first = producer.seq
            try:
                producer._send_many([m.data for m in group], [m.key for m in group],
                                    0, flags << shift, [m.timestamp_ns for m in group])
            except Timeout:
                done = producer.seq - first
                self._count(member, done, again)
                return [m for m, _ in items][sent + done:]
            self._count(member, len(group), again)
            sent += len(group)
        return []

    def _count(self, member: _Member, n: int, again: bool) -> None:
        if not n:
            return
        member.dispatched += n
        self.counters["dispatched"] += n
        if again:
            self.counters["redelivered"] += n

    def _dead_letter(self, data, key, deliveries: int) -> None:
        if self._dlq is None:
            self._dlq = shmbus.Producer(membership.dead_letter_ring(self.group),
                                        capacity=self.dead_letter_capacity,
                                        namespace=self.namespace, on_full="overwrite")
        self._dlq._send_many([data], [key], None,
                             deliveries << layout.REC_REDELIVERY_SHIFT)
        self.counters["dead_lettered"] += 1

    # -- stats --------------------------------------------------------------------------

    def stats(self) -> BalancerStats:
        workers = {n: {"in_flight": m.in_flight(), "dispatched": m.dispatched}
                   for n, m in self.members.items()}
        inputs = {c.name: c.lag for c in self._consumers}
        return cast("BalancerStats", {
                "group": self.group, "policy": self.policy.name, "leader_pid": os.getpid(),
                "lease_token": self.lease.token, **self.counters, "workers": workers,
                "input_lag_bytes": inputs, "pending": len(self._pending),
                "waiting_for_workers": sorted(self._unjoined),
                "keys_in_handoff": len(self._handoffs.held)})

    def _publish_stats(self) -> None:
        """Publish :meth:`stats` for ``shmbus inspect``/``top``.  Never stops the
        balancer: in a namespace shared with a group, a member can put a directory
        where the stats file goes (or make the file unwritable otherwise); then
        ``stats_error`` says why, it is logged once, dispatching goes on, and
        publishing is tried again a second later (``stats_error`` is None again once it
        works)."""
        now = time.monotonic()
        if now < self._stats_retry_at:
            return
        try:
            stats.write(self.namespace, self.group, self.stats())
        except (OSError, ShmbusError) as e:
            self._stats_failed("published", e)
            self._stats_retry_at = now + _STATS_RETRY
        else:
            self.stats_error = None

    def _unpublish_stats(self) -> None:
        """Remove our stats file when we stop leading; never raises for what is there
        instead (a member's directory, a FIFO...): the tools report it as not ours."""
        try:
            stats.remove(self.namespace, self.group)
        except (OSError, ShmbusError) as e:
            self._stats_failed("removed", e)

    def _stats_failed(self, what: str, e: BaseException) -> None:
        reason = (e.strerror if isinstance(e, OSError) and not isinstance(e, ShmbusError)
                  and e.strerror else str(e).splitlines()[0])
        error = (f"balancer group {self.group!r}: its stats could not be {what} at "
                 f"{membership.stats_path(self.namespace, self.group)} ({reason}); "
                 "dispatching goes on, but `shmbus inspect`/`top` will not show them "
                 "until what is there is removed (by its owner)")
        if error != self.stats_error:
            _log.warning("%s", error)
        self.stats_error = error
