"""Ctrl-C and termination: one line, the conventional exit status, no temporary file left behind.

The CLI calls :func:`install` before it imports anything heavy (numpy, JAX, numba), so a signal at
any moment of a run, start-up included, ends it the same way: the handler records the signal and
raises :class:`Interrupted` (a ``KeyboardInterrupt``, so SIGTERM unwinds exactly like Ctrl-C and
every ``finally``/``except BaseException`` cleanup runs). The record survives even when the
exception is raised inside a callback that swallows it (JAX's garbage-collection hooks print and
drop exceptions), and :func:`received` lets the entry point exit 130 / 143 regardless: a run
that was interrupted never ends with status 0.

Temporary output files register themselves (:func:`track`) until they are renamed into place;
:func:`remove_tracked` deletes the leftovers. Only the standard library is imported here.
"""

from __future__ import annotations

import os
import signal
import threading

#: Signals that end a run cleanly; the exit status is ``128 + signal number`` (130, 143).
HANDLED = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []
_tracked: set[str] = set()


class Interrupted(KeyboardInterrupt):
    """Raised by the handler of :data:`HANDLED`; ``signum`` is the signal received."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def install() -> dict | None:
    """Handle SIGINT and SIGTERM (main thread only); returns the previous handlers for
    :func:`restore`, or None when not in the main thread (then nothing is changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _received.clear()
    previous = {}
    for signum in HANDLED:
        previous[signum] = signal.signal(signum, _handler)
    return previous


def restore(previous: dict | None) -> None:
    """Put back the handlers :func:`install` replaced."""
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler)


def received() -> int | None:
    """The first handled signal since :func:`install`, or None."""
    return _received[0] if _received else None


def exit_status(signum: int) -> int:
    """The shell's convention: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def track(path: str) -> None:
    """Remember a temporary file until :func:`untrack` (it is renamed or removed)."""
    _tracked.add(path)


def untrack(path: str) -> None:
    _tracked.discard(path)


def remove_tracked() -> int:
    """Delete every tracked temporary file that still exists; returns how many."""
    removed = 0
    for path in list(_tracked):
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
        _tracked.discard(path)
    return removed
