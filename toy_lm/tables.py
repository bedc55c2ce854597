"""The canonical prefix-tree tables: layout, validation and the enumeration size guard.

Index conventions (used everywhere in this package):

* a **level** ``l`` is a prefix length, ``l = 0 ... T``; level ``l`` holds ``V**l`` prefixes;
* a **position** ``t`` is a token index, ``t = 1 ... T``; the logits that choose ``y_t`` live at
  level ``l = t - 1``, and quantities "at position t" (``Δ_t``, ``I_t``, ``g_t``, ``KL_t``) come
  from level ``t - 1`` (the conditional) and level ``t`` (its children).

Row ``i`` of a level-``l`` table is the prefix whose tokens, read as a base-``V`` number with
``y_1`` most significant, equal ``i`` (THEORY.md section 1). The children of row ``i`` are rows
``i*V ... i*V + V - 1`` of level ``l + 1``, so ``x_{l+1}.reshape(V**l, V)`` puts the children of
each prefix on one row. Harm is a vector of shape ``(V**T,)`` in the same order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from toy_lm.errors import EnumerationTooLarge, InputError

__all__ = [
    "MAX_MEMORY_LIMIT",
    "MEMORY_LIMIT_ENV",
    "all_prefixes",
    "check_enumeration_size",
    "estimate_tree_bytes",
    "human_bytes",
    "infer_sizes",
    "is_binary",
    "level_size",
    "log_size",
    "memory_budget",
    "non_finite_error",
    "num_tree_rows",
    "prefix_index",
    "validate_harm",
    "validate_tables",
]

#: Environment variable that caps the memory the size guard lets an enumeration use (bytes, or
#: with a K/M/G suffix). Without it the guard uses 80% of the memory the OS reports available.
MEMORY_LIMIT_ENV = "HARM_HORIZON_MEMORY_LIMIT"
#: The largest value the variable may take (1 EiB; anything larger is a typo).
MAX_MEMORY_LIMIT = 2**60


def level_size(vocab_size: int, level: int) -> int:
    """Number of prefixes at a level, ``V**level`` (a Python int, never overflows)."""
    return int(vocab_size) ** int(level)


def num_tree_rows(vocab_size: int, length: int) -> int:
    """Rows in all logit tables together, ``sum_{l<T} V**l``."""
    return sum(level_size(vocab_size, l) for l in range(length))


def all_prefixes(vocab_size: int, level: int) -> np.ndarray:
    """Every prefix of a level in canonical order.

    Returns:
      int32 array of shape ``(V**level, level)``; row ``i`` holds the base-``V`` digits of ``i``
      with ``y_1`` first (most significant).
    """
    n = level_size(vocab_size, level)
    idx = np.arange(n, dtype=np.int64)
    powers = vocab_size ** np.arange(level - 1, -1, -1, dtype=np.int64)
    return ((idx[:, None] // powers[None, :]) % vocab_size).astype(np.int32)


def prefix_index(tokens, vocab_size: int):
    """Canonical row of each prefix: base-``V`` value of ``tokens[..., :]`` (``y_1`` most significant).

    Works on numpy and jax arrays of shape ``(..., l)``; returns shape ``(...)``.
    """
    tokens = tokens.astype("int64") if hasattr(tokens, "astype") else np.asarray(tokens, np.int64)
    level = tokens.shape[-1]
    out = tokens[..., 0] * 0 if level else np.zeros(tokens.shape[:-1], np.int64)
    for j in range(level):
        out = out * vocab_size + tokens[..., j]
    return out


def infer_sizes(tables: Sequence, name: str = "logits") -> tuple[int, int]:
    """``(V, T)`` of a sequence of level tables, after checking every shape.

    Raises:
      InputError: when there are no tables, a table is not 2-D, ``V < 2``, or a level's shape is
        not ``(V**l, V)``.
    """
    if len(tables) == 0:
        raise InputError(f"no {name} tables given: need {name}_0 ... {name}_(T-1) with T >= 1")
    first = np.shape(tables[0])
    if len(first) != 2 or first[0] != 1:
        raise InputError(f"{name}_0 must have shape (1, V), got {tuple(first)}")
    vocab_size = int(first[1])
    if vocab_size < 2:
        raise InputError(f"vocabulary size V={vocab_size} from {name}_0; V must be at least 2")
    for level, table in enumerate(tables):
        expected = (level_size(vocab_size, level), vocab_size)
        if tuple(np.shape(table)) != expected:
            raise InputError(
                f"{name}_{level} has shape {tuple(np.shape(table))}, expected {expected} "
                f"(V**{level} prefixes x V tokens, with V={vocab_size} from {name}_0)"
            )
    return vocab_size, len(tables)


def validate_tables(
    tables: Sequence, name: str = "logits", check_finite: bool = True
) -> tuple[int, int]:
    """:func:`infer_sizes`, a dtype check and (unless ``check_finite=False``, for callers that
    test finiteness themselves) a finiteness check on every entry."""
    vocab_size, length = infer_sizes(tables, name)
    for level, table in enumerate(tables):
        arr = np.asarray(table)
        if arr.dtype.kind not in "iuf":  # not bool, complex, timedelta, strings, objects
            raise InputError(
                f"{name}_{level} has dtype {arr.dtype}; logits must be real numbers "
                "(integer or floating)"
            )
        if check_finite and not np.all(np.isfinite(arr)):
            raise non_finite_error(arr, f"{name}_{level}")
    return vocab_size, length


def non_finite_error(table, name: str) -> InputError:
    """The error for a logit table ``name`` with NaN or infinite entries (counts them)."""
    bad = int(np.size(table) - np.count_nonzero(np.isfinite(table)))
    return InputError(
        f"{name} has {bad} non-finite entries (NaN or inf); logits must be finite "
        "(use a large negative number, e.g. -30, for a near-zero probability)"
    )


def validate_harm(harm, vocab_size: int, length: int) -> np.ndarray:
    """Check a harm vector against ``(V, T)``: shape ``(V**T,)``, finite, inside ``[0, 1]``."""
    arr = np.asarray(harm)
    expected = (level_size(vocab_size, length),)
    if arr.shape != expected:
        raise InputError(
            f"harm has shape {arr.shape}, expected {expected} (V**T responses with V={vocab_size}, "
            f"T={length})"
        )
    if arr.dtype.kind not in "biuf":
        raise InputError(f"harm has dtype {arr.dtype}; it must hold numbers in [0, 1]")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise InputError(
            f"harm has {int(np.isnan(arr).sum())} NaN entries; harm must lie in [0, 1]"
        )
    if (arr < 0).any() or (arr > 1).any():
        raise InputError(
            f"harm has {int(((arr < 0) | (arr > 1)).sum())} values outside [0, 1] (min "
            f"{float(arr.min())!r}, max {float(arr.max())!r}); rescale or clip it to [0, 1]"
        )
    return arr


def is_binary(harm) -> bool:
    """True when every harm value is exactly 0 or 1."""
    arr = np.asarray(harm)
    return bool(np.all((arr == 0) | (arr == 1)))


def _parse_bytes(text: str) -> int:
    """Bytes from ``$HARM_HORIZON_MEMORY_LIMIT``: a positive finite number, optional K/M/G/T."""
    body = text.strip().upper().removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(body[-1:], 1)
    if scale != 1:
        body = body[:-1]
    try:
        value = float(body) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1 <= value <= MAX_MEMORY_LIMIT):
        raise InputError(
            f"{MEMORY_LIMIT_ENV}={text!r} is not a size the memory guard can use; write a number "
            "of bytes from 1 to 2**60, optionally with K, M, G or T, e.g. 8G (or unset it)"
        )
    return int(value)


def memory_budget() -> int:
    """Bytes an enumeration may use: ``$HARM_HORIZON_MEMORY_LIMIT`` or 80% of available memory."""
    env = os.environ.get(MEMORY_LIMIT_ENV)
    if env is not None and env.strip():  # empty means unset
        return _parse_bytes(env)
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            available = 8 * 2**30
    return int(0.8 * available)


def estimate_tree_bytes(
    vocab_size: int,
    length: int,
    *,
    itemsize: int = 8,
    tables_per_level: int = 6,
    vectors_per_level: int = 6,
) -> int:
    """Estimated peak bytes of a full prefix-tree analysis.

    The estimate counts ``tables_per_level`` arrays shaped like the logit tables (inputs, logit
    gradients, equilibrium tables, reference tables, working copies) and ``vectors_per_level``
    per-prefix vectors over levels ``0 ... T`` (H, probabilities, masks, log Z, harm).
    """
    rows = num_tree_rows(vocab_size, length)
    nodes = rows + level_size(vocab_size, length)
    return itemsize * (tables_per_level * rows * vocab_size + vectors_per_level * nodes)


def check_enumeration_size(
    vocab_size: int,
    length: int,
    *,
    what: str = "the prefix-tree analysis",
    itemsize: int = 8,
    budget: int | None = None,
) -> int:
    """Refuse, before allocating anything, an enumeration that would not fit in memory.

    Sizes far beyond any budget are refused from logarithms (``V**T`` is never formed when
    ``T log V`` alone exceeds the budget), so the guard answers at once for any ``V`` and ``T``.

    Returns:
      The estimated bytes, when they fit.

    Raises:
      EnumerationTooLarge: with the estimate, the budget, and what to use instead.
    """
    budget = memory_budget() if budget is None else budget
    advice = (
        "use the Markov x automaton dynamic-programming engine (harm-horizon analyze-markov) "
        "or the Monte Carlo estimators for models this large, or a smaller V or T (limit set "
        f"by {MEMORY_LIMIT_ENV})"
    )
    # The leaves alone are V**T entries: when log2 of that exceeds log2 of the budget, refuse.
    log2_leaves = length * math.log2(vocab_size)
    if log2_leaves > math.log2(max(budget, 2)) + 1:
        raise EnumerationTooLarge(
            f"{what} at V={vocab_size}, T={length} enumerates {vocab_size}**{length} = "
            f"{log_size(vocab_size, length)} responses, far more than the {human_bytes(budget)} "
            f"available hold; {advice}"
        )
    need = estimate_tree_bytes(vocab_size, length, itemsize=itemsize)
    if need > budget:
        raise EnumerationTooLarge(
            f"{what} at V={vocab_size}, T={length} enumerates {vocab_size}**{length} = "
            f"{log_size(vocab_size, length)} responses and needs about {human_bytes(need)} "
            f"(estimated), more than the {human_bytes(budget)} available; {advice}"
        )
    return need


def log_size(base: int, exponent: int) -> str:
    """``base**exponent`` for a message, from logarithms (never forms the number)."""
    digits = exponent * math.log10(base)
    if digits < 15:
        return f"{base**exponent:.3e}"
    return f"~1e{int(digits)}"


def human_bytes(nbytes: float) -> str:
    """``1.5 GiB``-style size for messages (any size: beyond TiB as a power of ten)."""
    if nbytes >= 2**80:
        return f"~1e{len(str(int(nbytes))) - 1} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover
