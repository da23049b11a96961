"""The ``shmbus`` command-line tools (click)."""
