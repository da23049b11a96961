"""The ``shmbus`` command: the group, shared options and error translation.

Library errors become one clear line on stderr at this boundary: exit 1 for a failure
(a ring that does not exist, a corrupt segment, a permission problem, an odd entry in
``/dev/shm``), exit 2 for bad usage (click's own, and invalid names).  Never a
traceback for an expected error.
"""

from __future__ import annotations

import sys

import click

import shmbus

# The shared options live in options.py (command modules import them from there); the
# names stay importable from here for code that still does.
from .options import emit_json, json_option, namespace_option  # noqa: F401


class ShmbusGroup(click.Group):
    """Translates shmbus errors raised by any command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except shmbus.InvalidName as e:
            raise click.UsageError(str(e), ctx) from None
        except (shmbus.ShmbusError, PermissionError) as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # /dev/shm holds something odd: say what, where
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None


@click.group(cls=ShmbusGroup)
@click.version_option(shmbus.__version__, prog_name="shmbus")
def main() -> None:
    """shmbus: look inside and drive the shared-memory message bus."""


def _register() -> None:
    from . import (balancer_cmd, bench_cmd, demo, doctor, gc, inspect_cmd, locks, ls, rm,
                   send, tail, top)
    from . import bridge_cmd, metrics

    for module in (ls, inspect_cmd, top, metrics, tail, send, rm, gc, locks, doctor,
                   balancer_cmd, bridge_cmd, demo, bench_cmd):
        main.add_command(module.command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
