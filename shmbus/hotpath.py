"""Which hot path runs: compiled (``shmbus._hotpath``, C) or pure Python.

Both write and read the same bytes (the layout is :mod:`shmbus.layout`'s, passed to
the compiled types as numbers) and share their state objects, so a compiled producer
and a pure-Python consumer, or the reverse, interoperate on one ring.

``SHMBUS_PURE_PYTHON=1`` forces the pure path; ``SHMBUS_REQUIRE_COMPILED=1`` makes
``import shmbus`` fail without the compiled one.  A built module is used only if it
was built from the C sources beside this file (shmbus/csrc) (its hash is compiled in): a stale build
(an installed copy older than the source tree the tests run from, say) is never
mistaken for the current one.  When running from a source tree that was installed
with ``pip install .`` (the README's test command), the module is found in the
installed copy if the source tree has none.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from . import layout

__all__ = ["native", "compiled", "reason"]

_HERE = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0", "false", "no")


def _source_hash() -> str | None:
    """The hash setup.py compiles into the module (see its ``source_hash``)."""
    h = hashlib.sha256()
    try:
        paths = sorted((_HERE / "csrc").glob("*.[ch]"))
        for path in paths:
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError:
        return None
    return h.hexdigest()[:16] if paths else None


def _candidates() -> list[Path]:
    """Built modules: beside this file first, then in other copies of the package on
    sys.path (an installed one, when the tests run from the source tree)."""
    out = []
    for entry in [str(_HERE.parent), *sys.path]:
        folder = Path(entry or ".").resolve() / "shmbus"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = folder / f"_hotpath{suffix}"
            if path.is_file() and path not in out:
                out.append(path)
    return out


def _load() -> tuple[ModuleType | None, str]:
    if _flag("SHMBUS_PURE_PYTHON"):
        return None, "SHMBUS_PURE_PYTHON is set"
    return load_native()


def load_native() -> tuple[ModuleType | None, str]:
    """The compiled module built from the source beside this file, whatever the
    environment says (for tests that compare both paths), and where it came from or
    why there is none."""
    if "shmbus._hotpath" in sys.modules:
        module = sys.modules["shmbus._hotpath"]
        return module, f"compiled module {module.__file__}"
    want = _source_hash()
    found = _candidates()
    stale = []
    for path in found:
        spec = importlib.util.spec_from_file_location("shmbus._hotpath", path)
        if spec is None or spec.loader is None:
            continue
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as e:
            stale.append(f"{path}: {e}")
            continue
        if want is not None and getattr(module, "SOURCE_HASH", None) != want:
            stale.append(f"{path} was built from another version of shmbus/csrc")
            continue
        if getattr(module, "RECORD_FORMAT", None) != layout.RECORD.format:
            stale.append(f"{path} writes records as {module.RECORD_FORMAT!r}, the layout "
                         f"says {layout.RECORD.format!r}")
            continue
        sys.modules["shmbus._hotpath"] = module
        return module, f"compiled module {path}"
    if stale:
        return None, "no usable build: " + "; ".join(stale)
    return None, ("the extension was not built (no C compiler or Python headers when "
                  "shmbus was installed?)")


native, reason = _load()
compiled = native is not None

if not compiled and _flag("SHMBUS_REQUIRE_COMPILED"):
    raise ImportError(
        f"SHMBUS_REQUIRE_COMPILED is set but shmbus's compiled hot path is not available: "
        f"{reason}.  Install a C compiler and the Python headers and reinstall shmbus "
        "(pip install --force-reinstall --no-cache-dir .), or unset "
        "SHMBUS_REQUIRE_COMPILED to run the pure-Python path")
