"""``python -m shmbus``: the ``shmbus`` command (see :mod:`shmbus.tools.cli`)."""

from shmbus.tools.cli import main

if __name__ == "__main__":
    main()
