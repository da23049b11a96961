"""Both hot paths in one test process: the compiled module (if built), a parameter
over the paths, and a way to open a Producer or Consumer on the path asked for."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from shmbus import hotpath

native, why = hotpath.load_native()
needs_build = pytest.mark.skipif(native is None, reason=f"no compiled build: {why}")
PATHS = [pytest.param(True, id="compiled", marks=needs_build),
         pytest.param(False, id="pure")]


def on_path(compiled: bool, make: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``make(*args, **kw)`` (a Producer or Consumer) on the path asked for, whichever
    this process runs."""
    saved = hotpath.compiled, hotpath.native
    hotpath.compiled, hotpath.native = compiled, native if compiled else None
    try:
        return make(*args, **kw)
    finally:
        hotpath.compiled, hotpath.native = saved
