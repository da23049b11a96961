"""The string choices of public parameters, as ``Literal`` types a type checker
enforces: ``Producer(on_full=...)``, ``Consumer(start=...)``, ``wait=...``,
``Lease(on_stale=...)``, ``send_obj(codec=...)``.  Each function still checks its
argument at run time (ValueError for anything else)."""

from __future__ import annotations

from typing import Literal

__all__ = ["OnFull", "Start", "WaitName", "OnStale", "CodecName"]

OnFull = Literal["block", "overwrite"]
Start = Literal["latest", "earliest"]
WaitName = Literal["spin", "yield", "sleep", "adaptive"]
OnStale = Literal["refuse", "kill"]
CodecName = Literal["pickle", "json", "msgpack", "msgspec"]
