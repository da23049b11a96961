"""Build the optional compiled hot path (shmbus._hotpath); everything else is in
pyproject.toml.  Without a C compiler (or Python headers) the build of the extension
fails, setuptools says so, and the install goes on: shmbus then runs its pure-Python
path (``shmbus.compiled`` is False; ``shmbus doctor`` says why)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

CSRC = Path("shmbus/csrc")
SOURCES = sorted(str(p) for p in CSRC.glob("*.c"))


def source_hash() -> str:
    """The hash of the C sources the module is built from (every .c and .h file of
    shmbus/csrc, by name and content; shmbus.hotpath computes the same): a built module
    is used only if it was built from the sources beside it, never a stale build."""
    h = hashlib.sha256()
    for path in sorted(CSRC.glob("*.[ch]")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


DIGEST = source_hash()

setup(ext_modules=[Extension(
    "shmbus._hotpath", SOURCES, optional=True, depends=[str(CSRC / "hotpath.h")],
    define_macros=[("SHMBUS_SOURCE_HASH", f'"{DIGEST}"')],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
)])
