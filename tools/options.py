"""Options and option types shared by the commands (bad values are bad usage: exit 2,
one line).  Command modules import them from here, never from ``cli.py`` (which
imports every command module)."""

from __future__ import annotations

import json
import math
import re

import click

namespace_option = click.option(
    "--namespace", "-n", default=None, envvar="SHMBUS_NAMESPACE",
    help="Namespace of the rings (default: $SHMBUS_NAMESPACE, else shmbus-UID, one "
    "per user).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON (stable keys).")


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


class Seconds(click.ParamType):
    """A finite number of seconds >= 0 (``nan``, ``inf`` and negatives are refused: a
    wait that never ends, or a sleep that raises, is never what was meant)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a finite number of seconds >= 0", param, ctx)
        return seconds


SECONDS = Seconds()


class Size(click.ParamType):
    """A number of bytes as ``shmbus ls`` prints sizes: plain bytes (``65536``) or with
    a binary suffix ``K``, ``M``, ``G``, ``T`` (1024-based; ``1M``, ``64K``, ``1.5G``;
    case and a trailing ``B``/``iB`` do not matter: ``64KiB``, ``512B``), within
    ``[low, high]`` bytes.  A fraction of a byte rounds up."""

    name = "size"
    _UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    _RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            m = self._RE.fullmatch(str(value))
            if m is None:
                self.fail(f"{value!r} is not a size: expected bytes (65536) or a number "
                          "with K, M, G or T (64K, 1M, 1.5G), as `shmbus ls` prints "
                          "them", param, ctx)
            n = math.ceil(float(m.group(1)) * self._UNITS[m.group(2).upper()])
        if not self.low <= n <= self.high:
            self.fail(f"{value!r} ({n} bytes) is out of range: expected {_short(self.low)} "
                      f"to {_short(self.high)}", param, ctx)
        return n


def _short(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= Size._UNITS[unit] and n % Size._UNITS[unit] == 0:
            return f"{n // Size._UNITS[unit]}{unit}"
    return f"{n} bytes"
