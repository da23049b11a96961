"""Garbage collection: remove what no live process owns, and only what is ours.

``collect`` removes, in one namespace:

* rings that no live process uses (no live producer, no live consumer), with their
  semaphores and idle lock files, unless a durable cursor of the ring is behind the
  write position: unread messages of a durable consumer are data someone will come back
  for, so such a ring is kept (and reported) unless ``force``.  A ring whose cursors
  are all caught up is removed with them: stopping every participant and collecting is
  how a namespace is emptied.
* in rings still in use, the slots of dead anonymous consumers;
* the registry (and doorbell semaphore) of an Inbox that is not live and has no sender
  ring left (see :mod:`shmbus.fanin`);
* semaphores of rings that no longer exist, lock files nobody holds, leases whose
  holder is gone (fence files are kept: they guard resources), balancer stats of groups
  with no live leader, bridge stats whose bridge died and stats files whose writer
  died.

**Never under a starting producer.**  A producer takes its ring's ``@producer`` lock
before it opens (or creates) the segment, and whoever creates or attaches to a segment
holds its ``@create`` lock meanwhile.  gc tries both locks without waiting, skips the
ring if either is held, and decides and removes while holding them, so a producer
either finds the ring gone (and creates it afresh) or keeps it, and a consumer attaching
meanwhile gets :class:`RingNotFound` instead of a removed segment.

**Only what is provably ours.**  ``/dev/shm`` is shared by every user and program on
the host.  gc removes a segment only if it carries shmbus's magic word or is a half-made
one of ours (size 0, or a complete all-zero header: a creator that died before writing
it); a semaphore only if it is named like one of a ring's (``sem.{ns}.{ring}@c{i}`` or
``@p``) and its ring is gone; lock-directory files only by their shmbus names.  Each
must be a regular file owned by the effective uid, checked with ``lstat``/``fstat``,
never following a symlink.  Everything else (another user's entry, a symlink, a FIFO,
another program's file that happens to share the prefix) is left alone and reported in
``kept``, and gc goes on with the rest.
"""

from __future__ import annotations

import os
import re

import posix_ipc

from . import fanin, layout, liveness, naming, wakefifo
from .errors import LayoutMismatch, RingNotFound, ShmbusError
from .introspect import _one_line, entry_problem, inspect, open_entry
from .lease import Lease
from .bridge.stats import writer_is_dead, writer_of
from .lock import FileLock, lock_holders
from .segment import Segment
from .slots import SlotTable

__all__ = ["collect"]

_MAGIC = layout.MAGIC.to_bytes(8, "little")
_SEM_SUFFIX = re.compile(r"@(?:c[0-9]{1,4}|p)")
_ERRORS = (OSError, ShmbusError, posix_ipc.Error)


def collect(namespace: str | None = None, *, dry_run: bool = False, force: bool = False,
            kept: list[dict] | None = None) -> list[dict]:
    """Remove what no live process owns in the namespace; return what was (with
    ``dry_run``: would be) removed as ``{"kind", "name", "reason"}`` dicts.

    ``force`` also removes rings whose durable cursors have unread messages.  What was
    left alone for a reason the operator should know (unread durable messages, entries
    that are not ours or cannot be read) is appended to ``kept`` in the same form.
    Live rings and locks are left alone silently."""
    gc = _Collector(naming.resolve_namespace(namespace), dry_run, force)
    gc.rings()
    gc.done += fanin.collect(gc.ns, dry_run)  # Inbox registries with no ring left
    gc.semaphores()
    gc.lock_files()
    if kept is not None:
        kept.extend(gc.kept)
    return gc.done


def _entries() -> list[str]:
    try:
        return os.listdir(naming.SHM_DIR)
    except OSError:
        return []


class _Collector:
    def __init__(self, ns: str, dry_run: bool, force: bool) -> None:
        self.ns, self.dry_run, self.force = ns, dry_run, force
        self.done: list[dict] = []
        self.kept: list[dict] = []
        self.removed_rings: set[str] = set()

    def _remove(self, kind: str, name: str, reason: str) -> None:
        self.done.append({"kind": kind, "name": name, "reason": reason})

    def _keep(self, kind: str, name: str, reason: str) -> None:
        self.kept.append({"kind": kind, "name": name, "reason": reason})

    def _producer_lock(self, ring: str) -> FileLock:
        return FileLock(naming.ring_lock_name(ring, "producer"), namespace=self.ns,
                        reentrant=False, _internal=True)

    # -- rings --------------------------------------------------------------------------

    def rings(self) -> None:
        for ring in naming.ring_names_in(self.ns, _entries()):
            try:
                self._ring(ring)
            except FileNotFoundError:
                continue  # removed meanwhile
            except _ERRORS as e:
                self._keep("ring", ring, f"could not be checked: {_one_line(e)}")

    def _ring(self, ring: str) -> None:
        path = naming.segment_path(self.ns, ring)
        problem = entry_problem(path)
        if problem:
            self._keep("entry", path, f"{problem}: left alone")
            return
        fd = open_entry(path)
        try:
            inode = os.fstat(fd).st_ino
            head = os.pread(fd, layout.HEADER_SIZE, 0)
        finally:
            os.close(fd)
        if head[:8] == _MAGIC:
            half_made = False
        elif len(head) in (0, layout.HEADER_SIZE) and not any(head):
            half_made = True
        else:
            self._keep("entry", path, "not a shmbus ring (no shmbus magic word): left "
                       "alone; remove it yourself if it is yours")
            return
        lock = self._producer_lock(ring)
        if not lock.try_acquire():  # a producer runs or is starting: the ring is in use
            if not half_made:
                self._reclaim_dead_slots(ring)
            return
        try:
            create = FileLock(naming.ring_lock_name(ring, "create"), namespace=self.ns,
                              _internal=True)
            if not create.try_acquire():
                return  # being created, or a consumer is attaching: in use
            try:  # decide and remove holding both: nobody starts or attaches meanwhile
                reason = ("half-made segment (its creator died before writing the "
                          "header)") if half_made else self._verdict(ring)
                if reason is not None:
                    if not self.dry_run:
                        self._unlink_segment(ring, path, inode)
                    self._remove("ring", ring, reason)
                    self.removed_rings.add(ring)
            finally:
                create.release()
        finally:
            lock.release()

    def _verdict(self, ring: str) -> str | None:
        """Why ring ``ring`` may go (caller holds its producer lock), or None to keep it."""
        try:
            info = inspect(ring, namespace=self.ns)
        except RingNotFound:
            return None  # removed meanwhile
        except LayoutMismatch as e:
            if self.force:
                return f"made by another layout version (--force): {e}"
            self._keep("ring", ring, f"{e} (gc keeps it: its cursors cannot be read "
                       "here; use --force to remove it)")
            return None
        except ShmbusError as e:
            if self._ring_locks_held(ring):
                return None
            return f"unreadable: {e}"
        producer = info["producer"]
        if (producer is not None and producer["alive"] != "dead") or any(
                c["pid"] and c["alive"] != "dead" for c in info["consumers"]):
            self._reclaim_dead_slots(ring, info)
            return None
        behind = [c for c in info["consumers"] if c["durable"] and c["lag_bytes"] > 0]
        unread = ", ".join(f"durable consumer {c['durable']!r} has "
                           f"{c['lag_messages'] or 'some'} unread message(s)"
                           for c in behind)
        if behind and not self.force:
            self._keep("ring", ring, f"{unread}: kept for when it comes back (remove the "
                       f"cursor with `shmbus rm {ring} --durable NAME`, or use --force)")
            return None
        if behind:
            return f"no live producer or consumer; discarded (--force): {unread}"
        return "no live producer or consumer"

    def _unlink_segment(self, ring: str, path: str, inode: int) -> None:
        """Remove the segment judged above (caller holds its producer and create locks),
        if it is still that file and ours; its semaphores and lock files go in the
        passes below."""
        st = os.lstat(path)
        if st.st_ino != inode or entry_problem(path):
            raise ShmbusError(f"{path} changed while gc looked at it: left alone",
                              path=path)
        os.unlink(path)

    def _reclaim_dead_slots(self, ring: str, info: dict | None = None) -> None:
        try:
            if info is None:
                info = inspect(ring, namespace=self.ns)
            dead = [c for c in info["consumers"] if c["pid"] and c["alive"] == "dead"
                    and not c["durable"]]
            for c in dead:
                self._remove("slot", f"{ring}[{c['slot']}]", f"consumer pid {c['pid']} is dead")
            if dead and not self.dry_run:
                seg = Segment.open(self.ns, ring)
                try:
                    table = SlotTable(seg)
                    with table.lock():
                        table.reclaim_dead()
                finally:
                    seg.close()
        except _ERRORS:
            return  # a ring in use that we cannot read: nothing of it is ours to free

    def _ring_locks_held(self, ring: str) -> bool:
        directory = naming.lock_dir(self.ns)
        try:
            dir_fd = open_entry(directory, own=False, kind="dir")
        except OSError:
            return False
        try:
            for name in os.listdir(dir_fd):
                path = f"{directory}/{name}"
                try:
                    if name.startswith(ring + "@") and \
                            not entry_problem(path, dir_fd=dir_fd) and \
                            any(not h.waiting for h in lock_holders(path)):
                        return True
                except FileNotFoundError:
                    continue
        finally:
            os.close(dir_fd)
        return False

    # -- semaphores -------------------------------------------------------------------

    def semaphores(self) -> None:
        """Semaphores of rings that are gone (or, in a dry run, would be)."""
        prefix = f"sem.{self.ns}."
        by_ring: dict[str, list[str]] = {}
        for entry in sorted(_entries()):
            if not entry.startswith(prefix) or "@" not in entry:
                continue
            ring, at, suffix = entry[len(prefix):].rpartition("@")
            if _SEM_SUFFIX.fullmatch(at + suffix) and _valid_name(ring):
                by_ring.setdefault(ring, []).append(entry)
        for ring, entries in by_ring.items():
            try:
                self._ring_semaphores(ring, entries)
            except _ERRORS as e:
                self._keep("semaphore", f"{ring}@*", f"could not be checked: {_one_line(e)}")

    def _ring_semaphores(self, ring: str, entries: list[str]) -> None:
        lock = self._producer_lock(ring)
        if not lock.try_acquire():
            return  # a producer runs or is starting: the ring is (about to be) there
        try:  # holding it, nobody can create the ring while we look
            gone = not os.path.lexists(naming.segment_path(self.ns, ring)) or (
                self.dry_run and ring in self.removed_rings)
            if not gone:
                return
            for entry in entries:
                path = f"{naming.SHM_DIR}/{entry}"
                try:
                    problem = entry_problem(path)
                except FileNotFoundError:
                    continue
                if problem:
                    self._keep("semaphore", entry, f"{problem}: left alone")
                    continue
                self._remove("semaphore", entry, "ring is gone")
                if not self.dry_run:
                    _unlink_quietly(path)
        finally:
            lock.release()

    # -- lock directory ---------------------------------------------------------------

    def lock_files(self) -> None:
        """Stale files of the lock directory.  The directory is checked, then opened,
        and everything in it is done through that descriptor, never through its path:
        between our check and our use its path may lead elsewhere (the release of its
        last lock removes it, and another user may make it again as a symlink to a
        directory of his choosing, where we would remove files of his choosing)."""
        directory = naming.lock_dir(self.ns)
        dir_fd = None
        try:
            problem = entry_problem(directory, "dir")
            dir_fd = None if problem else open_entry(directory, kind="dir")
        except FileNotFoundError:
            return
        except OSError as e:
            problem = _one_line(e)
        if dir_fd is None:
            self._keep("entry", directory, f"lock directory {problem}: left alone")
            return
        try:
            self._lock_dir_files(directory, dir_fd)
        finally:
            os.close(dir_fd)
        if not self.dry_run:
            try:
                os.rmdir(directory)  # only if empty; never follows a symlink
            except OSError:
                pass

    def _lock_dir_files(self, directory: str, dir_fd: int) -> None:
        ours = []
        for name in sorted(os.listdir(dir_fd)):
            path = f"{directory}/{name}"
            if wakefifo.ring_of(name) is not None:  # not a lock: a waiter's FIFO
                self._wake_fifo(dir_fd, name)
                continue
            try:
                problem = entry_problem(path, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            if problem:
                self._keep("entry", path, f"{problem}: left alone")
            else:
                ours.append(name)
        live_leases = self._leases(dir_fd, [n for n in ours if n.endswith("@lease")])
        for name in ours:
            try:
                self._lock_file(directory, dir_fd, name, live_leases)
            except _ERRORS as e:
                self._keep("lock", name, f"could not be checked: {_one_line(e)}")

    def _wake_fifo(self, dir_fd: int, name: str) -> None:
        """A wake-up FIFO (shmbus.wakefifo) goes when nobody reads it: its waiter is gone."""
        try:
            verdict = wakefifo.collect(self.ns, dir_fd, name, dry_run=self.dry_run)
        except _ERRORS as e:
            self._keep("fifo", name, f"could not be checked: {_one_line(e)}")
            return
        if verdict is not None:
            (self._remove if verdict[0] else self._keep)("fifo", name, verdict[1])

    def _leases(self, dir_fd: int, names: list[str]) -> set[str]:
        """Remove leases whose holder is gone; return the names of live ones (tokens
        stay increasing without the file: see :mod:`shmbus.lease`)."""
        live = set()
        for entry in names:
            name = entry[:-len("@lease")]
            try:
                holder = Lease(name, ttl=1.0, namespace=self.ns).holder()
            except (*_ERRORS, ValueError) as e:
                self._keep("lease", name, f"unreadable: {_one_line(e)}")
                live.add(name)
                continue
            if holder and holder["alive"] != "dead":
                live.add(name)
                continue
            self._remove("lease", name, "no live holder")
            if not self.dry_run:
                _unlink_quietly(entry, dir_fd)
        return live

    def _lock_file(self, directory: str, dir_fd: int, name: str,
                   live_leases: set[str]) -> None:
        if writer_of(name) is not None:  # a bridge's stats, see shmbus.bridge.stats
            if writer_is_dead(dir_fd, name, f"{directory}/{name}"):
                self._remove("stats", name, "bridge is dead")
                if not self.dry_run:
                    _unlink_quietly(name, dir_fd)
            return
        if name.endswith("@stats"):
            if f"{name[:-len('@stats')]}.leader" not in live_leases:
                self._remove("stats", name, "no live balancer")
                if not self.dry_run:
                    _unlink_quietly(name, dir_fd)
            return
        if name.endswith(".tmp"):  # a stats file its writer never finished
            writer = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
            if writer.isdigit() and liveness.is_dead(int(writer), 0):
                self._remove("stats", name, "writer is dead")
                if not self.dry_run:
                    _unlink_quietly(name, dir_fd)
            return
        if name.endswith(("@lease", "@fence")):
            return  # leases above; fences are kept: they guard resources
        # lock_holders and FileLock open the file in the checked lock directory
        # themselves, never through a symlink (lockdir.open_path / open_dir).
        if any(not h.waiting for h in lock_holders(f"{directory}/{name}")):
            return
        self._remove("lock", name, "nobody holds it")
        if not self.dry_run:
            probe = FileLock(name, namespace=self.ns, _internal=True)
            if probe.try_acquire():
                probe.release()  # the last release deletes the file


def _valid_name(name: str) -> bool:
    try:
        naming.check_name(name)
    except ShmbusError:
        return False
    return True


def _unlink_quietly(path: str, dir_fd: int | None = None) -> None:
    """Remove ``path`` (with ``dir_fd``: the entry of that name in that directory) if it
    is still there."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
