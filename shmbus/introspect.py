"""Read-only views of rings as plain data (dicts, lists, ints, strings), for the CLI
and for users' own monitoring.  Nothing here writes to a ring.

``/dev/shm`` is shared with every user and container of the host, so anything in it
may be foreign or odd (a symlink, a FIFO, a file of another user or program).  The
views here never follow a symlink, never open anything but a regular file, never block
on an open (``O_NONBLOCK``), and report an entry they cannot read instead of stopping:
:func:`entry_problem` and :func:`read_entry` are the checks the tools share.
"""

from __future__ import annotations

import errno
import os
import stat

from . import layout, liveness, naming, ring
from .errors import CorruptRing, PermissionDenied, ShmbusError
from .info import ConsumerInfo, LockInfo, ProducerInfo, RingInfo, RingSummary
from .layout import H_TAIL, H_WRITE, REC_PAD
from .lock import lock_holders
from .segment import Segment

__all__ = ["list_rings", "inspect", "list_locks", "messages_from", "entry_problem",
           "open_entry", "read_entry"]

_TRIES = 100  # looks at a ring that a live producer keeps overwriting
_KIND = {"file": (stat.S_ISREG, "a regular file"), "dir": (stat.S_ISDIR, "a directory")}


def _describe(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return what
    return "a regular file"


def _problem(st: os.stat_result, kind: str, own: bool) -> str | None:
    is_kind, want = _KIND[kind]
    if not is_kind(st.st_mode):
        return f"is {_describe(st.st_mode)}, not {want}"
    if own and st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})"
    return None


def entry_problem(path: str, kind: str = "file", *, own: bool = True,
                  dir_fd: int | None = None) -> str | None:
    """Why the entry at ``path`` is not ours to read or remove, or None if it is: it
    must be a regular file (``kind="dir"``: a directory), not a symlink (never
    followed), and with ``own`` belong to the effective uid.  With ``dir_fd`` (a
    directory opened by :func:`open_entry`), the entry is ``path``'s last component in
    that directory, whatever ``path`` leads to now.  Raises :class:`FileNotFoundError`
    if there is no such entry."""
    name, where = _at(path, dir_fd)
    return _problem(os.stat(name, dir_fd=where, follow_symlinks=False), kind, own)


def open_entry(path: str, *, own: bool = True, kind: str = "file",
               dir_fd: int | None = None) -> int:
    """A read-only descriptor of the regular file (``kind="dir"``: the directory) at
    ``path``, opened without following a symlink and without blocking (a FIFO never
    hangs us), then checked as :func:`entry_problem` does.  With ``dir_fd``, the entry
    is ``path``'s last component in that directory.

    Work in a directory of ``/dev/shm`` through the descriptor this returns, never
    through its path: the owner of a directory there can rename it and put a symbolic
    link in its place between our check and our use (``os.listdir(fd)``, then
    ``dir_fd=fd`` here and to :func:`entry_problem`, ``os.unlink``).  Raises
    :class:`PermissionDenied` for an entry that is not ours, :class:`FileNotFoundError`
    if it is gone, ``OSError`` otherwise."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if kind == "dir":
        flags |= os.O_DIRECTORY  # anything else is refused before it is opened
    name, where = _at(path, dir_fd)
    try:
        fd = os.open(name, flags, dir_fd=where)
    except OSError as e:
        if e.errno == errno.ELOOP:  # the last component is a symlink
            raise _not_ours(path, f"is a symlink, not {_KIND[kind][1]}") from None
        if e.errno == errno.ENOTDIR and kind == "dir":
            raise _not_ours(path, "is not a directory") from None
        raise
    try:
        problem = _problem(os.fstat(fd), kind, own)
        if problem:
            raise _not_ours(path, problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_entry(path: str, limit: int, *, own: bool = True,
               dir_fd: int | None = None) -> bytes:
    """Up to ``limit`` bytes from the start of the file at ``path`` (with ``dir_fd``:
    ``path``'s last component in that directory), opened and checked by
    :func:`open_entry` (same errors)."""
    fd = open_entry(path, own=own, dir_fd=dir_fd)
    try:
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


def _at(path: str, dir_fd: int | None) -> tuple[str, int | None]:
    """``(name, dir_fd)`` arguments of a system call for the entry ``path``, relative to
    ``dir_fd`` when there is one."""
    return (path, None) if dir_fd is None else (os.path.basename(path), dir_fd)


def _not_ours(path: str, problem: str) -> PermissionDenied:
    return PermissionDenied(f"{path} {problem}: shmbus left it alone; remove it if it is "
                            "yours, or use another namespace", path=path)


def list_rings(namespace: str | None = None) -> list[RingSummary]:
    """Summaries of every ring in the namespace: name, capacity, fill, messages,
    producer, consumers and worst lag.  A ring that cannot be read is listed with an
    ``error`` string instead."""
    ns = naming.resolve_namespace(namespace)
    try:
        entries = os.listdir(naming.SHM_DIR)
    except OSError:
        entries = []
    out: list[RingSummary] = []
    for name in naming.ring_names_in(ns, entries):
        try:
            problem = entry_problem(naming.segment_path(ns, name), own=False)
            if problem:
                raise _not_ours(naming.segment_path(ns, name), problem)
            info = inspect(name, namespace=ns)
        except FileNotFoundError:
            continue  # removed meanwhile
        except (ShmbusError, OSError) as e:
            out.append({"name": name, "namespace": ns, "error": _one_line(e)})
            continue
        consumers = info["consumers"]
        out.append({
            "name": name, "namespace": ns, "capacity": info["capacity"],
            "on_full": info["on_full"], "fill": info["fill"],
            "messages": info["messages"], "producer": info["producer"],
            "consumers": len([c for c in consumers if c["pid"]]),
            "durable": len([c for c in consumers if c["durable"]]),
            "max_lag_bytes": max((c["lag_bytes"] for c in consumers), default=0),
        })
    return out


def inspect(name: str, namespace: str | None = None) -> RingInfo:
    """Everything about ring ``name``: header fields, producer (pid, alive, epoch),
    positions, and every slot in use (pid, alive, durable name, position, lag in
    bytes, next seq to read, lost).  Raises :class:`RingNotFound` / :class:`CorruptRing`."""
    naming.check_name(name)
    ns = naming.resolve_namespace(namespace)
    seg = Segment.open(ns, name)
    try:
        h = layout.read_header(seg.buf)
        cap = h["capacity"]
        write, tail = h["write"], h["tail"]
        ppid = h["producer_pid"]
        producer: ProducerInfo | None = None
        if ppid:
            producer = {"pid": ppid, "start_time": h["producer_start"],
                        "alive": liveness.liveness(ppid, h["producer_start"],
                                                   h["producer_pid_ns"]).value,
                        "epoch": h["producer_epoch"],
                        "since_ns": h["producer_since_ns"]}
        consumers: list[ConsumerInfo] = []
        stored_next: list[int] = []
        slots = layout.read_slots(seg.buf, h["slot_count"])
        for i, s in enumerate(slots):
            if int(s["state"]) == layout.SLOT_FREE:
                continue
            pid, start, read = int(s["pid"]), int(s["start_time"]), int(s["read"])
            consumers.append({
                "slot": i, "durable": layout.slot_name(seg.buf, i),
                "pid": pid,
                "alive": liveness.liveness(pid, start, int(s["pid_ns"])).value if pid else None,
                "position": read, "lag_bytes": max(0, write - read),
                "next_seq": _seq_at(seg, read, write), "lost": int(s["lost"]),
                "lag_messages": 0,
            })
            stored_next.append(int(s["next_seq"]))
        oldest = _oldest_seq(seg, h)  # before counting: oldest <= messages
        messages = _message_count(seg, h)
        for c, stored in zip(consumers, stored_next):
            # Messages it can still receive (as Consumer.pending counts them): from the
            # seq at its position, or where the producer overwrote that (a lapped slot
            # of an overwrite ring), from the oldest message left; else from the next
            # seq the consumer stored at its last release; None if nothing says.
            first = c["next_seq"]
            if first is None and c["position"] < tail:
                first = oldest
            if first is None and stored:
                first = stored - 1
            c["lag_messages"] = 0 if c["lag_bytes"] == 0 else \
                None if first is None else max(0, messages - first)
        return {
            "name": name, "namespace": ns, "layout_version": h["version"],
            "capacity": cap,
            "on_full": "overwrite" if h["flags"] & layout.FLAG_OVERWRITE else "block",
            "slot_count": h["slot_count"], "segment_size": h["segment_size"],
            "created_at_ns": h["created_at_ns"],
            "write": write, "tail": tail, "fill": min(1.0, (write - tail) / cap),
            "messages": messages, "oldest_seq": oldest,
            "producer": producer, "consumers": consumers,
            # the producer sleeps for room (block rings): a consumer holds it back
            "producer_waiting": bool(h["producer_sleep"] & 1) and producer is not None,
        }
    finally:
        seg.close()


def messages_from(words: memoryview, data: memoryview, capacity: int, pos: int,
                  first_seq: int | None = None, *, name: str = "") -> int | None:
    """How many messages are published at or after byte position ``pos`` (a record
    boundary, such as a consumer's position), counted by seq: the seq after the last
    published record minus the seq at ``pos`` (``first_seq`` if the caller knows it,
    else read from the record there).  Where the producer overwrote ``pos`` (an
    overwrite ring), counting starts at the oldest message still in the ring.  Reads
    only; a snapshot of a ring a live producer may be writing.  None if unknown: a
    producer publishing too fast for a consistent look (rare), or nothing readable at
    ``pos``.  Raises :class:`CorruptRing` for an intact record that breaks the ring's
    rules."""
    write = words[H_WRITE]
    if pos >= write:
        return 0
    last = ring.last_record(words, data, capacity, name=name)
    if last is None:
        return None
    if words[H_TAIL] > pos:  # overwritten: what is left starts at the oldest record
        first_seq = _oldest_in(words, data, capacity, name)
    elif first_seq is None:
        try:
            first_seq = ring.seq_at(data, capacity, pos, write, words[H_TAIL], name=name)
        except CorruptRing:
            if words[H_TAIL] <= pos:
                raise
            first_seq = _oldest_in(words, data, capacity, name)
    if first_seq is None:
        return None
    return max(0, last.seq + 1 - first_seq)


# A live producer keeps writing while we look, and may overwrite (below its tail) what
# we read: every read here is checked against the tail afterwards, a record the tail
# passed is "unknown" (None), never an error; an intact impossible one is CorruptRing.

def _seq_at(seg: Segment, pos: int, write: int) -> int | None:
    """The seq of the first message at or after ``pos`` (a consumer's position), None
    if none is published or it was overwritten."""
    w = seg.words
    try:
        seq = ring.seq_at(seg.data, seg.capacity, pos, write, w[H_TAIL], name=seg.ring)
    except CorruptRing:
        if w[H_TAIL] > pos:
            return None
        raise
    return None if w[H_TAIL] > pos else seq


def _message_count(seg: Segment, h: dict) -> int:
    """Messages ever published: the seq after the last record."""
    if seg.words[H_WRITE] == 0:
        return 0
    rec = ring.last_record(seg.words, seg.data, seg.capacity, name=seg.ring)
    return h["count"] if rec is None else rec.seq + 1


def _oldest_seq(seg: Segment, h: dict) -> int | None:
    """The seq of the oldest message the ring still holds (None if it holds none)."""
    return _oldest_in(seg.words, seg.data, seg.capacity, seg.ring)


def _oldest_in(w: memoryview, data: memoryview, cap: int, name: str) -> int | None:
    for _ in range(_TRIES):
        pos = ring.oldest(w, data, cap, layout.block_shift(cap), name=name)
        write = w[H_WRITE]
        got = ring.read_checked(w, data, cap, pos, write, name=name) \
            if pos < write else None
        if got is not None and got[0].flags & REC_PAD:
            pos += got[0].size
            got = ring.read_checked(w, data, cap, pos, write, name=name) \
                if pos < write else None
        if got is not None:
            return got[0].seq
        if pos >= write:
            return None
    return None  # overwritten as fast as we looked: unknown


def list_locks(namespace: str | None = None) -> list[LockInfo]:
    """Every lock file of the namespace with its holders, as plain data:
    ``{"name", "path", "holders": [{"pid", "mode", "since", "start_time", "waiting"}]}``;
    an entry that is not a lock file of ours (a FIFO, a symlink, another user's file)
    is listed with an ``error`` string and no holders, and never opened."""
    ns = naming.resolve_namespace(namespace)
    directory = naming.lock_dir(ns)
    try:
        problem = entry_problem(directory, "dir", own=False)
        if problem:
            return [{"name": os.path.basename(directory), "path": directory,
                     "holders": [], "error": f"lock directory {problem}"}]
        dir_fd = open_entry(directory, own=False, kind="dir")
    except FileNotFoundError:
        return []
    except OSError as e:
        return [{"name": os.path.basename(directory), "path": directory, "holders": [],
                 "error": _one_line(e)}]
    try:
        return [lock for name in sorted(os.listdir(dir_fd))
                if (lock := _lock_entry(directory, name, dir_fd)) is not None]
    finally:
        os.close(dir_fd)


def _lock_entry(directory: str, name: str, dir_fd: int) -> LockInfo | None:
    """``list_locks``'s entry for file ``name`` of the lock directory open as
    ``dir_fd``, or None for what is not a lock file (or is gone)."""
    if name.endswith(("@lease", "@fence", "@stats")) or name.endswith(".tmp") or \
            "@" in name and name.endswith(".wake"):
        return None  # not flock-held: leases, fences, balancer stats, wake-up FIFOs
    path = f"{directory}/{name}"
    try:
        problem = entry_problem(path, own=False, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    if problem:
        return {"name": name, "path": path, "holders": [], "error": problem}
    # lock_holders opens the file in the checked lock directory itself, never through
    # a symlink (lockdir.open_path).
    return {"name": name, "path": path,
            "holders": [h.to_dict() for h in lock_holders(path)]}


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, ShmbusError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__
