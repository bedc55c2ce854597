"""No silent waits: a heartbeat on stderr while a command works for a long time.

:func:`heartbeat` runs a background thread while its ``with`` block runs. On a terminal it shows
a transient spinner with the current status and the elapsed time; on a pipe or a file (CI logs,
``2> log``) it writes one line ``[label] status (N s)`` every ``interval`` seconds. The block sets
the status with :meth:`Heartbeat.update`, and calls :meth:`Heartbeat.touch` when it printed a line
of its own (the next heartbeat line then waits a full interval); a block that finishes within
``interval`` seconds prints nothing on a pipe.

Example::

    with heartbeat("analyze", "compiling the analysis kernels") as beat:
        compile_kernels()
        beat.update("analyzing")
        result = analyze()
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

__all__ = ["DEFAULT_INTERVAL", "Heartbeat", "heartbeat"]

#: Seconds without news after which a progress line is written on a pipe.
DEFAULT_INTERVAL = 5.0


class Heartbeat:
    """The status of a long-running block; :meth:`update` it when something new starts."""

    def __init__(self, label: str, status: str, interval: float, stream):
        self.label, self.status, self.interval, self.stream = label, status, interval, stream
        self.start = self.changed = time.monotonic()
        self.lines = 0  # lines written on a pipe (tests read it)
        self._lock = threading.Lock()

    def update(self, status: str) -> None:
        """Set the current status (the next line, or the spinner's text, shows it)."""
        with self._lock:
            self.status = status

    def touch(self) -> None:
        """The caller just wrote a line itself: wait a full interval before the next one."""
        with self._lock:
            self.changed = time.monotonic()

    def line(self) -> str:
        with self._lock:
            return f"[{self.label}] {self.status} ({time.monotonic() - self.start:.0f} s)"

    def beat_pipe(self) -> None:
        """Write a line if ``interval`` seconds passed since the last line (or :meth:`touch`)."""
        with self._lock:
            quiet = time.monotonic() - self.changed
        if quiet >= self.interval:
            self.stream.write(f"{self.line()}\n")  # one write: no other line can split it
            self.stream.flush()
            self.lines += 1
            with self._lock:
                self.changed = time.monotonic()


@contextlib.contextmanager
def heartbeat(
    label: str,
    status: str = "working",
    *,
    interval: float = DEFAULT_INTERVAL,
    stream=None,
    terminal: bool | None = None,
):
    """Context manager yielding a :class:`Heartbeat`; see the module docstring.

    Args:
      label: the command name shown in brackets, e.g. ``"analyze"``.
      status: the initial status text.
      interval: seconds of silence after which a line is written on a pipe (> 0).
      stream: where to write (default ``sys.stderr``).
      terminal: force the terminal (spinner) or pipe (lines) behaviour; default: ``isatty()``.
    """
    stream = sys.stderr if stream is None else stream
    if terminal is None:
        terminal = bool(getattr(stream, "isatty", lambda: False)())
    beat = Heartbeat(label, status, interval, stream)
    stop = threading.Event()
    if terminal:
        from rich.console import Console

        spinner = Console(file=stream).status(beat.line())

        def loop():
            while not stop.wait(0.5):
                spinner.update(beat.line())

        spinner.start()
    else:

        def loop():
            while not stop.wait(min(1.0, interval / 2)):
                beat.beat_pipe()

    thread = threading.Thread(target=loop, name=f"heartbeat-{label}", daemon=True)
    thread.start()
    try:
        yield beat
    finally:
        stop.set()
        thread.join()
        if terminal:
            spinner.stop()
