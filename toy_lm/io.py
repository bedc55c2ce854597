"""Reading and writing the ``.npz`` interchange files, checked before anything large is loaded.

:func:`npz_shapes` reads only the array headers of an ``.npz`` file, so the size guard can refuse a
too-large enumeration before a single table is loaded. :func:`save_npz_atomic` writes to a
temporary file in the destination folder and renames it into place, so an interrupted or failed
run never leaves a partial output file.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from toy_lm.errors import InputError


def npz_shapes(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of every array in an ``.npz`` file, reading headers only.

    Raises:
      InputError: when the file is missing, unreadable or not an ``.npz`` archive.
    """
    if not os.path.exists(path):
        raise InputError(f"cannot read {path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"cannot read {path}: it is a directory, expected an .npz file")
    try:
        out = {}
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                out[name[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
        return out
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise InputError(f"cannot read {path}: not a valid .npz archive ({err})") from None


def level_keys(keys, prefix: str) -> list[str]:
    """The keys ``prefix_0, prefix_1, ...`` present, checked to be consecutive from 0."""
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
    levels = sorted(int(m.group(1)) for k in keys if (m := pattern.match(k)))
    if levels != list(range(len(levels))):
        missing = sorted(set(range(max(levels) + 1)) - set(levels)) if levels else []
        raise InputError(
            f"{prefix}_* keys must be {prefix}_0 ... {prefix}_(T-1) without gaps; "
            f"missing {', '.join(f'{prefix}_{i}' for i in missing)}"
        )
    return [f"{prefix}_{i}" for i in levels]


def load_npz(path: str, keys) -> dict[str, np.ndarray]:
    """Load the named arrays of an ``.npz`` file (``allow_pickle=False``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read {path}: {err}") from None


def save_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as ``.npz``, atomically (temporary file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
