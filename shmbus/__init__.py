"""shmbus: a message bus for processes on one Linux host, in shared memory.

Public names only; see README.md for a tour and DESIGN.md for the contract.
"""

from __future__ import annotations

from .consumer import Consumer, Message
from .errors import (AlreadyHeld, Closed, CorruptRing, DurableBusy, InvalidName, LayoutMismatch, LeaseLost,
                     MessageTooLarge, NotHeld, PermissionDenied, RingBusy, RingNotFound, ShmbusError,
                     ShmFull, Timeout)
from .errors import CodecUnavailable, FrameError, Released
from .hotpath import compiled
from .inbox import Inbox
from .info import (ConsumerInfo, LeaseEntry, LeaseHolder, LockHolderInfo, LockInfo, ProducerInfo,
                   RingInfo, RingSummary)
from .introspect import inspect, list_locks, list_rings
from .lease import Fence, Lease, list_leases
from .layout import LAYOUT_VERSION
from .lock import FileLock
from .outbox import Outbox
from .poller import Poller
from .producer import Producer
from .unlink import unlink
from .wait import Adaptive, BusySpin, Sleeping, WaitStrategy, Yielding

__version__ = "0.1.0"

__all__ = [
    "Producer", "Consumer", "Message", "Inbox", "Outbox", "FileLock", "Lease", "Fence", "WaitStrategy",
    "BusySpin", "Yielding", "Sleeping", "Adaptive", "Poller",
    "list_rings", "inspect", "list_locks", "list_leases", "unlink", "LAYOUT_VERSION",
    "ShmbusError", "RingNotFound", "RingBusy", "DurableBusy", "LayoutMismatch",
    "CorruptRing", "MessageTooLarge", "InvalidName", "Timeout", "LeaseLost", "NotHeld",
    "ShmFull", "Closed", "PermissionDenied", "AlreadyHeld", "compiled",
    "FrameError", "CodecUnavailable", "Released",
    "RingSummary", "RingInfo", "ProducerInfo", "ConsumerInfo", "LockInfo", "LockHolderInfo",
    "LeaseHolder", "LeaseEntry",
]
