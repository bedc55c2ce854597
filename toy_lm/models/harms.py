"""Harm functions ``h : [V]^T -> [0, 1]`` as tables, their determined prefixes and horizons.

A harm is a vector of shape ``(V**T,)`` in canonical order (THEORY.md section 1). This module
makes harms (explicit, random binary decided by the first ``tau`` tokens, soft) and computes from
the table alone, as THEORY.md section 2 defines them for a full-support policy:

* the **determined masks** ``det_l`` (``V**l`` booleans per level ``l = 0 ... T``): ``y_<=l`` is
  determined when ``h(y_<=l, .)`` is constant over every continuation;
* the **per-response horizon** ``τ(y) = min{l : y_<=l determined}``;
* the **global horizon** ``τ* = max_y τ(y)``, the first level where every prefix is determined.

Automaton harms live in :mod:`toy_lm.models.automata`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.errors import InputError
from toy_lm.mutation import point
from toy_lm.precision import default_float
from toy_lm.tables import level_size, validate_harm

__all__ = [
    "determined_masks",
    "harm_table",
    "horizon",
    "horizon_from_masks",
    "infer_length",
    "random_decided_harm",
    "response_horizons",
    "soft_harm",
]


def infer_length(harm, vocab_size: int) -> int:
    """``T`` such that ``harm`` has ``V**T`` entries, or :class:`InputError`."""
    n = int(np.shape(harm)[-1]) if np.ndim(harm) else 0
    if np.ndim(harm) != 1 or n < vocab_size:
        raise InputError(
            f"harm must be a vector of V**T entries with T >= 1, got shape {np.shape(harm)}"
        )
    length = round(math.log(n, vocab_size))
    if level_size(vocab_size, length) != n:
        raise InputError(f"harm has {n} entries, which is not a power of V={vocab_size}")
    return length


def harm_table(values, vocab_size: int, length: int) -> jax.Array:
    """An explicit harm table, checked: shape ``(V**T,)``, finite, inside ``[0, 1]``."""
    return jnp.asarray(validate_harm(values, vocab_size, length), default_float())


def _check_tau(tau: int, length: int) -> None:
    if not isinstance(tau, (int, np.integer)) or not 0 <= tau <= length:
        raise InputError(f"horizon tau={tau!r} must be an int with 0 <= tau <= T={length}")


def random_decided_harm(
    key: jax.Array, vocab_size: int, length: int, tau: int, *, binary: bool = True
) -> jax.Array:
    """A random harm decided by the first ``tau`` tokens, with global horizon exactly ``tau``.

    Values on the ``V**tau`` level-``tau`` prefixes are Bernoulli(1/2) (``binary``) or uniform
    on ``[0, 1]``; every response inherits the value of its first ``tau`` tokens. To make the
    horizon exactly ``tau`` (not smaller by chance) the first two children of prefix row 0 at
    level ``tau - 1`` get the values 0 and 1.

    Returns:
      ``(V**T,)`` harm in the default float dtype.
    """
    _check_tau(tau, length)
    return _decided_harm(
        key,
        level_size(vocab_size, tau),
        level_size(vocab_size, length - tau),
        tau >= 1,
        binary,
        np.dtype(default_float()),
    )


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _decided_harm(key, n_tau, repeats, pin, binary, dtype):
    """:func:`random_decided_harm` as one compiled program (eagerly, each of its five operations
    compiled a program of its own for every size)."""
    if binary:
        values = jax.random.bernoulli(key, 0.5, (n_tau,)).astype(dtype)
    else:
        values = jax.random.uniform(key, (n_tau,), dtype)
    if pin:
        values = values.at[0].set(0.0).at[1].set(1.0)
    return jnp.repeat(values, repeats)


def soft_harm(key: jax.Array, vocab_size: int, length: int, tau: int | None = None) -> jax.Array:
    """A soft (non-binary) harm, uniform on ``[0, 1]``, decided by the first ``tau`` tokens."""
    return random_decided_harm(
        key, vocab_size, length, length if tau is None else tau, binary=False
    )


def determined_masks(harm, vocab_size: int) -> tuple[np.ndarray, ...]:
    """Determined-prefix masks ``det_0 ... det_T`` (``det_l`` has shape ``(V**l,)``, bool).

    Computed bottom-up from the harm table by the range of ``h`` over each subtree (a prefix is
    determined iff ``min == max`` over its continuations); no floating-point arithmetic is done
    on the values, so the masks are exact.
    """
    harm = np.asarray(harm)
    length = infer_length(harm, vocab_size)
    lo, hi = harm, harm
    masks = [np.ones(harm.shape, bool)]
    for _ in range(length):
        lo = point("harms.range.children", lo.reshape(-1, vocab_size)).min(axis=1)
        hi = point("harms.range.children", hi.reshape(-1, vocab_size)).max(axis=1)
        masks.append(lo == hi)
    return tuple(reversed(masks))


def response_horizons(harm, vocab_size: int) -> np.ndarray:
    """``τ(y)`` for every response, ``(V**T,)`` ints.

    Determinedness is inherited by extensions, so ``τ(y)`` counts the levels at which ``y``'s
    prefix is still undetermined.

    Example (``V = 2``, ``T = 2``; the harm is ``y_1 = 1``, except that ``11`` is harmless):

    >>> response_horizons([0.0, 0.0, 1.0, 0.0], 2).tolist()   # responses 00, 01, 10, 11
    [1, 1, 2, 2]
    """
    masks = determined_masks(harm, vocab_size)
    length = len(masks) - 1
    tau = np.zeros(level_size(vocab_size, length), np.int64)
    for level in range(length):
        undetermined = ~masks[level]
        tau += np.repeat(undetermined, level_size(vocab_size, length - level))
    return tau


def horizon_from_masks(masks) -> int:
    """``τ*`` from determined masks: the first level at which every prefix is determined."""
    for level, mask in enumerate(masks):
        if bool(np.all(mask)):
            return level
    return len(masks) - 1  # pragma: no cover - level T is always determined


def horizon(harm, vocab_size: int) -> int:
    """Global harm horizon ``τ* = max_y τ(y)``: the first level at which every prefix's harm is
    decided (THEORY.md, the harm horizon).

    Args:
      harm: ``(V**T,)`` harm values, responses in canonical (base-``V``) order.
      vocab_size: ``V``.

    Returns:
      ``τ*``, an int in ``0 ... T``.

    Example: a harm decided by the first token has horizon 1; one that also needs the second
    token has horizon 2; a constant harm is decided before any token.

    >>> horizon([0.0, 0.0, 1.0, 1.0], 2), horizon([0.0, 0.0, 1.0, 0.0], 2), horizon([1.0] * 4, 2)
    (1, 2, 0)
    """
    return horizon_from_masks(determined_masks(harm, vocab_size))
