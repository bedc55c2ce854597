"""float64 handling and machine-epsilon tolerances.

Exact checks run in float64. JAX's 64-bit mode is a process-wide switch, so only entry points turn
it on: :func:`require_x64` (called by the command line, the demos, worker processes,
``tests/conftest.py`` and the Hypothesis strategies) turns it on and refuses with
:class:`PrecisionError` when that is not possible, instead of silently computing in float32.
Library functions never flip it: they call :func:`check_x64`, which raises
:class:`PrecisionError` naming the one line that fixes it.

Tolerances are *derived*, never tuned: :func:`eps_tolerance` returns ``factor * eps(dtype)`` and
says so in words, so a check can print how its tolerance was obtained.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.errors import PrecisionError

__all__ = [
    "FIX",
    "Tolerance",
    "check_x64",
    "default_float",
    "eps_tolerance",
    "require_x64",
    "x64_enabled",
]

_FALSEY = {"0", "false", "no", "off"}


def require_x64() -> None:
    """Enable float64 in JAX, or raise :class:`PrecisionError` explaining why it cannot be.

    Setting the environment variable ``JAX_ENABLE_X64=0`` is honoured as an explicit request for
    32-bit mode, which an exact computation cannot run under.
    """
    env = os.environ.get("JAX_ENABLE_X64")
    if env is not None and env.strip().lower() in _FALSEY:
        raise PrecisionError(
            f"float64 is required but JAX_ENABLE_X64={env!r} disables it; "
            "unset JAX_ENABLE_X64 (or set it to 1) and run again"
        )
    jax.config.update("jax_enable_x64", True)
    if jnp.zeros((), jnp.float64).dtype != jnp.float64:  # pragma: no cover - platform specific
        raise PrecisionError(
            "float64 is required but this JAX backend cannot create float64 arrays; "
            "run on the CPU backend (JAX_PLATFORMS=cpu)"
        )


#: The one line that turns float64 on, quoted by :func:`check_x64`'s error.
FIX = "import toy_lm; toy_lm.require_x64()"


def check_x64(what: str) -> None:
    """Raise :class:`PrecisionError` unless JAX's float64 mode is on.

    Library functions call this instead of turning the process-wide switch on themselves.

    Args:
      what: the computation that needs float64, for the message (e.g. ``"make_instance"``).
    """
    if not jax.config.read("jax_enable_x64"):
        raise PrecisionError(
            f"{what} computes in float64, but JAX's float64 mode is off; turn it on once at the "
            f"start of your program: {FIX}"
        )


def x64_enabled() -> bool:
    """True when JAX creates float64 arrays by default."""
    return bool(jax.config.read("jax_enable_x64"))


def default_float() -> np.dtype:
    """The floating dtype JAX uses by default right now (float64 under x64, else float32)."""
    return np.dtype(jnp.zeros(()).dtype)


class Tolerance(NamedTuple):
    """An absolute tolerance together with how it was derived."""

    value: float
    derivation: str
    dtype: str


def eps_tolerance(dtype, factor: float, why: str) -> Tolerance:
    """``factor * eps(dtype)``, with ``why`` explaining the factor in terms of the problem size.

    Args:
      dtype: the dtype the compared quantities were computed in.
      factor: a stated multiple of machine epsilon (for example the number of terms summed).
      why: what the factor stands for, e.g. ``"64 * V**T terms summed"``.

    Returns:
      A :class:`Tolerance` whose ``derivation`` reads ``"eps(float64)=2.2e-16 x <factor> (<why>)"``.
    """
    dt = np.dtype(dtype)
    eps = float(np.finfo(dt).eps)
    return Tolerance(
        value=eps * float(factor),
        derivation=f"eps({dt.name})={eps:.3g} x {float(factor):.4g} ({why})",
        dtype=dt.name,
    )
