"""Every program in examples/ runs to completion and leaves nothing behind.

Each example runs as a user would run it (``python examples/NAME.py``), in a namespace
of the test's own (examples honour ``SHMBUS_NAMESPACE``), from a directory other than
the repository (so it imports the installed names, as a user's program does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_there_are_examples():
    assert EXAMPLES, "examples/ is empty"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, ns, tmp_path):
    env = dict(os.environ, SHMBUS_NAMESPACE=ns)
    # The source tree on the path, as for the tests, but run from elsewhere.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(path.parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, f"{path.name} failed:\n{out.stdout}\n{out.stderr}"
    assert out.stdout.strip(), f"{path.name} printed nothing"
