"""``Lease``: time-bounded ownership with a fencing token; ``Fence``: rejecting stale
tokens.

A lease is a file ``/dev/shm/{ns}@locks/{name}@lease`` holding one fixed-size record
(token, holder pid and start time, expiry on CLOCK_MONOTONIC, ttl), read and written
under a short ``flock`` of the file, each write a single ``pwrite`` (a process killed
mid-way leaves the old record or the new one, never half of each).

**Tokens** grow with every acquisition and never go back: a new token is
``max(previous + 1, time.time_ns())``, so even if the file is removed (``shmbus gc``,
``Lease.unlink``) the next token is still larger than every earlier one, unless the wall
clock went back meanwhile.

**Why expiry alone is not safe**: a holder can be paused (SIGSTOP, a debugger, a swapped
VM, a long GC) past its expiry, then wake up and act believing it still holds the
lease.  So a lease whose holder is *alive* is never taken before it expires, and an
expired one only under a policy that guarantees the old holder cannot act again:
``on_stale="kill"`` verifies the holder by pid and start time, kills it with SIGKILL,
waits for it to die, then takes over.  The default, ``on_stale="refuse"``, waits and in
the end raises :class:`Timeout` naming the holder.  A holder that is *dead* (gone,
zombie, or its pid reused) is replaced at once, expired or not.  Resources should also
check tokens (:class:`Fence`): a holder that lost its lease then fails there too.

**Trust** (issue 12): a lease record is only believed from a file of ours in a lock
directory of ours (:mod:`shmbus.lockdir`; anything else is :class:`PermissionDenied`),
so nobody else can forge a holder or a token.  Even then a process is killed only when
it is verified: its start time is recorded (a record with start time 0 names no
verifiable process), matches the live process with that pid, that process runs as
our user, and its own word says it holds the lease and is stale: a holder keeps a
descriptor of the lease file from acquiring to releasing, with its expiry as the
descriptor's position (:mod:`shmbus.leasefile`), because in a namespace shared with a
group any member can write a record naming any of our processes, or saying that our
live holder expired; the signal goes through a pidfd opened before the check, so a pid reused
meanwhile is never hit.  Otherwise ``on_stale="kill"`` refuses like ``"refuse"``.

**Timeouts hold**: the file's ``flock`` is taken by non-blocking attempts until the
caller's deadline, so a process keeping it locked (stopped, hung) delays
:meth:`Lease.acquire` by at most its ``timeout``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import TYPE_CHECKING, cast

import psutil

from . import liveness, lockdir, naming
from .errors import AlreadyHeld, LeaseLost, NotHeld, ShmbusError, Timeout
from .leasefile import (TOKEN_MAX, LeaseFile, LeaseState, pinned_expiry, remove, set_pin,
                        unpin)

if TYPE_CHECKING:
    from .choices import OnStale
    from .info import LeaseEntry, LeaseHolder

__all__ = ["Lease", "LeaseState", "Fence", "list_leases"]

_ON_STALE = ("refuse", "kill")
_TTL_MAX = 10 * 365 * 86400.0  # seconds; an expiry must fit CLOCK_MONOTONIC nanoseconds
_FENCE_TIMEOUT = 10.0  # seconds a Fence waits for its file's lock


class Lease:
    """Time-bounded ownership of ``name`` with a fencing token.

    ``Lease(name, *, ttl, namespace=None, on_stale="refuse", keepalive=False)``;
    ``acquire(timeout)``, ``renew()``, ``release()``, ``check()``; properties
    ``token``, ``expires_at`` (``time.monotonic()`` seconds), ``held``; ``holder()``.
    With ``keepalive=True`` a daemon thread renews every ``ttl/3`` and marks the lease
    lost if a renewal fails or comes too late; ``check()`` then raises.
    """

    def __init__(self, name: str, *, ttl: float, namespace: str | None = None,
                 on_stale: OnStale = "refuse", keepalive: bool = False) -> None:
        naming.check_name(name, "lease name")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or \
                not 0 < ttl <= _TTL_MAX:
            raise ValueError(f"ttl must be a finite number of seconds > 0 and at most "
                             f"{_TTL_MAX:.0f} (ten years), got {ttl!r}")
        if on_stale not in _ON_STALE:
            raise ValueError(f"on_stale must be one of {_ON_STALE}, got {on_stale!r}")
        self.name, self.ttl, self.on_stale, self.keepalive = name, float(ttl), on_stale, keepalive
        self.namespace = ns = naming.resolve_namespace(namespace)
        self._file = LeaseFile(f"{naming.lock_dir(ns)}/{name}@lease", ns, f"{name}@lease")
        self.path = self._file.path
        self._token = 0
        self._expires_ns = 0
        self._lost = False
        self._pid = -1
        self._pin = -1  # held from acquire to release: see leasefile.pinned_expiry
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True while this object holds the lease (not lost, not expired)."""
        return (self._pid == os.getpid() and self._token > 0 and not self._lost
                and time.monotonic_ns() < self._expires_ns)

    @property
    def token(self) -> int:
        """The fencing token of the current (or last) acquisition."""
        return self._token

    @property
    def expires_at(self) -> float:
        """When the lease expires, in ``time.monotonic()`` seconds."""
        return self._expires_ns / 1e9

    def holder(self) -> LeaseHolder | None:
        """The current holder (pid, start_time, token, expires_in, alive), or None."""
        with self._file.locked(time.monotonic() + self.ttl) as f:
            st = f.read()
        return st.to_dict() if st.pid else None

    # -- acquiring ------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> "Lease":
        """Take the lease, waiting up to ``timeout`` seconds (None: forever).  Raises
        :class:`Timeout` naming the holder; the timeout holds whatever other processes
        do (a process keeping the lease file locked delays this call by at most
        ``timeout``).  Raises :class:`PermissionDenied` when the lease file or its
        directory is not ours (a record someone else wrote is never believed),
        :class:`AlreadyHeld` when this object holds the lease already."""
        if self.held:
            raise AlreadyHeld(f"lease {self.name!r} is already held by this object (token "
                              f"{self._token}): release it first", name=self.name)
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        me = liveness.current()
        while True:
            with self._file.locked(deadline) as f:
                st = f.read()
                lease_file = f.identity()
                wait = self._obstacle(st, me, lease_file)
                if wait is None:
                    now = time.monotonic_ns()
                    ttl_ns = int(self.ttl * 1e9)
                    self._repin(f, now + ttl_ns)
                    token = self._next_token(st)
                    f.write(LeaseState(token, me.pid, me.start_time, now + ttl_ns,
                                       time.time_ns(), ttl_ns, liveness.pid_namespace()))
                    self._token, self._expires_ns = token, now + ttl_ns
                    self._lost, self._pid = False, os.getpid()
                    break
            if wait == "kill":
                self._kill(st, lease_file)
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._busy(st, timeout)
            time.sleep(min(0.01, self.ttl / 10, remaining if remaining else 0.01))
        if self.keepalive:
            self._start_keepalive()
        return self

    def _next_token(self, st: LeaseState) -> int:
        if st.token >= TOKEN_MAX:
            raise ShmbusError(
                f"lease file {self.path} holds token {st.token}, the largest a lease can "
                "have (2**64-1), so no newer token exists: the file is damaged or forged; "
                "remove it (Lease.unlink() or `shmbus gc`) and acquire again",
                name=self.name, token=st.token)
        return max(st.token + 1, time.time_ns())

    def _unpin(self) -> None:
        """Close our pin: this object holds the lease no more."""
        unpin(self._pin)
        self._pin = -1

    def _repin(self, f: LeaseFile, expires_ns: int) -> None:
        self._unpin()
        try:
            self._pin = f.pin(expires_ns)
        except OSError:
            pass  # no /proc: we cannot be verified, so nobody will kill us

    def _obstacle(self, st: LeaseState, me, lease_file: tuple[int, int]) -> str | None:
        """None if the lease may be taken now, "kill" if the stale holder must be
        killed first, "wait" otherwise."""
        if st.pid == 0:
            return None
        if (st.pid, st.start_time) == (me.pid, me.start_time) and \
                st.pid_ns in (0, liveness.pid_namespace()):
            return None if st.expired else "wait"  # another Lease object of ours
        # A start time of 0 is "unknown" to liveness (pid only): a record shmbus never
        # writes.  Such a holder is never killed; its lease is taken once its pid is gone.
        # A holder in another PID namespace (a container) is judged there, never by its
        # pid here: unknown counts as alive.
        state = liveness.liveness(st.pid, st.start_time, st.pid_ns)
        if state is liveness.Liveness.DEAD:
            return None
        if not st.expired:
            return "wait"
        return ("kill" if self.on_stale == "kill" and _killable(st, lease_file)
                else "wait")

    def _kill(self, st: LeaseState, lease_file: tuple[int, int]) -> None:
        """SIGKILL the stale holder, verified first (:func:`_killable`: by its pid as we
        see it, its start time and its user) through a pidfd opened before the check,
        so that a pid reused meanwhile is never signalled; then wait for its death."""
        here = _killable(st, lease_file)
        if here is None:
            return  # gone, or not the recorded process: the next round decides
        try:
            pidfd: int | None = os.pidfd_open(here)
        except ProcessLookupError:
            return
        except OSError:  # no pidfd here (an old kernel, a seccomp filter): plain kill
            pidfd = None
        try:
            if _killable(st, lease_file) != here:
                return
            if pidfd is None:
                os.kill(here, signal.SIGKILL)
            else:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return
        finally:
            if pidfd is not None:
                os.close(pidfd)
        deadline = time.monotonic() + 10
        while not liveness.is_dead(st.pid, st.start_time, st.pid_ns):
            if time.monotonic() > deadline:
                raise ShmbusError(f"killed stale lease holder pid {here} but it did not "
                                  "die within 10 s", name=self.name, pid=here)
            time.sleep(0.001)

    def _busy(self, st: LeaseState, timeout) -> Timeout:
        alive = liveness.liveness(st.pid, st.start_time, st.pid_ns).value
        if st.expired and self.on_stale == "kill":
            why = (f"it expired {(time.monotonic_ns() - st.expires_ns) / 1e9:.1f} s ago but "
                   f"its holder pid {st.pid} is {alive} and cannot be verified (the record "
                   "has no start time, the process runs as another user, or it does not "
                   "say itself that it holds the lease and expired): shmbus never "
                   "kills a process it cannot verify; stop it yourself, or remove the "
                   "lease file")
        elif st.expired:
            why = (f"it expired {(time.monotonic_ns() - st.expires_ns) / 1e9:.1f} s ago but "
                   f"pid {st.pid} is {alive} (stopped or hung?); on_stale='refuse' never "
                   "takes a lease from a live holder: stop it, or use on_stale='kill'")
        else:
            why = f"pid {st.pid} holds it for {(st.expires_ns - time.monotonic_ns()) / 1e9:.1f} s more"
        return Timeout(f"lease {self.name!r} not acquired within {timeout} s: {why}",
                       name=self.name, pid=st.pid, timeout=timeout)

    # -- holding --------------------------------------------------------------------------

    def renew(self) -> None:
        """Extend the lease by ``ttl`` from now.  Raises :class:`LeaseLost` if another
        holder has taken it (or this object never held it), :class:`Timeout` if another
        process keeps the lease file locked for ``ttl`` seconds."""
        self._refuse_in_fork(LeaseLost)
        with self._file.locked(time.monotonic() + self.ttl) as f:
            st = f.read()
            self._verify(st)
            now = time.monotonic_ns()
            ttl_ns = int(self.ttl * 1e9)
            f.write(LeaseState(st.token, st.pid, st.start_time, now + ttl_ns,
                               st.acquired_wall_ns, ttl_ns, st.pid_ns))
            self._expires_ns = now + ttl_ns
            set_pin(self._pin, now + ttl_ns)

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this object still holds the lease (its token
        is the file's and it has not expired).  Call it before acting."""
        self._refuse_in_fork(LeaseLost)
        if self._lost or time.monotonic_ns() >= self._expires_ns:
            self._lost = self._lost or self._token > 0
            raise self._lost_error("it expired" if self._token else "it was never acquired")
        try:
            with self._file.locked(self._expires_ns / 1e9) as f:  # never past our expiry
                self._verify(f.read())
        except Timeout:
            self._lost = True
            raise self._lost_error("it expired while another process kept its file "
                                   "locked") from None

    def _refuse_in_fork(self, error: type) -> None:
        """A lease belongs to the process that acquired it: its forked child holds
        nothing, and says so."""
        if self._token and self._pid != os.getpid():
            raise error(f"lease {self.name!r} (token {self._token}) is held by process "
                        f"{self._pid}, not by this one ({os.getpid()}, a fork of it): a "
                        "forked child holds no lease; acquire one of its own",
                        name=self.name, token=self._token, pid=self._pid)

    def _verify(self, st: LeaseState) -> None:
        if self._pid != os.getpid() or self._token == 0:
            raise self._lost_error("this process never acquired it")
        if st.token != self._token or st.pid == 0:
            self._lost = True
            self._unpin()  # (callers hold the file's thread lock)
            raise self._lost_error(f"it is now token {st.token} of pid {st.pid}")

    def _lost_error(self, why: str) -> LeaseLost:
        return LeaseLost(f"lease {self.name!r} (token {self._token}) is lost: {why}; do "
                         "not act on it, acquire it again", name=self.name, token=self._token)

    def release(self) -> None:
        """Give the lease up (its token stays).  Raises :class:`NotHeld` if this object
        does not hold it."""
        self._refuse_in_fork(NotHeld)
        self._stop_keepalive()
        with self._file.locked(time.monotonic() + self.ttl) as f:
            st = f.read()
            if self._pid != os.getpid() or st.token != self._token or st.pid == 0 or \
                    self._token == 0:
                if self._pid == os.getpid():
                    self._unpin()
                raise NotHeld(f"lease {self.name!r} is not held by this object (token "
                              f"{self._token}, file token {st.token})", name=self.name)
            f.write(LeaseState(st.token, 0, 0, 0, st.acquired_wall_ns, st.ttl_ns))
            self._unpin()  # (under the file's thread lock: never under a renew)
        self._expires_ns = 0

    def unlink(self) -> None:
        """Remove the lease file (tokens stay increasing: see the module doc)."""
        remove(self.namespace, self._file.name)

    # -- keepalive ------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if time.monotonic_ns() >= self._expires_ns:
                self._lost = True  # starved past expiry: someone may hold it now
                return
            try:
                self.renew()
            except (ShmbusError, OSError):  # LeaseLost, Timeout, PermissionDenied, ...
                self._lost = True
                return

    def _stop_keepalive(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        if self._token and not self._lost and self._pid == os.getpid():
            try:
                self.release()
            except NotHeld:
                pass

    def __del__(self) -> None:
        try:
            if getattr(self, "_pid", None) == os.getpid():  # (a failed __init__ has none)
                unpin(self._pin)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<Lease {self.name!r} token={self._token} {'held' if self.held else 'not held'}>"


class Fence:
    """Remembers the newest fencing token a resource accepted and rejects older ones.

    ``Fence(name, namespace=None)`` keeps it in ``{ns}@locks/{name}@fence`` so that
    every process guarding the resource shares it.  ``admit(token)`` raises
    :class:`LeaseLost` for a token older than the newest seen.
    """

    def __init__(self, name: str, namespace: str | None = None) -> None:
        naming.check_name(name, "fence name")
        self.namespace = ns = naming.resolve_namespace(namespace)
        self.path = f"{naming.lock_dir(ns)}/{name}@fence"
        self._file = LeaseFile(self.path, ns, f"{name}@fence")

    @property
    def newest(self) -> int:
        with self._file.locked(time.monotonic() + _FENCE_TIMEOUT) as f:
            return f.read().token

    def admit(self, token: int) -> None:
        """Accept ``token`` if it is not older than the newest accepted; raise
        :class:`LeaseLost` otherwise, ``ValueError`` if it is not a lease token (an int
        from 0 to 2**64-1)."""
        if isinstance(token, bool) or not isinstance(token, int) or \
                not 0 <= token <= TOKEN_MAX:
            raise ValueError(f"a fencing token is an int from 0 to 2**64-1, got {token!r}")
        with self._file.locked(time.monotonic() + _FENCE_TIMEOUT) as f:
            st = f.read()
            if token < st.token:
                raise LeaseLost(f"token {token} is older than token {st.token} already "
                                "accepted: its lease was lost", token=token, newest=st.token)
            if token > st.token:
                f.write(LeaseState(token, 0, 0, 0, time.time_ns(), 0))

    def unlink(self) -> None:
        """Remove the fence file (then any token is admitted again)."""
        remove(self.namespace, self._file.name)


def _killable(st: LeaseState, lease_file: tuple[int, int]) -> int | None:
    """The pid (as this process sees it) under which the holder recorded in ``st`` may
    be killed, or None: its start time must be recorded and match a live process (in
    the recorded PID namespace: :func:`liveness.local_pid`), which runs as our user and
    says in its pin of ``lease_file`` (``(st_dev, st_ino)``: :func:`leasefile.pinned_expiry`)
    that it holds the lease and its lease expired: the record's word alone is not
    enough, another member of a shared group may have written it."""
    if st.start_time == 0:
        return None
    here = liveness.local_pid(st.pid, st.start_time, st.pid_ns)
    if here is None:
        return None
    try:
        proc = psutil.Process(here)
        if proc.uids().real != os.geteuid() or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    expiry = pinned_expiry(here, lease_file)
    return here if expiry is not None and expiry <= time.monotonic_ns() else None


def list_leases(namespace: str | None = None) -> list[LeaseEntry]:
    """Every lease of the namespace: name, token, holder (pid, alive, expires_in).
    Leases that cannot be read (locked by a hung process, not ours, damaged) are left
    out; raises :class:`PermissionDenied` if the lock directory is not ours."""
    ns = naming.resolve_namespace(namespace)
    directory = naming.lock_dir(ns)
    try:
        dir_fd = lockdir.open_dir(ns, create=False)
    except FileNotFoundError:
        return []
    try:
        names = sorted(n for n in os.listdir(dir_fd) if n.endswith("@lease"))
    finally:
        os.close(dir_fd)
    out: list[LeaseEntry] = []
    for entry in names:
        lease_file = LeaseFile(f"{directory}/{entry}", ns, entry)
        try:
            with lease_file.locked(time.monotonic() + 0.5, create=False) as f:
                st = f.read()
        except (ShmbusError, FileNotFoundError):
            continue
        out.append(cast("LeaseEntry", {"name": entry[:-len("@lease")], **st.to_dict()}))
    return out
