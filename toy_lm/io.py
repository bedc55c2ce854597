"""Reading the ``.npz`` interchange files: regular files only, sized from headers before any read.

:func:`open_input` is the one way an input file is opened: it refuses anything but a regular file
(a directory, ``/dev/zero``, a FIFO, a socket) from ``stat`` before opening, and opens with
``O_NONBLOCK`` so that even a file swapped for a FIFO in between cannot block. :func:`npz_shapes`
reads only the array headers, checks that each array's declared size matches the bytes its
archive member holds (so the sizes are facts, not claims) and returns them; the callers' memory
guards use :func:`npz_nbytes` before :func:`load_npz` reads a single value. Every way an archive
can be damaged (bad zip, bad deflate data, bad header, truncation) is one :class:`InputError`.

Outputs are written by :mod:`toy_lm.outputs` (``.npz`` files by :func:`toy_lm.outputs.save_npz`).
"""

from __future__ import annotations

import math
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from toy_lm.errors import EnumerationTooLarge, InputError
from toy_lm.tables import (
    check_enumeration_size,
    human_bytes,
    level_size,
    memory_budget,
    validate_harm,
    validate_tables,
)

__all__ = [
    "level_keys",
    "load_npz",
    "map_npz",
    "npz_nbytes",
    "npz_shapes",
    "open_input",
    "read_tables",
    "table_keys",
]

#: Everything a damaged archive or header can raise while it is read.
_DAMAGED = (
    zipfile.BadZipFile,
    zlib.error,
    ValueError,
    EOFError,
    OSError,
    SyntaxError,
    TypeError,
    OverflowError,
    RecursionError,
    MemoryError,
    NotImplementedError,
    KeyError,
    IndexError,
    UnicodeDecodeError,
)


def open_input(path: str, what: str = "input"):
    """Open a regular file for binary reading, refusing anything else without blocking.

    Raises:
      InputError: missing, unreadable, empty name, or not a regular file.
    """
    if not isinstance(path, str) or not path:
        raise InputError(f"the {what} file name is empty")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {(err.strerror or str(err)).lower()}") from None
    _require_regular(path, st.st_mode, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise InputError(f"cannot read {path}: {(err.strerror or str(err)).lower()}") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode, what)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(path: str, mode: int, what: str) -> None:
    if stat.S_ISDIR(mode):
        raise InputError(f"cannot read {path}: it is a directory, expected the {what} file")
    if not stat.S_ISREG(mode):
        kind = (
            "a character device"
            if stat.S_ISCHR(mode)
            else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "not a regular file"
        )
        raise InputError(f"cannot read {path}: it is {kind}; the {what} must be a regular file")


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo):
    """``(shape, dtype)`` of one ``.npy`` member, after checking its size against the header."""
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy format version {version}")
        header_bytes = fh.tell()
    shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    if not dtype.hasobject:  # object arrays are pickles, refused when loaded
        declared = math.prod(shape) * dtype.itemsize
        if header_bytes + declared != info.file_size:
            raise ValueError(
                f"{info.filename} declares shape {_short(shape)} of {dtype} "
                f"({_count(declared)} bytes) but holds "
                f"{info.file_size - header_bytes} bytes of data (truncated or damaged)"
            )
    return shape, dtype


def _short(shape) -> str:
    """A shape for a message, with astronomically large dimensions abbreviated."""
    return "(" + ", ".join(_count(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _count(n: int) -> str:
    """An integer for a message; beyond 12 digits as ``~10^d`` (never overflows a float)."""
    n = int(n)
    return str(n) if abs(n) < 10**12 else f"~10^{len(str(abs(n))) - 1}"


def npz_shapes(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of every array in an ``.npz`` file, reading headers only.

    Each member's declared size is checked against the uncompressed size its archive entry
    records, which bounds what a later read can return (no zip bomb, no truncation surprise).

    Raises:
      InputError: when the file is missing, not a regular file, unreadable or not a valid
        ``.npz`` archive.
    """
    with open_input(path, "input .npz") as fh:
        try:
            out = {}
            with zipfile.ZipFile(fh) as archive:
                for info in archive.infolist():
                    if info.filename.endswith(".npy"):
                        out[info.filename[: -len(".npy")]] = _member_header(archive, info)
            return out
        except PermissionError:
            raise InputError(f"cannot read {path}: permission denied") from None
        except _DAMAGED as err:
            raise InputError(
                f"cannot read {path}: not a valid .npz archive ({_one_line(err)})"
            ) from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def npz_nbytes(shapes: Mapping, keys=None) -> int:
    """Bytes the arrays ``keys`` (default: all) of :func:`npz_shapes` occupy once loaded."""
    keys = shapes if keys is None else keys
    return sum(math.prod(shapes[k][0]) * shapes[k][1].itemsize for k in keys)


def level_keys(keys, prefix: str) -> list[str]:
    """The keys ``prefix_0, prefix_1, ...`` present, checked to be consecutive from 0.

    Raises:
      InputError: for a gap, or a non-canonical name such as ``prefix_01`` (which would collide
        with ``prefix_1``).
    """
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
    found = [(k, m.group(1)) for k in keys if (m := pattern.match(k))]
    odd = sorted(k for k, digits in found if digits != str(int(digits)))
    if odd:
        raise InputError(
            f"key {odd[0]} is not a level name; write {prefix}_<l> with l = 0, 1, "
            "2, ... in plain decimal (no leading zeros)"
        )
    levels = sorted(int(digits) for _, digits in found)
    if levels != list(range(len(levels))):
        missing = sorted(set(range(len(levels))) - set(levels))
        raise InputError(
            f"{prefix}_* keys must be {prefix}_0 ... {prefix}_(T-1) without gaps; found "
            f"{len(levels)} keys, missing {', '.join(f'{prefix}_{i}' for i in missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return [f"{prefix}_{i}" for i in levels]


def load_npz(path: str, keys) -> dict[str, np.ndarray]:
    """Load the named arrays of an ``.npz`` file (``allow_pickle=False``)."""
    with open_input(path, "input .npz") as fh:
        try:
            with np.load(fh, allow_pickle=False) as data:
                return {k: np.asarray(data[k]) for k in keys}
        except _DAMAGED as err:
            raise InputError(f"cannot read {path}: {_one_line(err)}") from None


def map_npz(path: str, keys) -> dict[str, np.ndarray]:
    """The named arrays of an uncompressed ``.npz`` (``np.savez``) as read-only memory maps.

    Nothing is read until a slice is used, so a process of :mod:`toy_lm.engines.distributed` touches only
    the rows of its share. The data of a stored (uncompressed) member starts after the zip local
    header (30 bytes, the name and the extra field) and the ``.npy`` header.

    Raises:
      InputError: a compressed member (``np.savez_compressed``), a Fortran-ordered or object
        array, or a damaged archive.
    """
    out = {}
    with open_input(path, "input .npz") as fh:
        try:
            with zipfile.ZipFile(fh) as archive:
                for key in keys:
                    info = archive.getinfo(f"{key}.npy")
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise InputError(
                            f"{path}: {key} is compressed; a distributed run maps the arrays in "
                            "place, so save the tables with np.savez (uncompressed)"
                        )
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    if local[:4] != b"PK\x03\x04":
                        raise ValueError(f"bad local header of {key}")
                    start = (
                        info.header_offset
                        + 30
                        + int.from_bytes(local[26:28], "little")
                        + int.from_bytes(local[28:30], "little")
                    )
                    fh.seek(start)
                    version = np.lib.format.read_magic(fh)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read(fh)
                    if fortran or np.dtype(dtype).hasobject:
                        raise InputError(
                            f"{path}: {key} is Fortran-ordered or holds objects; "
                            "save C-ordered numeric arrays"
                        )
                    out[key] = np.memmap(
                        path, dtype=dtype, mode="r", offset=fh.tell(), shape=tuple(shape)
                    )
        except InputError:
            raise
        except _DAMAGED as err:
            raise InputError(f"cannot read {path}: {_one_line(err)}") from None
    return out


def table_keys(path: str):
    """``(shapes, logits keys, ref_logits keys, V, T)`` of a tables ``.npz``, from its headers
    only: keys present, consistent ``V`` and ``T``, real dtypes."""
    shapes = npz_shapes(path)
    keys = level_keys(shapes, "logits")
    if not keys:
        raise InputError(f"{path} has no logits_0 ... logits_(T-1) arrays (T = 0): need T >= 1")
    if "harm" not in shapes:
        raise InputError(f"{path} has no 'harm' array (shape (V**T,))")
    first = shapes["logits_0"][0]
    if len(first) != 2 or first[0] != 1:
        raise InputError(f"logits_0 must have shape (1, V), got {first}")
    vocab_size, length = int(first[1]), len(keys)
    if vocab_size < 2:
        raise InputError(f"V = {vocab_size} (from logits_0); the vocabulary needs V >= 2")
    ref_keys = level_keys(shapes, "ref_logits")
    if ref_keys and len(ref_keys) != length:
        raise InputError(
            f"{len(ref_keys)} ref_logits_* tables for T = {length} logits tables; "
            "give all of ref_logits_0 ... ref_logits_(T-1) or none"
        )
    for key in keys + ref_keys:
        level = int(key.rsplit("_", 1)[1])
        expected = (level_size(vocab_size, level), vocab_size)
        if shapes[key][0] != expected:
            raise InputError(
                f"{key} has shape {shapes[key][0]}, expected {expected} "
                f"(V = {vocab_size} from logits_0, T = {length})"
            )
    if shapes["harm"][0] != (level_size(vocab_size, length),):
        raise InputError(
            f"harm has shape {shapes['harm'][0]}, expected "
            f"({level_size(vocab_size, length)},) = (V**T,) for V = {vocab_size}, "
            f"T = {length}"
        )
    for key in keys + ref_keys + ["harm"]:
        if shapes[key][1].kind not in ("biuf" if key == "harm" else "iuf"):
            raise InputError(f"{key} has dtype {shapes[key][1]}; it must hold real numbers")
    return shapes, keys, ref_keys, vocab_size, length


def read_tables(path: str):
    """``(logits, harm, ref_logits or None)`` from an ``.npz``, checked header-first.

    Every check that needs only shapes (keys present, consistent ``V`` and ``T``, enumeration
    size) runs before any array is loaded.
    """
    shapes, keys, ref_keys, vocab_size, length = table_keys(path)
    need = check_enumeration_size(vocab_size, length, what=f"analyzing {path}")
    loaded = npz_nbytes(shapes, keys + ref_keys + ["harm"])
    if need + loaded > memory_budget():  # inputs in a wider dtype than float64, or many refs
        raise EnumerationTooLarge(
            f"analyzing {path} needs about {human_bytes(need + loaded)} "
            f"(the analysis and the {human_bytes(loaded)} of arrays read), "
            f"more than the {human_bytes(memory_budget())} available"
        )
    data = load_npz(path, keys + ref_keys + ["harm"])
    logits = [data[k] for k in keys]
    validate_tables(logits, "logits")
    harm = validate_harm(data["harm"], vocab_size, length)
    ref = [data[k] for k in ref_keys] or None
    if ref is not None:
        validate_tables(ref, "ref_logits")
    return logits, harm, ref
