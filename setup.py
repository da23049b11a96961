"""Build the optional compiled hot path (shmbus._hotpath); everything else is in
pyproject.toml.  Without a C compiler (or Python headers) the build of the extension
fails, setuptools says so, and the install goes on: shmbus then runs its pure-Python
path (``shmbus.compiled`` is False; ``shmbus doctor`` says why)."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "shmbus/_hotpath.c"
# The hash of the C source the module was built from: shmbus.hotpath uses a built
# module only if it was built from the source beside it (never a stale build).
DIGEST = hashlib.sha256(Path(SOURCE).read_bytes()).hexdigest()[:16]

setup(ext_modules=[Extension(
    "shmbus._hotpath", [SOURCE], optional=True,
    define_macros=[("SHMBUS_SOURCE_HASH", f'"{DIGEST}"')],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
)])
