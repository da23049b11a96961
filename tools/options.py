"""Option types shared by the commands: bad values are bad usage (exit 2, one line)."""

from __future__ import annotations

import math

import click


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
