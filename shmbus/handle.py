"""``Handle``: the lifetime every shmbus object with a process-local state shares.

A handle is usable from the moment its constructor returns until it is closed, and only
in the process that opened it.  After ``close()`` (from any thread) every call raises
:class:`Closed`; a thread blocked in one of its calls is woken and gets :class:`Closed`
too.  After ``fork`` the child's copy is closed at once, without touching anything
shared (the parent still owns the ring, its slot, its locks): using it raises
:class:`Closed` saying to open a new one in the child.  A forked copy that wrote would
send with the parent's seq over the parent's messages; refusing it is the only safe
answer.

The hot paths pay nothing for this: subclasses route a closed handle's calls to their
slow path (or to :meth:`Handle._refuse`) when it is closed, instead of testing a flag on
every call.
"""

from __future__ import annotations

import os
import threading
import weakref

from .errors import Closed

__all__ = ["Handle"]

_open_handles: "weakref.WeakSet[Handle]" = weakref.WeakSet()


class Handle:
    """Mixin: ``_closed``, ``_pid``, a close guard and ``__del__``; subclasses call
    :meth:`_opened` at the end of their constructor and implement :meth:`_sever` and
    ``close()``."""

    _closed = True
    _pid = -1
    _kind = "handle"

    def _opened(self) -> None:
        self._pid = os.getpid()
        self._close_guard = threading.Lock()
        self._closed = False
        _open_handles.add(self)

    def _mark_closed(self) -> bool:
        """Mark the handle closed; return False if it already was (so that exactly one
        caller, from whichever thread, does the closing)."""
        guard = getattr(self, "_close_guard", None)
        if guard is None:
            return False
        with guard:
            if self._closed:
                return False
            self._closed = True
        _open_handles.discard(self)
        return True

    @property
    def forked(self) -> bool:
        """True in a process other than the one that opened the handle."""
        return self._pid != os.getpid()

    def _closed_error(self) -> Closed:
        name = getattr(self, "name", "?")
        if self.forked:
            return Closed(
                f"this {self._kind} of ring {name!r} was opened in process {self._pid}, "
                f"not in this one ({os.getpid()}, a fork of it): a forked child must open "
                f"its own {self._kind} (shmbus objects are not inherited across fork)",
                name=name, pid=self._pid)
        return Closed(f"{self._kind} of ring {name!r} is closed: open a new one to go on",
                      name=name)

    def _closed_or(self, error: Exception) -> Exception:
        """What a call that failed with ``error`` (a released memoryview's ValueError,
        say) raises: :class:`Closed` if the handle was closed meanwhile (another thread
        let go of the segment under it), else ``error`` itself."""
        return self._closed_error() if self._closed else error

    def _refuse(self, *args: object, **kwargs: object):
        """Stands in for the hot-path methods of a closed handle."""
        raise self._closed_error()

    def _sever(self) -> None:
        """Make every later call raise (called in a forked child: touch nothing
        shared, release nothing)."""
        raise NotImplementedError

    def __del__(self) -> None:
        """Close a handle its owner left open: never raises, and does nothing in a
        forked child (the copy there is not the child's to close)."""
        try:
            if not self._closed and not self.forked:
                self.close()  # type: ignore[attr-defined]
        except Exception:
            pass


def _after_fork_in_child() -> None:
    for handle in list(_open_handles):
        handle._closed = True
        try:
            handle._sever()
        except Exception:
            pass
    _open_handles.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
