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
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import threading
import time
from dataclasses import asdict, dataclass

from . import liveness, naming
from .errors import LeaseLost, NotHeld, ShmbusError, Timeout

__all__ = ["Lease", "LeaseState", "Fence", "list_leases"]

_RECORD = struct.Struct("<8sQQQQQQ")
_MAGIC = b"SHMBLEAS"
_ON_STALE = ("refuse", "kill")


@dataclass(frozen=True)
class LeaseState:
    """What a lease file says: the last token, and its holder if any."""

    token: int
    pid: int             # 0: released / never held
    start_time: int
    expires_ns: int      # CLOCK_MONOTONIC nanoseconds
    acquired_wall_ns: int
    ttl_ns: int

    @property
    def expired(self) -> bool:
        return time.monotonic_ns() >= self.expires_ns

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expires_in"] = (self.expires_ns - time.monotonic_ns()) / 1e9 if self.pid else None
        d["alive"] = liveness.liveness(self.pid, self.start_time).value if self.pid else None
        return d


_EMPTY = LeaseState(0, 0, 0, 0, 0, 0)


class _LeaseFile:
    """The lease record and its short critical sections."""

    def __init__(self, path: str, directory: str) -> None:
        self.path, self.directory = path, directory
        # Threads of one process (a keepalive thread and its owner) take turns here:
        # flock alone would let them trample each other's descriptor.
        self._threads = threading.Lock()

    def __enter__(self) -> "_LeaseFile":
        self._threads.acquire()
        try:
            while True:
                try:
                    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                      0o644)
                    break
                except FileNotFoundError:
                    naming.make_dir(self.directory)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.close(self.fd)  # closing releases the flock
        finally:
            self._threads.release()

    def read(self) -> LeaseState:
        raw = os.pread(self.fd, _RECORD.size, 0)
        if len(raw) < _RECORD.size:
            return _EMPTY
        magic, *fields = _RECORD.unpack(raw)
        if magic != _MAGIC:
            raise ShmbusError(f"lease file {self.path} is not a shmbus lease: remove it",
                              path=self.path)
        return LeaseState(*fields)

    def write(self, st: LeaseState) -> None:
        os.pwrite(self.fd, _RECORD.pack(_MAGIC, st.token, st.pid, st.start_time,
                                        st.expires_ns, st.acquired_wall_ns, st.ttl_ns), 0)


class Lease:
    """Time-bounded ownership of ``name`` with a fencing token.

    ``Lease(name, *, ttl, namespace=None, on_stale="refuse", keepalive=False)``;
    ``acquire(timeout)``, ``renew()``, ``release()``, ``check()``; properties
    ``token``, ``expires_at`` (``time.monotonic()`` seconds), ``held``; ``holder()``.
    With ``keepalive=True`` a daemon thread renews every ``ttl/3`` and marks the lease
    lost if a renewal fails or comes too late; ``check()`` then raises.
    """

    def __init__(self, name: str, *, ttl: float, namespace: str | None = None,
                 on_stale: str = "refuse", keepalive: bool = False) -> None:
        naming.check_name(name, "lease name")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError(f"ttl must be a number of seconds > 0, got {ttl!r}")
        if on_stale not in _ON_STALE:
            raise ValueError(f"on_stale must be one of {_ON_STALE}, got {on_stale!r}")
        self.name, self.ttl, self.on_stale, self.keepalive = name, float(ttl), on_stale, keepalive
        self.namespace = ns = naming.resolve_namespace(namespace)
        directory = naming.lock_dir(ns)
        self._file = _LeaseFile(f"{directory}/{name}@lease", directory)
        self.path = self._file.path
        self._token = 0
        self._expires_ns = 0
        self._lost = False
        self._pid = -1
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

    def holder(self) -> dict | None:
        """The current holder (pid, start_time, token, expires_in, alive), or None."""
        with self._file as f:
            st = f.read()
        return st.to_dict() if st.pid else None

    # -- acquiring ------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> "Lease":
        """Take the lease, waiting up to ``timeout`` seconds (None: forever).  Raises
        :class:`Timeout` naming the holder."""
        if self.held:
            raise ShmbusError(f"lease {self.name!r} is already held by this object",
                              name=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        me = liveness.current()
        while True:
            with self._file as f:
                st = f.read()
                wait = self._obstacle(st, me)
                if wait is None:
                    now = time.monotonic_ns()
                    ttl_ns = int(self.ttl * 1e9)
                    token = max(st.token + 1, time.time_ns())
                    f.write(LeaseState(token, me.pid, me.start_time, now + ttl_ns,
                                       time.time_ns(), ttl_ns))
                    self._token, self._expires_ns = token, now + ttl_ns
                    self._lost, self._pid = False, os.getpid()
                    break
            if wait == "kill":
                self._kill(st)
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._busy(st, timeout)
            time.sleep(min(0.01, self.ttl / 10, remaining if remaining else 0.01))
        if self.keepalive:
            self._start_keepalive()
        return self

    def _obstacle(self, st: LeaseState, me) -> str | None:
        """None if the lease may be taken now, "kill" if the stale holder must be
        killed first, "wait" otherwise."""
        if st.pid == 0:
            return None
        if (st.pid, st.start_time) == (me.pid, me.start_time):
            return None if st.expired else "wait"  # another Lease object of ours
        state = liveness.liveness(st.pid, st.start_time)
        if state is liveness.Liveness.DEAD:
            return None
        if not st.expired:
            return "wait"
        return "kill" if self.on_stale == "kill" else "wait"

    def _kill(self, st: LeaseState) -> None:
        if liveness.liveness(st.pid, st.start_time) is not liveness.Liveness.ALIVE:
            return  # gone already (or not ours to judge); the next round decides
        try:
            os.kill(st.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while not liveness.is_dead(st.pid, st.start_time):
            if time.monotonic() > deadline:
                raise ShmbusError(f"killed stale lease holder pid {st.pid} but it did not "
                                  "die within 10 s", name=self.name, pid=st.pid)
            time.sleep(0.001)

    def _busy(self, st: LeaseState, timeout) -> Timeout:
        alive = liveness.liveness(st.pid, st.start_time).value
        if st.expired:
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
        holder has taken it (or this object never held it)."""
        with self._file as f:
            st = f.read()
            self._verify(st)
            now = time.monotonic_ns()
            ttl_ns = int(self.ttl * 1e9)
            f.write(LeaseState(st.token, st.pid, st.start_time, now + ttl_ns,
                               st.acquired_wall_ns, ttl_ns))
            self._expires_ns = now + ttl_ns

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this object still holds the lease (its token
        is the file's and it has not expired).  Call it before acting."""
        if self._lost or time.monotonic_ns() >= self._expires_ns:
            self._lost = self._lost or self._token > 0
            raise self._lost_error("it expired" if self._token else "it was never acquired")
        with self._file as f:
            self._verify(f.read())

    def _verify(self, st: LeaseState) -> None:
        if self._pid != os.getpid() or self._token == 0:
            raise self._lost_error("this process never acquired it")
        if st.token != self._token or st.pid == 0:
            self._lost = True
            raise self._lost_error(f"it is now token {st.token} of pid {st.pid}")

    def _lost_error(self, why: str) -> LeaseLost:
        return LeaseLost(f"lease {self.name!r} (token {self._token}) is lost: {why}; do "
                         "not act on it, acquire it again", name=self.name, token=self._token)

    def release(self) -> None:
        """Give the lease up (its token stays).  Raises :class:`NotHeld` if this object
        does not hold it."""
        self._stop_keepalive()
        with self._file as f:
            st = f.read()
            if self._pid != os.getpid() or st.token != self._token or st.pid == 0 or \
                    self._token == 0:
                raise NotHeld(f"lease {self.name!r} is not held by this object (token "
                              f"{self._token}, file token {st.token})", name=self.name)
            f.write(LeaseState(st.token, 0, 0, 0, st.acquired_wall_ns, st.ttl_ns))
        self._expires_ns = 0

    def unlink(self) -> None:
        """Remove the lease file (tokens stay increasing: see the module doc)."""
        _remove_file(self.path, self._file.directory)

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
            except (LeaseLost, OSError):
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
        directory = naming.lock_dir(naming.resolve_namespace(namespace))
        self.path = f"{directory}/{name}@fence"
        self._file = _LeaseFile(self.path, directory)

    @property
    def newest(self) -> int:
        with self._file as f:
            return f.read().token

    def admit(self, token: int) -> None:
        with self._file as f:
            st = f.read()
            if token < st.token:
                raise LeaseLost(f"token {token} is older than token {st.token} already "
                                "accepted: its lease was lost", token=token, newest=st.token)
            if token > st.token:
                f.write(LeaseState(token, 0, 0, 0, time.time_ns(), 0))

    def unlink(self) -> None:
        """Remove the fence file (then any token is admitted again)."""
        _remove_file(self.path, self._file.directory)


def _remove_file(path: str, directory: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(directory)  # only if that left it empty
    except OSError:
        pass


def list_leases(namespace: str | None = None) -> list[dict]:
    """Every lease of the namespace: name, token, holder (pid, alive, expires_in)."""
    directory = naming.lock_dir(naming.resolve_namespace(namespace))
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith("@lease"))
    except FileNotFoundError:
        return []
    out = []
    for entry in names:
        with _LeaseFile(f"{directory}/{entry}", directory) as f:
            try:
                st = f.read()
            except ShmbusError:
                continue
        out.append({"name": entry[:-len("@lease")], **st.to_dict()})
    return out
