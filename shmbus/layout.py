"""The binary layout of a ring segment: the only module that knows offsets.

::

    0      +--------------------------------------------------------------+
           | line 0  identity: magic, version, header size, capacity,     |
           |         flags, slot count/size, data offset, created-at,     |
           |         segment size                 (written once, creator) |
    64     | line 1  producer: pid, start time, epoch, since,             |
           |         PID namespace                       (producer)|
    128    | line 2  WRITE: end of the last published record     (producer)|
    192    | line 3  LAST record start, COUNT of messages        (producer)|
    256    | line 4  TAIL: data below it may be overwritten      (producer)|
    320    | line 5  GATE: lowest read position the producer honours,     |
           |         SCAN epoch (odd while it rescans the slots) (producer)|
    384    | line 6  producer SLEEP epoch (odd while waiting)    (producer)|
    448    | line 7  slot GENERATION (bumped under the slots lock)         |
    512    | lines 8-15  CHECKPOINTS: 64 words; word b % 64 holds the      |
           |         position of the first record starting at or after   |
           |         the start of block b (the ring is 64 blocks)        |
    1024   | line 16 SLEEPERS: byte i (i < 7) is 1 while the consumer of   |
           |         slot i sleeps (written by it); byte 7 is 1 while a   |
           |         slot >= 7 is in use (written under the slots lock)  |
    1088   +--------------------------------------------------------------+
           | slot 0  line 0  READ position, (spare), lost, SLEEP epoch,    |
           |                 NEXT seq (overwrite rings)     (its consumer)|
           |         line 1  state, pid, start time, attached-at, name len,|
           |                 PID namespace           (under slots lock)   |
           |         lines 2-3  durable name (utf-8, up to 100 bytes)      |
           | slot 1 ... slot_count-1          (256 bytes each)             |
    data   +--------------------------------------------------------------+
           | capacity bytes: 8-byte aligned records, never wrapping        |
           +--------------------------------------------------------------+

    record: payload length u32 | key length u16 | flags u16 | seq u64 |
            timestamp_ns u64 | key | payload | zero padding to 8 bytes

Every field is little-endian.  Each 8-byte field has exactly one writer, which stores it
as one aligned 8-byte access (an element of a ``memoryview.cast('Q')``: CPython copies
such an item with a fixed-size 8-byte ``memcpy``, one ``mov`` on x86-64, so it never
tears); readers load it the same way.  Together with x86-64's total store order (stores
become visible in program order, loads are not reordered with older loads) this makes
the ring lock-free without compare-and-swap.  ``MAGIC`` is written last by the creator:
a segment with the right magic has a complete header.

The producer moves TAIL forward in chunks before it overwrites anything below it, so a
reader that copied data at position p and then still finds ``TAIL <= p`` knows the copy
is intact; TAIL need not be a record boundary.  The checkpoint table gives readers a
record boundary at or after TAIL (the oldest intact record, give or take one block)
without walking the ring.

A record that does not fit before the end of the data area is preceded by a padding
record (flag ``PAD``, payload length: the rest of the data area after its header) that
fills the rest; when fewer than ``RECORD_HEADER`` bytes are left, the rest is padding
without a header.  So every payload is contiguous.  Seqs of successive records go up
by one.  Readers check all of this (:mod:`shmbus.ring`): a record that breaks it is
corruption, never a message.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import CorruptRing, LayoutMismatch

MAGIC = int.from_bytes(b"SHMBUS\x01\x00", "little")
LAYOUT_VERSION = 3          # 2: PID namespaces of the producer and of each slot;
                            # 3: a sleep epoch's FD_WAIT bit (a FIFO wake-up)
CACHE_LINE = 64
PAGE = 4096

HEADER_SIZE = 17 * CACHE_LINE
SLEEPERS_OFFSET = 16 * CACHE_LINE
FLAGGED_SLOTS = 7          # slots with their own sleeper byte; byte 7 says "more"
CHECKPOINTS = 64
SLOT_SIZE = 4 * CACHE_LINE
DEFAULT_SLOTS = 64
MAX_SLOTS = 1024
MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 40

FLAG_OVERWRITE = 1

HEADER_DTYPE = np.dtype({
    "names": ["magic", "version", "header_size", "capacity", "flags", "slot_count",
              "slot_size", "data_offset", "created_at_ns", "segment_size",
              "producer_pid", "producer_start", "producer_epoch", "producer_since_ns",
              "producer_pid_ns",
              "write", "last", "count", "tail", "gate", "scan",
              "producer_sleep", "generation", "checkpoints", "sleepers"],
    "formats": ["<u8", "<u4", "<u4", "<u8", "<u8", "<u4", "<u4", "<u8", "<u8", "<u8",
                "<u8", "<u8", "<u8", "<u8", "<u8",
                "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8",
                ("<u8", (CHECKPOINTS,)), ("u1", (8,))],
    "offsets": [0, 8, 12, 16, 24, 32, 36, 40, 48, 56,
                64, 72, 80, 88, 96,
                128, 192, 200, 256, 320, 328, 384, 448, 512, 1024],
    "itemsize": HEADER_SIZE,
})

SLOT_DTYPE = np.dtype({
    "names": ["read", "spare", "lost", "sleep", "next_seq",
              "state", "pid", "start_time", "attached_ns", "name_len", "pid_ns", "name"],
    "formats": ["<u8", "<u8", "<u8", "<u8", "<u8",
                "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "S128"],
    "offsets": [0, 8, 16, 24, 32, 64, 72, 80, 88, 96, 104, 128],
    "itemsize": SLOT_SIZE,
})

# Slot states.
SLOT_FREE = 0
SLOT_ACTIVE = 1        # an anonymous consumer; reclaimed when its process is dead
SLOT_DURABLE = 2       # a durable cursor; kept (and honoured) while nobody is attached
DURABLE_NAME_MAX = 128


def _word(dtype: np.dtype, field: str) -> int:
    return dtype.fields[field][1] // 8


# Word indexes (into a memoryview cast to 'Q') of the 8-byte fields.
H_MAGIC = _word(HEADER_DTYPE, "magic")
H_FLAGS = _word(HEADER_DTYPE, "flags")
H_PRODUCER_PID = _word(HEADER_DTYPE, "producer_pid")
H_PRODUCER_START = _word(HEADER_DTYPE, "producer_start")
H_PRODUCER_EPOCH = _word(HEADER_DTYPE, "producer_epoch")
H_PRODUCER_SINCE = _word(HEADER_DTYPE, "producer_since_ns")
# The inode of the producer's PID namespace (/proc/self/ns/pid), 0 if unknown: its pid
# means nothing in another namespace (containers sharing /dev/shm; see liveness).
H_PRODUCER_PID_NS = _word(HEADER_DTYPE, "producer_pid_ns")
H_WRITE = _word(HEADER_DTYPE, "write")
H_LAST = _word(HEADER_DTYPE, "last")
H_COUNT = _word(HEADER_DTYPE, "count")
H_TAIL = _word(HEADER_DTYPE, "tail")
H_GATE = _word(HEADER_DTYPE, "gate")
H_SCAN = _word(HEADER_DTYPE, "scan")
H_PRODUCER_SLEEP = _word(HEADER_DTYPE, "producer_sleep")
H_GENERATION = _word(HEADER_DTYPE, "generation")
H_CHECKPOINTS = _word(HEADER_DTYPE, "checkpoints")
H_SLEEPERS = _word(HEADER_DTYPE, "sleepers")

# Word offsets inside a slot (add slot_word(i)).
S_READ = _word(SLOT_DTYPE, "read")
S_LOST = _word(SLOT_DTYPE, "lost")
# Overwrite rings: 1 + the seq of the message after the last one released (0: unknown),
# so that a consumer lapped while away can count what it lost.
S_NEXT_SEQ = _word(SLOT_DTYPE, "next_seq")
S_SLEEP = _word(SLOT_DTYPE, "sleep")
# A sleep epoch (S_SLEEP, H_PRODUCER_SLEEP) is odd while its waiter sleeps; with this bit
# set too, the waiter sleeps on its wake-up FIFO and is woken by a byte written there,
# not by a post of its semaphore (see shmbus.wakeup).  A release before version 3 would
# post the semaphore instead, which is why this bit bumped the version.
FD_WAIT = 1 << 62
# The spare word: a balancer worker publishes there what it has received (its consumer
# is the only writer; see balancer.worker); other consumers leave it alone.
S_RECEIVED = _word(SLOT_DTYPE, "spare")
S_STATE = _word(SLOT_DTYPE, "state")
S_PID = _word(SLOT_DTYPE, "pid")
S_START = _word(SLOT_DTYPE, "start_time")
S_ATTACHED = _word(SLOT_DTYPE, "attached_ns")
S_NAME_LEN = _word(SLOT_DTYPE, "name_len")
S_PID_NS = _word(SLOT_DTYPE, "pid_ns")       # as H_PRODUCER_PID_NS, for the consumer
SLOT_NAME_OFFSET = SLOT_DTYPE.fields["name"][1]

RECORD = struct.Struct("<IHHQQ")
RECORD_HEADER = RECORD.size          # 24
REC_PAD = 1                          # record flag: padding to the end of the data area
REC_REDELIVERY_SHIFT = 8             # flags bits 8-15: times delivered before (balancer)
RECORD_DTYPE = np.dtype([("length", "<u4"), ("key_length", "<u2"), ("flags", "<u2"),
                         ("seq", "<u8"), ("timestamp_ns", "<u8")])  # == RECORD
RECORD_HEAD = struct.Struct("<IHH")    # payload length, key length, flags (at 0)
RECORD_RESTAMP = struct.Struct("<HQ")  # flags, seq: rewritten when a record is forwarded
RECORD_RESTAMP_OFFSET = 6
ALIGN = 8


def slot_word(i: int) -> int:
    """Word index of slot ``i``'s first field."""
    return (HEADER_SIZE + i * SLOT_SIZE) // 8


def slot_offset(i: int) -> int:
    return HEADER_SIZE + i * SLOT_SIZE


# -- the record descriptor: size, alignment, padding ----------------------------------
# Hot paths inline record_size as ``(RECORD_HEADER + 7 + klen + plen) & -8`` and the
# padding rule as ``idx > pad_limit``; tests/test_padding.py checks that they agree.

def record_size(key_len: int, payload_len: int) -> int:
    """Bytes a record with that key and payload occupies (header and alignment)."""
    return (RECORD_HEADER + key_len + payload_len + ALIGN - 1) & ~(ALIGN - 1)


def max_record(capacity: int) -> int:
    """The largest record a ring accepts: half its capacity, so that a record plus the
    padding before it always fits in an otherwise empty ring.  (So padding never
    starts at index 0: a record always fits in a whole lap.)"""
    return capacity // 2


def pad_limit(capacity: int) -> int:
    """The last index of the data area at which a record header still fits.  Past it
    (fewer than ``RECORD_HEADER`` bytes left) the rest of the data area is padding
    without a header; at or before it, padding is a record with flag ``PAD``."""
    return capacity - RECORD_HEADER


def padding_before(idx: int, capacity: int, size: int) -> int:
    """Bytes of padding a record of ``size`` bytes placed at index ``idx`` needs
    first: the rest of the data area if the record does not fit before its end,
    else 0."""
    return capacity - idx if idx + size > capacity else 0


def padding_length(idx: int, capacity: int) -> int | None:
    """The payload length the header of a padding record at index ``idx`` carries
    (the rest of the data area after that header), or None when fewer than a header's
    bytes are left there: padding without a header."""
    return None if idx > pad_limit(capacity) else capacity - idx - RECORD_HEADER


def data_offset(slot_count: int) -> int:
    return -(-(HEADER_SIZE + slot_count * SLOT_SIZE) // PAGE) * PAGE


def segment_size(capacity: int, slot_count: int) -> int:
    return data_offset(slot_count) + capacity


def round_capacity(capacity: object) -> int:
    """``capacity`` rounded up to a power of two; ValueError if it is not usable."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise ValueError(f"capacity must be an int number of bytes, got {capacity!r}")
    if capacity < MIN_CAPACITY or capacity > MAX_CAPACITY:
        raise ValueError(
            f"capacity {capacity} bytes is out of range: expected {MIN_CAPACITY} to "
            f"{MAX_CAPACITY} bytes (it is rounded up to a power of two)")
    return 1 << (capacity - 1).bit_length()


def init_header(buf: memoryview, *, capacity: int, flags: int, slot_count: int,
                created_at_ns: int) -> None:
    """Write a fresh header into the zero-filled ``buf``, magic last."""
    hdr = np.frombuffer(buf, HEADER_DTYPE, 1)
    hdr["version"] = LAYOUT_VERSION
    hdr["header_size"] = HEADER_SIZE
    hdr["capacity"] = capacity
    hdr["flags"] = flags
    hdr["slot_count"] = slot_count
    hdr["slot_size"] = SLOT_SIZE
    hdr["data_offset"] = data_offset(slot_count)
    hdr["created_at_ns"] = created_at_ns
    hdr["segment_size"] = segment_size(capacity, slot_count)
    del hdr
    buf.cast("Q")[H_MAGIC] = MAGIC


def read_header(buf: memoryview | bytes) -> dict:
    """The header fields as a dict of ints (no validation; checkpoints left out)."""
    hdr = np.frombuffer(buf, HEADER_DTYPE, 1)[0]
    return {name: int(hdr[name]) for name in HEADER_DTYPE.names
            if name not in ("checkpoints", "sleepers")}


def block_shift(capacity: int) -> int:
    """log2 of the size of one checkpoint block (capacity / CHECKPOINTS)."""
    return capacity.bit_length() - 1 - (CHECKPOINTS.bit_length() - 1)


def check_header(buf: memoryview | bytes, name: str, size: int) -> dict:
    """Validate the header of a segment of ``size`` bytes; return its fields.

    Raises :class:`CorruptRing` for a segment that is not a shmbus ring or is damaged,
    :class:`LayoutMismatch` for one made by another layout version.
    """
    if size < HEADER_SIZE:
        raise CorruptRing(
            f"segment of ring {name!r} is {size} bytes, smaller than a shmbus header "
            f"({HEADER_SIZE} bytes): it is not a shmbus ring or was truncated; remove it "
            f"with `shmbus rm {name}`", name=name, found=size)
    h = read_header(buf)
    if h["magic"] != MAGIC:
        raise CorruptRing(
            f"segment of ring {name!r} is not a shmbus ring: expected magic "
            f"{MAGIC:#018x}, found {h['magic']:#018x}; remove it with `shmbus rm {name}` "
            "if nothing else uses that name", name=name, expected=MAGIC, found=h["magic"])
    if h["version"] != LAYOUT_VERSION:
        raise LayoutMismatch(
            f"ring {name!r} has layout version {h['version']}, this shmbus reads version "
            f"{LAYOUT_VERSION}: use the shmbus release that created it, or remove it with "
            f"`shmbus rm {name}`", name=name, expected=LAYOUT_VERSION, found=h["version"])
    cap, slots = h["capacity"], h["slot_count"]
    problems = []
    if cap < MIN_CAPACITY or cap > MAX_CAPACITY or cap & (cap - 1):
        problems.append(f"capacity {cap} is not a power of two in range")
    if h["header_size"] != HEADER_SIZE or h["slot_size"] != SLOT_SIZE:
        problems.append(f"header/slot sizes {h['header_size']}/{h['slot_size']} are not "
                        f"{HEADER_SIZE}/{SLOT_SIZE}")
    if not 1 <= slots <= MAX_SLOTS:
        problems.append(f"slot count {slots} is not in 1..{MAX_SLOTS}")
    elif h["data_offset"] != data_offset(slots) or h["segment_size"] != segment_size(cap, slots):
        problems.append("data offset or segment size disagree with capacity and slots")
    elif size < h["segment_size"]:
        problems.append(f"segment is {size} bytes, its header says {h['segment_size']}")
    if not problems and not _positions_ok(buf, h, cap):
        problems.append(f"positions are inconsistent (tail {h['tail']}, write {h['write']})")
    if problems:
        raise CorruptRing(
            f"ring {name!r} has a corrupt header: {'; '.join(problems)}; remove it with "
            f"`shmbus rm {name}`", name=name, found="; ".join(problems))
    return h


def _positions_ok(buf: memoryview | bytes, h: dict, cap: int) -> bool:
    """``tail <= write <= tail + capacity``.  ``h`` is one copy of the header, taken
    while a live producer may move both: if the copy mixes two moments, read the words
    again in an order that live values always pass (both only grow): write, tail,
    write."""
    if h["tail"] <= h["write"] and h["write"] - h["tail"] <= cap:
        return True
    with memoryview(buf) as whole, whole[:HEADER_SIZE] as head, head.cast("Q") as words:
        write_before, tail, write_after = words[H_WRITE], words[H_TAIL], words[H_WRITE]
    return tail <= write_after and write_before - tail <= cap


def read_slots(buf: memoryview | bytes, slot_count: int) -> np.ndarray:
    """A read-only structured array of the slot table (for inspection)."""
    arr = np.frombuffer(buf, SLOT_DTYPE, slot_count, offset=HEADER_SIZE)
    return arr


def slot_name(buf: memoryview, i: int) -> str | None:
    words = buf.cast("Q")
    n = words[slot_word(i) + S_NAME_LEN]
    if not n:
        return None
    off = slot_offset(i) + SLOT_NAME_OFFSET
    return bytes(buf[off:off + min(n, DURABLE_NAME_MAX)]).decode(errors="replace")


def write_slot_name(buf: memoryview, i: int, name: str | None) -> None:
    raw = (name or "").encode()
    off = slot_offset(i) + SLOT_NAME_OFFSET
    buf[off:off + DURABLE_NAME_MAX] = raw.ljust(DURABLE_NAME_MAX, b"\0")
    buf.cast("Q")[slot_word(i) + S_NAME_LEN] = len(raw)


def record_headers(data: memoryview, idx: int, count: int, stride: int) -> np.ndarray:
    """The headers of ``count`` records of ``stride`` bytes each, the first at ``idx``
    of the data area, as a structured array (a view: writing it writes the ring)."""
    return np.ndarray((count,), RECORD_DTYPE, buffer=data, offset=idx, strides=(stride,))


def record_payloads(data: memoryview, idx: int, count: int, stride: int,
                    dtype: np.dtype) -> np.ndarray:
    """The payloads (no key) of the same records, one ``dtype`` element each: a view."""
    return np.ndarray((count,), dtype, buffer=data, offset=idx + RECORD_HEADER,
                      strides=(stride,))


def record_rows(data: memoryview, idx: int, count: int, stride: int) -> np.ndarray:
    """``count`` whole records of ``stride`` bytes each from ``idx``, one uint8 row
    per record (a view)."""
    return np.ndarray((count, stride), np.uint8, buffer=data, offset=idx)


def uniform_prefix(data: memoryview, idx: int, count: int, stride: int,
                   flag_mask: int, first_seq: int | None = None) -> tuple[int, np.ndarray]:
    """How many of the ``count`` records at ``idx`` (as if each had ``stride`` bytes)
    really have ``stride`` bytes, none of ``flag_mask``'s flags and (if ``first_seq``
    is given) the seqs ``first_seq``, ``first_seq + 1``, ..., counting from the first;
    and their headers."""
    headers = record_headers(data, idx, count, stride)
    # length, key length and flags as one word: usually every record repeats the first
    heads = np.ndarray((count,), "<u8", buffer=data, offset=idx, strides=(stride,))
    first = int(heads[0])
    fits = None
    if record_size(first >> 32 & 0xFFFF, first & 0xFFFFFFFF) == stride and \
            not first >> 48 & flag_mask:
        fits = heads == first
    if fits is None or not fits.all():  # another split of the same size fits too
        sizes = (RECORD_HEADER + ALIGN - 1 + headers["key_length"].astype(np.int64)
                 + headers["length"]) & ~(ALIGN - 1)
        fits = (sizes == stride) & (headers["flags"] & flag_mask == 0)
    if first_seq is not None:
        fits &= headers["seq"] == np.arange(first_seq, first_seq + count, dtype=np.uint64)
    n = count if fits.all() else int(fits.argmin())
    return n, headers[:n]
