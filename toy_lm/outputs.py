"""Writing output files: checked before the computation, written whole or not at all.

Every command that writes a file goes through this module:

* :func:`check_output` runs before any expensive work and refuses a target that writing would
  damage or lose: an empty name, a directory, a symbolic link, a device, a FIFO or a socket (a
  rename would replace it), one of the command's own input files, or a folder that is missing or
  not writable. Writability is probed with a temporary file beside the target; the target itself
  is never opened. It also removes the temporary files that an earlier run of the same command
  left behind when it was killed (their process no longer exists).
* :func:`write_atomic` (and :func:`write_atomic_many`, for files that belong together) writes
  through a temporary file in the target's folder
  (``.partial-<tag>-<pid>-*``), flushes it to disk (``fsync``), gives it the mode the target
  should have (an existing file keeps its mode; a new one gets ``0666`` less the umask) and renames
  it over the target. The temporary file is removed on any failure, Ctrl-C or SIGTERM included
  (:mod:`toy_lm.signals` tracks it).
* :func:`check_output_folder` does the same checks for a folder of outputs (experiments).
"""

from __future__ import annotations

import glob
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence

from toy_lm import signals
from toy_lm.errors import OutputError

__all__ = [
    "PARTIAL_PREFIX",
    "check_output",
    "check_output_folder",
    "json_text",
    "new_file_mode",
    "null_nonfinite",
    "remove_stale",
    "save_npz",
    "write_atomic",
    "write_atomic_many",
    "write_json",
    "write_text",
]

PARTIAL_PREFIX = ".partial-"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def remove_stale(folder: str, tag: str) -> int:
    """Delete ``.partial-<tag>-<pid>-*`` files in ``folder`` whose process is gone; how many."""
    removed = 0
    for path in glob.glob(os.path.join(glob.escape(folder), f"{PARTIAL_PREFIX}{tag}-*-*")):
        pid = os.path.basename(path)[len(PARTIAL_PREFIX) + len(tag) + 1 :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass
    return removed


def _probe_folder(folder: str, what: str) -> None:
    """Create and delete a temporary file in ``folder`` (the only reliable writability test:
    it also sees read-only file systems and works for root)."""
    try:
        # The probe's whole life (created, closed, removed) with SIGINT and SIGTERM held: a
        # Ctrl-C between creating and deleting it left it behind (seen in CI's SIGINT test).
        with signals.held():
            fd, probe = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}probe-{os.getpid()}-", dir=folder)
            try:
                os.close(fd)
            finally:
                _unlink(probe)
    except OSError as err:
        raise OutputError(
            f"cannot write {what}: folder {folder} is not writable ({err.strerror or err})"
        ) from None


def check_output(path: str, *, flag: str, tag: str, inputs: Sequence[str | None] = ()) -> str:
    """Refuse, before any computation, an output path that cannot or must not be written.

    Args:
      path: the target file.
      flag: the option that named it (for the message), e.g. ``"--out"``.
      tag: the writing command (names its temporary files, see :func:`remove_stale`).
      inputs: the command's input files; the target must be none of them.

    Returns:
      ``path``.

    Raises:
      OutputError: naming the path and the reason.
    """
    if not isinstance(path, str) or not path.strip():
        raise OutputError(f"{flag} {path!r} is empty; give a file name")
    what = f"{flag} {path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise OutputError(f"cannot write {what}: {err.strerror or err}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(
            f"cannot write {what}: it is {_kind(st.st_mode)}, and writing would "
            "replace it; give the name of a regular file"
        )
    for source in inputs:
        if st is not None and source and _same_file(path, source):
            raise OutputError(
                f"cannot write {what}: it is the input file {source}; writing "
                "would replace the input, give another name"
            )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {what}: folder {folder} does not exist")
    _probe_folder(folder, what)
    remove_stale(folder, tag)
    return path


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_folder(folder: str, *, flag: str) -> str:
    """Refuse a results folder that is a file (or a link to one) or cannot be created/written."""
    if not isinstance(folder, str) or not folder.strip():
        raise OutputError(f"{flag} {folder!r} is empty; give a folder name")
    what = f"{flag} {folder}"
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputError(f"cannot write {what}: it exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {what}: {err.strerror or err}") from None
    _probe_folder(folder, what)
    return folder


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - systems without /proc
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def new_file_mode(path: str) -> int:
    """The mode of an existing regular file at ``path``, else ``0o666`` less the umask."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def write_atomic(path: str, write: Callable | bytes, *, tag: str, flag: str = "output") -> str:
    """Write ``path`` whole or not at all: ``write(fh)`` fills a binary temporary file in the same
    folder (or ``write`` is the bytes to write), which is fsynced, given the mode
    :func:`new_file_mode` and renamed over ``path``.

    Raises:
      OutputError: when the target became something other than a regular file, or the disk
        refused the write (full, read-only, permission).
    """
    return write_atomic_many([(path, write)], tag=tag, flag=flag)[0]


def write_atomic_many(
    items: Sequence[tuple[str, Callable | bytes]], *, tag: str, flag: str = "output"
) -> list[str]:
    """:func:`write_atomic` of several files, staged together: every ``write(fh)`` fills its own
    temporary file first, and only when all are written and fsynced are they renamed, so a failure
    or a kill while writing leaves none of them; one killed during the renames leaves each file
    whole or absent. The one place in the code base that renames a file over a target.

    Args:
      items: ``(path, write)`` pairs; ``write(fh)`` writes the bytes of ``path`` to ``fh``
        (or ``write`` is those bytes).
      tag: the writing command (names the temporary files, see :func:`remove_stale`).
      flag: the option that named the outputs (for messages).

    Returns:
      The paths, in order.

    Raises:
      OutputError: when a target became something other than a regular file, or the disk
        refused a write (full, read-only, permission); nothing is renamed then.
    """
    staged: list[tuple[str, str]] = []
    handles: list = []
    current = ""
    try:
        for path, write in items:
            current = path
            folder = os.path.dirname(os.path.abspath(path))
            mode = new_file_mode(path)
            # Created, registered and opened as one step, with SIGINT and SIGTERM held: a signal
            # landing between the file's creation and its registration left an untracked
            # temporary file behind (seen in CI's SIGINT test under load).
            with signals.held():
                fd, tmp = tempfile.mkstemp(
                    prefix=f"{PARTIAL_PREFIX}{tag}-{os.getpid()}-",
                    suffix=os.path.splitext(path)[1],
                    dir=folder,
                )
                signals.track(tmp)
                staged.append((tmp, path))
                handles.append(fh := os.fdopen(fd, "wb"))
            with fh:
                if isinstance(write, bytes):
                    fh.write(write)
                else:
                    write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
        for _, path in staged:
            current = path
            if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
                raise OutputError(
                    f"cannot write {flag} {path}: it became "
                    f"{_kind(os.lstat(path).st_mode)} during the run; nothing "
                    "written"
                )
        for tmp, path in staged:
            os.replace(tmp, path)
        for folder in dict.fromkeys(os.path.dirname(os.path.abspath(p)) for _, p in staged):
            _fsync_folder(folder)
    except OSError as err:
        raise OutputError(f"cannot write {flag} {current}: {err.strerror or err}") from None
    finally:
        for fh in handles:
            fh.close()  # a no-op for those already closed
        for tmp, _ in staged:
            _unlink(tmp)
            signals.untrack(tmp)
    return [path for _, path in staged]


def write_text(path: str, text: str, *, tag: str, flag: str = "output") -> str:
    """:func:`write_atomic` of ``text`` encoded as UTF-8."""
    return write_atomic(path, text.encode("utf-8"), tag=tag, flag=flag)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_npz(path: str, arrays: Mapping, *, tag: str, flag: str = "output") -> str:
    """:func:`write_atomic` of an uncompressed ``.npz`` of ``arrays``."""
    import numpy as np

    return write_atomic(
        path,
        lambda fh: np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()}),
        tag=tag,
        flag=flag,
    )


def json_text(payload, *, indent=None) -> str:
    """Strict JSON (``NaN`` and infinities are not JSON: they raise ``ValueError``)."""
    return json.dumps(payload, indent=indent, allow_nan=False, ensure_ascii=False)


def null_nonfinite(payload):
    """``payload`` with every NaN or infinite float replaced by ``None`` (JSON ``null``), for
    records where a non-number means "not measured" rather than an engine fault."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {k: null_nonfinite(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [null_nonfinite(v) for v in payload]
    return payload


def write_json(path: str, payload, *, tag: str, flag: str = "output", indent=None) -> str:
    """:func:`write_atomic` of ``payload`` as strict JSON (a NaN or infinity raises
    ``ValueError`` before anything is written: it is a fault, not data)."""
    return write_text(path, json_text(payload, indent=indent), tag=tag, flag=flag)
