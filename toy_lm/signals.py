"""Ctrl-C and termination: one line, the conventional exit status, no temporary file left behind.

The CLI calls :func:`install` before it imports anything heavy (numpy, JAX, numba), so a signal at
any moment of a run, start-up included, ends it the same way: the handler records the signal and
raises :class:`Interrupted` (a ``KeyboardInterrupt``, so SIGTERM unwinds exactly like Ctrl-C and
every ``finally``/``except BaseException`` cleanup runs).

Where the exception is raised matters. Python runs a signal handler in whatever Python frame the
main thread is executing, and that frame may have been called from native code: JAX's C++ jit
dispatch and its nanobind callbacks, Numba's compiler. An exception raised there crosses C++
frames, and where one of them is ``noexcept`` the process aborts ("terminate called after throwing
an instance of 'nanobind::python_error'", status -6: a native crash instead of exit 130). So the
handler raises only when no frame of the main thread's stack belongs to a package with native
callbacks (:data:`NATIVE_PACKAGES`); otherwise it records the signal and a helper thread delivers
it again every :data:`RETRY_SECONDS` (``signal.pthread_kill``) until it lands in plain Python —
in practice the next return from JAX to our own loop. When the exception is raised inside a
callback that cannot propagate it at all (a weakref or garbage-collection callback), Python hands
it to ``sys.unraisablehook``; ours prints nothing and delivers the signal again the same way. The
record also lets the entry point exit 130 / 143 regardless (:func:`received`): a run that was
interrupted never ends with status 0.

Temporary output files register themselves (:func:`track`) until they are renamed into place;
:func:`remove_tracked` deletes the leftovers. A file is created and registered inside
:func:`held`, so no signal lands between the two (one that did left an untracked
``.partial-*`` file behind, seen in CI under load). Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

__all__ = [
    "HANDLED",
    "Interrupted",
    "NATIVE_PACKAGES",
    "RETRY_SECONDS",
    "exit_status",
    "held",
    "install",
    "received",
    "remove_tracked",
    "restore",
    "safe_to_raise",
    "signal_name",
    "track",
    "untrack",
]

#: Signals that end a run cleanly; the exit status is ``128 + signal number`` (130, 143).
HANDLED = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []
_tracked: set[str] = set()


class Interrupted(KeyboardInterrupt):
    """Raised by the handler of :data:`HANDLED`; ``signum`` is the signal received."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: Packages whose Python code runs as callbacks of native code (their frames are never a safe
#: place to raise): the exception is deferred until the main thread is outside all of them.
#: An import in progress is deferred too (an extension module's initialisation imports Python
#: modules from C: a SIGINT there broke ``import numpy`` with "PyCapsule_Import could not import
#: module datetime", and one landing in JAX's start-up ended in SIGSEGV).
NATIVE_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numba",
    "llvmlite",
    "ml_dtypes",
    "numpy",
    "pyarrow",
)

#: How often a deferred signal is delivered again while the main thread is inside those packages.
RETRY_SECONDS = 0.01


def _native_prefixes() -> tuple[str, ...]:
    """The folders of the :data:`NATIVE_PACKAGES` imported so far (a package being imported is
    already in ``sys.modules``, with its ``__path__``)."""
    prefixes = []
    for name in NATIVE_PACKAGES:
        for folder in getattr(sys.modules.get(name), "__path__", None) or ():
            prefixes.append(os.path.join(str(folder), ""))
    return tuple(prefixes)


def safe_to_raise(frame) -> bool:
    """True when no frame from ``frame`` down to the bottom of the stack is in a package whose
    Python code native code calls back (:data:`NATIVE_PACKAGES`)."""
    prefixes = _native_prefixes() + ("<frozen importlib",)
    while frame is not None:
        if frame.f_code.co_filename.startswith(prefixes):
            return False
        frame = frame.f_back
    return True


_pending: list[int] = []  # a signal recorded but not yet raised (deferred out of native code)


def _handler(signum, frame):
    if not _pending:  # a new signal, not the redelivery of a deferred one
        _received.append(signum)
    if not safe_to_raise(frame):
        if not _pending:
            _pending.append(signum)
            _start(_retry, signum)
        return
    _pending.clear()
    raise Interrupted(signum)


_active: list[bool] = []


def _deliver(signum: int) -> None:
    """Deliver ``signum`` to the main thread again (a real signal: it also ends a blocking call)."""
    signal.pthread_kill(threading.main_thread().ident, signum)


def _retry(signum: int) -> None:
    """Deliver a deferred signal again until the handler has raised it (or the CLI restored)."""
    while _active and _pending:
        time.sleep(RETRY_SECONDS)
        if _active and _pending:
            _deliver(signum)


def _redeliver(signum: int) -> None:
    time.sleep(RETRY_SECONDS)  # let the main thread leave the callback that swallowed the first
    if _active:
        _deliver(signum)


def _start(target, signum: int) -> None:
    """Start ``target(signum)`` on a daemon thread, again if a new signal interrupts the start."""
    for _ in range(3):
        try:
            threading.Thread(target=target, args=(signum,), daemon=True).start()
            return
        except Interrupted:
            continue


def _unraisable(unraisable) -> None:
    """Redeliver an :class:`Interrupted` that a callback could not raise; pass others on."""
    if not isinstance(unraisable.exc_value, Interrupted):
        sys.__unraisablehook__(unraisable)
        return
    _start(_redeliver, unraisable.exc_value.signum)


def install() -> dict | None:
    """Handle SIGINT and SIGTERM (main thread only); returns what :func:`restore` puts back, or
    None when not in the main thread (then nothing is changed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _received.clear()
    _pending.clear()
    previous = {"hook": sys.unraisablehook}
    # Held while the handlers go in: a signal that arrives meanwhile waits for the end of the
    # block and then meets a complete installation (raising here, half-installed, would leave
    # the caller without ``previous``); it raises out of this call, which callers put in their try.
    with held():
        for signum in HANDLED:
            previous[signum] = signal.signal(signum, _handler)
        sys.unraisablehook = _unraisable
        _active[:] = [True]
    return previous


def restore(previous: dict | None) -> None:
    """Put back the handlers and the unraisable hook :func:`install` replaced."""
    previous = dict(previous or {})
    _active.clear()
    _pending.clear()
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


@contextlib.contextmanager
def held():
    """Hold SIGINT and SIGTERM (in this thread) for the block: one that arrives meanwhile is
    delivered when the block ends, and its handler runs then. For a step that must not be cut in
    two, such as creating a temporary file and registering it with :func:`track`."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


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
