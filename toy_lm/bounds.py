"""The bounds of every numeric input a user can give, checked before any work, stated in the message.

One place for the limits that command-line options and configuration files share:

* ``λ`` (and the other KL weights) must be finite and at least :data:`MIN_LAMBDA`, the smallest
  normal float64 (``2.2e-308``). Below it ``1/λ`` overflows to infinity, so ``-h/λ`` is no longer
  a number and the equilibrium ``π*_λ ∝ π e^{-h/λ}`` cannot be computed in float64 at all; every
  ``λ`` from this bound up is computed in log space without overflow (``|log Z| <= 1/λ``).
* seeds are integers in ``0 ... 2**63 - 1`` (JAX's PRNG takes a 64-bit signed seed);
* counts (examples, batch sizes, seeds per setting, lengths) are integers in a stated range.

Only the standard library is imported here, so configuration parsing stays light.
"""

from __future__ import annotations

import math
import numbers
import sys

from toy_lm.errors import HarmHorizonError, InputError

__all__ = ["MAX_SEED", "MIN_LAMBDA", "check_concrete_lam", "check_count", "check_lam", "check_seed"]

#: The smallest usable KL weight: the smallest normal float64, ``2**-1022``.
MIN_LAMBDA = sys.float_info.min
#: Seeds are 64-bit signed integers for ``jax.random.key``.
MAX_SEED = 2**63 - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_lam(value, name: str = "lambda", error: type[HarmHorizonError] = InputError) -> float:
    """``value`` as a float, when it is a finite number ``>= MIN_LAMBDA``; else ``error``."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= MIN_LAMBDA
    )
    if not ok:
        raise error(
            f"{_named(name, value)} must be a positive finite number, at least "
            f"{MIN_LAMBDA!r} (the smallest normal float64; below it 1/λ overflows and "
            "π*_λ cannot be computed)"
        )
    return float(value)


def check_concrete_lam(lam) -> None:
    """:func:`check_lam` of a concrete ``λ`` (a Python or numpy number); a traced one passes.

    The engines call it at entry: under ``jax.jit`` or ``jax.vmap`` ``λ`` is an abstract array
    whose value cannot be checked there, so its caller checks it.
    """
    if isinstance(lam, numbers.Real):
        check_lam(float(lam), "lambda")


def check_seed(value, name: str = "seed", error: type[HarmHorizonError] = InputError) -> int:
    """``value`` when it is an integer in ``0 ... 2**63 - 1``; else ``error``."""
    if not (_is_int(value) and 0 <= value <= MAX_SEED):
        raise error(f"{_named(name, value)} must be an integer from 0 to 2**63 - 1 = {MAX_SEED}")
    return value


def check_count(
    value, name: str, low: int, high: int, error: type[HarmHorizonError] = InputError, why: str = ""
) -> int:
    """``value`` when it is an integer in ``low ... high``; else ``error`` naming the range."""
    if not (_is_int(value) and low <= value <= high):
        raise error(
            f"{_named(name, value)} must be an integer from {low} to {high}"
            + (f" ({why})" if why else "")
        )
    return value


def _named(name: str, value) -> str:
    """``--flag value`` for options, ``setting=value`` for configuration settings."""
    return f"{name}{' ' if name.startswith('-') else '='}{_short(value)}"


def _short(value) -> str:
    """``repr`` of a value for a message, astronomically long integers abbreviated."""
    if _is_int(value) and abs(value) >= 10**15:
        return f"{'-' if value < 0 else ''}~10^{len(str(abs(value))) - 1}"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
