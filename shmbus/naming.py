"""Names, namespaces and where their objects live in ``/dev/shm``.

Every object shmbus creates is prefixed by a namespace so that applications (and tests)
never collide::

    /dev/shm/{ns}.{ring}            the ring's segment
    /dev/shm/sem.{ns}.{ring}@c{i}   wake-up semaphore of consumer slot i
    /dev/shm/sem.{ns}.{ring}@p      wake-up semaphore of a producer waiting for space
    /dev/shm/{ns}@locks/{name}      lock and lease files (``{ring}@producer`` etc. are
                                    the ring's own; ``@`` cannot occur in a user name)

Names are ``[A-Za-z0-9._-]``, 1 to 100 characters.  A namespace is the same without the
dot (so ``{ns}.{ring}`` splits unambiguously), 1 to 64 characters; it is the
``namespace`` argument, else ``$SHMBUS_NAMESPACE``, else the default namespace.

**Decision: the default namespace is per user.**  ``/dev/shm`` is one directory for
every user of the host, so a fixed default (``shmbus``) made two users collide: the
first one's lock directory and rings block the second (issue 12, item 10), and whoever
creates a namespace's objects first owns them.  With no ``namespace`` argument and no
``$SHMBUS_NAMESPACE``, the namespace is ``shmbus-{uid}`` (the effective uid, root
included: ``shmbus-0``), so each user gets their own rings, locks and leases with no
configuration, and never sees or touches another user's.  ``DEFAULT_NAMESPACE``
(``shmbus``) stays the base of that name; :func:`default_namespace` gives the full one.

**Sharing is explicit.**  A namespace named explicitly (``namespace=``, or
``$SHMBUS_NAMESPACE``; for instance literally ``shmbus``) is private too: what shmbus
creates in ``/dev/shm`` belongs to the user that creates it, without group or other
permission bits, and shmbus refuses (``PermissionDenied``) anything it did not create
itself.  To share a namespace with the members of a group, every participant sets
``$SHMBUS_GROUP`` to that group (name or gid): then the namespace's lock directory is
created ``2770`` with that group (setgid, so the files in it get the group too) and its
lock and lease files ``0660``, and objects of that group without any *other* bits are
accepted whoever of the group created them (see :mod:`shmbus.lockdir`).  A member of
the group can then take, hold and break each other's locks and leases: share only with
users you trust that far.
"""

from __future__ import annotations

import grp
import os
import re

from .errors import InvalidName

SHM_DIR = "/dev/shm"
DEFAULT_NAMESPACE = "shmbus"
NAME_MAX_LEN = 100
NAMESPACE_MAX_LEN = 64

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,%d}" % NAME_MAX_LEN)
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % NAMESPACE_MAX_LEN)


def check_name(name: object, what: str = "ring name") -> str:
    """Return ``name`` if it is a valid name, else raise :class:`InvalidName`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidName(
            f"invalid {what} {name!r}: expected 1 to {NAME_MAX_LEN} characters from "
            f"[A-Za-z0-9._-] (and not '.' or '..'); rename it",
            name=name,
        )
    return name


def default_namespace() -> str:
    """The namespace used when none is given: ``shmbus-{uid}``, one per user (see the
    module docstring for why)."""
    return f"{DEFAULT_NAMESPACE}-{os.geteuid()}"


def resolve_namespace(namespace: str | None = None) -> str:
    """Return the namespace to use: ``namespace``, else ``$SHMBUS_NAMESPACE``, else
    :func:`default_namespace` (``shmbus-{uid}``); raise :class:`InvalidName` if it is not
    ``[A-Za-z0-9_-]{1,64}``."""
    if namespace is None:
        namespace = os.environ.get("SHMBUS_NAMESPACE") or default_namespace()
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidName(
            f"invalid namespace {namespace!r}: expected 1 to {NAMESPACE_MAX_LEN} "
            "characters from [A-Za-z0-9_-] (no dot); fix the namespace argument or "
            "$SHMBUS_NAMESPACE",
            name=namespace,
        )
    return namespace


def segment_name(ns: str, ring: str) -> str:
    """The POSIX shm name (with leading slash) of ring ``ring`` in namespace ``ns``."""
    return f"/{ns}.{ring}"


def segment_path(ns: str, ring: str) -> str:
    return f"{SHM_DIR}/{ns}.{ring}"


def consumer_semaphore_name(ns: str, ring: str, slot: int) -> str:
    return f"/{ns}.{ring}@c{slot}"


def producer_semaphore_name(ns: str, ring: str) -> str:
    return f"/{ns}.{ring}@p"


def lock_dir(ns: str) -> str:
    """The directory that holds the namespace's lock and lease files."""
    return f"{SHM_DIR}/{ns}@locks"


def share_group() -> int | None:
    """The gid named by ``$SHMBUS_GROUP`` (a group name or a number), or None when the
    namespace is private (the default).  Raises :class:`InvalidName` for an unknown
    group."""
    value = os.environ.get("SHMBUS_GROUP", "").strip()
    if not value:
        return None
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise InvalidName(
            f"$SHMBUS_GROUP names group {value!r}, which does not exist on this host: "
            "set it to an existing group name or gid, or unset it to keep the namespace "
            "private", name=value) from None


def ring_lock_name(ring: str, role: str) -> str:
    """Internal lock name for one of a ring's roles (``producer``, ``create``,
    ``slots``, ``durable.NAME``); contains ``@`` so it never equals a user's lock."""
    return f"{ring}@{role}"


def ring_names_in(ns: str, entries: list[str]) -> list[str]:
    """The ring names among ``/dev/shm`` directory entries of namespace ``ns``."""
    prefix = ns + "."
    return sorted(
        e[len(prefix):] for e in entries
        if e.startswith(prefix) and "@" not in e and _NAME_RE.fullmatch(e[len(prefix):])
    )


def owned_entries(ns: str, entries: list[str]) -> list[str]:
    """Every ``/dev/shm`` entry that belongs to namespace ``ns`` (segments, semaphores,
    the lock directory)."""
    return sorted(
        e for e in entries
        if e.startswith(ns + ".") or e.startswith("sem." + ns + ".") or e == ns + "@locks"
    )
