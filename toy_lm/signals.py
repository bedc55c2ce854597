"""Ctrl-C and termination: one line, the conventional exit status, no temporary file left behind.

The CLI calls :func:`install` before it imports anything heavy (numpy, JAX, numba), so a signal at
any moment of a run, start-up included, ends it the same way: the handler records the signal and
raises :class:`Interrupted` (a ``KeyboardInterrupt``, so SIGTERM unwinds exactly like Ctrl-C and
every ``finally``/``except BaseException`` cleanup runs). When the exception is raised inside
a callback that cannot propagate it (JAX's garbage-collection hook, a weakref callback of the
import system), Python hands it to ``sys.unraisablehook``; ours prints nothing and delivers the
signal again a moment later from a helper thread (``_thread.interrupt_main``), so it is raised at
an ordinary point of the main thread. The record also lets the entry point exit 130 / 143 regardless (:func:`received`): a run
that was interrupted never ends with status 0.

Temporary output files register themselves (:func:`track`) until they are renamed into place;
:func:`remove_tracked` deletes the leftovers. Only the standard library is imported here.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
import time

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


_active: list[bool] = []


def _redeliver(signum: int) -> None:
    time.sleep(0.01)   # let the main thread leave the callback that swallowed the first one
    if _active:
        _thread.interrupt_main(signum)


def _unraisable(unraisable) -> None:
    """Redeliver an :class:`Interrupted` that a callback could not raise; pass others on."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)
        return
    signum = unraisable.exc_value.signum
    for _ in range(3):   # a new signal may land while the thread starts: then start it again
        try:
            threading.Thread(target=_redeliver, args=(signum,), daemon=True).start()
            return
        except Interrupted:
            continue


def install() -> dict | None:
    """Handle SIGINT and SIGTERM (main thread only); returns what :func:`restore` puts back, or
    None when not in the main thread (then nothing is changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _received.clear()
    previous = {"hook": sys.unraisablehook}
    for signum in HANDLED:
        previous[signum] = signal.signal(signum, _handler)
    sys.unraisablehook = _unraisable
    _active[:] = [True]
    return previous


def restore(previous: dict | None) -> None:
    """Put back the handlers and the unraisable hook :func:`install` replaced."""
    previous = dict(previous or {})
    _active.clear()
    if "hook" in previous:
        sys.unraisablehook = previous.pop("hook")
    for signum, handler in previous.items():
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
