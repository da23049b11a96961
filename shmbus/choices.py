"""The string choices of public parameters (and ``Payload``, what ``send`` takes), as ``Literal`` types a type checker
enforces: ``Producer(on_full=...)``, ``Consumer(start=...)``, ``wait=...``,
``Lease(on_stale=...)``, ``send_obj(codec=...)``.  Each function still checks its
argument at run time (ValueError for anything else)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Union

__all__ = ["OnFull", "Start", "WaitName", "OnStale", "CodecName", "Payload"]

OnFull = Literal["block", "overwrite"]
Start = Literal["latest", "earliest"]
WaitName = Literal["spin", "yield", "sleep", "adaptive"]
OnStale = Literal["refuse", "kill"]
CodecName = Literal["pickle", "json", "msgpack", "msgspec"]

if TYPE_CHECKING:
    import numpy as np
    from typing_extensions import Buffer

    # What send() takes: any buffer (bytes, bytearray, memoryview, ...), and numpy
    # arrays, whose stubs say they are buffers only from Python 3.12 on.
    Payload = Union[Buffer, "np.ndarray[Any, Any]"]
