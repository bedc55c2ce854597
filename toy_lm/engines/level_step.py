"""The backward level step of the prefix-tree analysis, written once for every XLA driver.

One tree level, over a block of ``n`` rows (prefixes ``u``, each with ``V`` children ``uv``):
from the children's values (:class:`Children`) and the level's logits and prefix probabilities,
:func:`level_step` computes every per-row output (:class:`LevelRows`: ``H`` with exact zeros, the
determined mask, the logit gradients, ``log Z`` and the tables of ``π*_λ``, the binary entropy
of ``H``, and each row's share of ``I_t``, ``I_t^MI``, the equilibrium KL and the reference KL);
:func:`level_sums` reduces a block's rows to :class:`LevelSums`; :func:`combine` adds the sums of
any number of blocks of one level into :class:`LevelTotals`. Nothing is read back by column
number.

The functions are pure ``jax.numpy`` over static shapes: the drivers jit them around their own
data movement. They are

* :func:`toy_lm.engines.analysis.analyze_tree` (``backend="xla"``): host-chunked, fixed-size chunks
  copied in and out of numpy;
* :mod:`toy_lm.engines.device_tree` / :mod:`toy_lm.engines.sharded`: resident on one device or sharded over a
  mesh of ``N`` devices (``N = 1`` is the plain on-device driver).

:mod:`toy_lm.engines.tree` is the readable specification (tested equal to this step), the Numba kernels
of :mod:`toy_lm.engines.cpu_kernels` are the optional fast CPU backend (held to this step by the
cross-backend tests), and :mod:`toy_lm.engines.reference` is the independent numpy reference.

Formulas (the exact-zero conventions of :mod:`toy_lm.engines.tree`):

* ``H(u) = c + Σ_v π(v|u) (H(uv) - c)`` with ``c = H(u0)``; ``Δ(uv) = H(uv) - H(u)``; exactly
  ``H(u) = c`` and ``Δ = 0`` where every child agrees;
* ``G(u)_v = P(u) π(v|u) Δ(uv)``; row share of ``I_t``: ``Σ_v G(u)_v Δ(uv)``;
* ``det(u)`` = children equal and all determined (at the leaves: children equal);
* ``log Z(u) = top + log Σ_v π(v|u) exp(log Z(uv) - top)`` (``log Z = -h/λ`` at the leaves),
  ``log π*(v|u) = log π(v|u) + log Z(uv) - log Z(u)``, both copying ``π`` exactly where the
  children's ``Z`` agree; row KL ``KL(π*(.|u) || π(.|u))``, exactly 0 there;
* equilibrium KL without a forward pass over ``π*``: ``KL_t(π*||π) = Σ P Z kl / Σ P Z`` over
  the level's prefixes, both sums taken per block at a common scale ``e^{max log Z}`` of the
  block's prefixes of positive probability, and put together by :func:`combine`.

Performance notes (XLA on CPU): one ``exp`` per entry serves both ``π`` and ``log π``, and
reductions over a row (``V`` entries) are unrolled into elementwise ops on column slices for
``V <= UNROLL_MAX_V`` (XLA's reductions over a tiny minor axis are slow).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.mutation import point

__all__ = [
    "Children",
    "LevelRows",
    "LevelSums",
    "LevelTotals",
    "UNROLL_MAX_V",
    "binary_entropy",
    "combine",
    "forward_rows",
    "level_step",
    "level_sums",
    "row_all",
    "row_max",
    "row_sum",
    "stack_sums",
]

#: Up to this vocabulary size the reductions over a row (``V`` entries) are unrolled into ``V - 1``
#: elementwise operations on column slices, which XLA on CPU runs about 1.4x faster than a
#: reduction over a tiny minor axis (measured side by side, V = 2 and 4, chunks of 2**15 rows).
UNROLL_MAX_V = 8


class Children(NamedTuple):
    """The children's values of a block of ``n`` rows, each ``(n, V)`` (child ``uv`` at ``[u, v]``).

    Attributes:
      h: ``H_{l+1}(uv)`` (the harm at the leaf level).
      det: determined flags of the children, or None at the leaf level (every leaf is determined).
      logz: ``log Z_{l+1}(uv)``, or None: at the leaf level ``-h/λ`` is used.
      hb: binary entropies of ``H_{l+1}(uv)`` (the MI form), or None: computed from ``h``.
    """

    h: jax.Array
    det: jax.Array | None = None
    logz: jax.Array | None = None
    hb: jax.Array | None = None


class LevelRows(NamedTuple):
    """The per-row outputs of one level step (``n`` rows; None: not requested).

    Attributes:
      h: ``H_l(u)``, ``(n,)``. det: ``det_l(u)``, ``(n,)`` bool.
      grads: ``G(u)``, ``(n, V)``. info: the row's share ``Σ_v G Δ`` of ``I_t``, ``(n,)``.
      logz: ``log Z_l(u)``, ``(n,)``. eq: ``log π*_λ(.|u)``, ``(n, V)``.
      eq_kl: the row KL ``KL(π*(.|u) || π(.|u))``, ``(n,)`` (unweighted).
      ref_kl: ``P(u) KL(π(.|u) || π_ref(.|u))``, ``(n,)``.
      hb: binary entropy of ``H_l(u)``, ``(n,)``. mi: ``P(u) Σ_v π (hb(u) - hb(uv))``, ``(n,)``.
    """

    h: jax.Array
    det: jax.Array
    grads: jax.Array
    info: jax.Array
    logz: jax.Array | None = None
    eq: jax.Array | None = None
    eq_kl: jax.Array | None = None
    ref_kl: jax.Array | None = None
    hb: jax.Array | None = None
    mi: jax.Array | None = None


class LevelSums(NamedTuple):
    """A block's sums over its rows (scalars; or arrays with a leading block axis, stacked).

    Attributes:
      info: ``Σ_u`` of the rows' ``I_t`` shares.
      eq_kl_num / eq_kl_den: ``Σ P Z kl`` and ``Σ P Z`` at the scale ``e^{eq_kl_scale}``.
      eq_kl_scale: ``max log Z`` over the block's rows of positive probability (``-inf``: none).
      ref_kl: ``Σ_u P KL(π || π_ref)``. mi: ``Σ_u`` of the rows' ``I_t^MI`` shares.
      grad_abs: ``Σ |G|`` over the block's table (only when asked: a driver that keeps the
        tables sums them itself).
    """

    info: jax.Array
    eq_kl_num: jax.Array | None = None
    eq_kl_den: jax.Array | None = None
    eq_kl_scale: jax.Array | None = None
    ref_kl: jax.Array | None = None
    mi: jax.Array | None = None
    grad_abs: jax.Array | None = None


class LevelTotals(NamedTuple):
    """One level's totals (Python floats; None: not requested): ``I_t``, ``KL_t(π*_λ || π)``,
    ``KL_t(π || π_ref)``, ``I_t^MI``, ``Σ |G|``."""

    info: float
    eq_kl: float | None = None
    ref_kl: float | None = None
    mi: float | None = None
    grad_abs: float | None = None


def _row_reduce(op, reduce, x):
    """Reduce ``(n, V)`` over its rows to ``(n, 1)`` with the binary ``op`` (or ``reduce``)."""
    if x.shape[1] > UNROLL_MAX_V:
        return reduce(x, axis=1, keepdims=True)
    acc = x[:, :1]
    for v in range(1, x.shape[1]):
        acc = op(acc, x[:, v : v + 1])
    return acc


def row_sum(x):
    return _row_reduce(jnp.add, jnp.sum, x)


def row_max(x):
    return _row_reduce(jnp.maximum, jnp.max, x)


def row_all(x):
    return _row_reduce(jnp.logical_and, jnp.all, x)


def binary_entropy(p):
    """``-(p log p + (1-p) log(1-p))`` in nats (0 at ``p`` = 0 or 1)."""
    return -(jax.scipy.special.xlogy(p, p) + jax.scipy.special.xlogy(1 - p, 1 - p))


def _log_softmax_parts(logits):
    """``(π, log π)`` of ``(n, V)`` logits with one ``exp`` per entry."""
    shifted = logits - row_max(logits)
    e = jnp.exp(shifted)
    total = row_sum(e)
    return e / total, shifted - jnp.log(total)


def forward_rows(logits, probs):
    """``P(uv) = P(u) π(v|u)`` for a block of rows, flattened to children order ``(n V,)``."""
    e = jnp.exp(logits - row_max(logits))
    return (probs[:, None] * (e / row_sum(e))).reshape(-1)


def level_step(
    logits, probs, children: Children, *, lam=None, ref_logits=None, with_mi: bool = False
) -> LevelRows:
    """One backward level step over a block of ``n`` rows (see the module docstring).

    Args:
      logits: ``(n, V)`` logits of the rows. probs: ``(n,)`` prefix probabilities ``P_l(u)``
        (padding rows have 0 and contribute nothing to any sum).
      children: the children's values (:class:`Children`).
      lam: ``λ`` (a scalar) to compute ``log Z``, ``π*_λ`` and the row KL; None skips them.
      ref_logits: ``(n, V)`` reference logits for ``KL(π || π_ref)``; None skips it.
      with_mi: also the binary entropies and the rows' ``I_t^MI`` shares.

    Returns:
      :class:`LevelRows` (fields not requested are None).
    """
    pi, logp = _log_softmax_parts(logits)
    child_h = children.h
    # H and Δ with exact zeros where the children agree (see toy_lm.engines.tree.backward_step).
    ref = child_h[:, :1]
    diff = child_h - ref
    weights = point("step.backward.weights", pi)
    mean = row_sum(weights * diff)
    h = (ref + mean)[:, 0]
    delta = diff - mean
    weight = probs[:, None] * pi
    grads = weight * delta
    same = row_all(diff == 0)[:, 0]
    det = same if children.det is None else same & row_all(children.det)[:, 0]
    out = dict(h=h, det=det, grads=grads, info=row_sum(grads * delta)[:, 0])
    if with_mi:
        hb = binary_entropy(h)
        child_hb = binary_entropy(child_h) if children.hb is None else children.hb
        out.update(hb=hb, mi=row_sum(weight * (hb[:, None] - child_hb))[:, 0])
    if lam is not None:
        logz_c = -child_h / lam if children.logz is None else children.logz
        top = row_max(logz_c)
        shifted = logz_c - top
        constant = row_all(shifted == 0)
        tilted = pi * jnp.exp(shifted)  # π(v) Z(uv) / max_v Z(uv)
        log_mass = jnp.where(constant, 0.0, jnp.log(row_sum(tilted)))
        row_kl = row_sum(tilted * (shifted - log_mass))[:, 0] * jnp.exp(-log_mass[:, 0])
        out.update(
            logz=(top + log_mass)[:, 0],
            eq=jnp.where(constant, logp, logp + shifted - log_mass),
            eq_kl=jnp.where(constant[:, 0], 0.0, row_kl),
        )
    if ref_logits is not None:
        shifted_q = ref_logits - row_max(ref_logits)
        logq = shifted_q - jnp.log(row_sum(jnp.exp(shifted_q)))
        out["ref_kl"] = probs * row_sum(pi * (logp - logq))[:, 0]
    return LevelRows(**out)


def level_sums(rows: LevelRows, probs, *, grad_abs: bool = False) -> LevelSums:
    """A block's :class:`LevelSums` from its :class:`LevelRows` and prefix probabilities
    (``grad_abs``: also ``Σ |G|``; padding rows have ``P = 0``, so ``G = 0``)."""
    out = dict(info=jnp.sum(rows.info))
    if grad_abs:
        out["grad_abs"] = jnp.sum(jnp.abs(rows.grads))
    if rows.eq_kl is not None:
        real = probs > 0
        scale = jnp.max(jnp.where(real, rows.logz, -jnp.inf), initial=-jnp.inf)
        mass = probs * jnp.exp(rows.logz - jnp.where(jnp.isfinite(scale), scale, 0.0))
        out.update(eq_kl_num=jnp.sum(mass * rows.eq_kl), eq_kl_den=jnp.sum(mass), eq_kl_scale=scale)
    if rows.ref_kl is not None:
        out["ref_kl"] = jnp.sum(rows.ref_kl)
    if rows.mi is not None:
        out["mi"] = jnp.sum(rows.mi)
    return LevelSums(**out)


def stack_sums(parts) -> LevelSums:
    """Per-block :class:`LevelSums` stacked into numpy arrays along a leading block axis."""
    parts = jax.device_get(list(parts))  # one transfer for every block, not one per scalar
    return LevelSums(
        *(
            None
            if getattr(parts[0], f) is None
            else np.array([getattr(p, f) for p in parts], np.float64)
            for f in LevelSums._fields
        )
    )


def combine(sums: LevelSums) -> LevelTotals:
    """Add the blocks of one level (``sums`` stacked along a leading block axis, in block order).

    The equilibrium KL is ``Σ_b num_b e^{m_b} / Σ_b den_b e^{m_b}``; a block with no prefix of
    positive probability has ``m_b = -inf`` and weight 0.
    """

    def total(x):
        return None if x is None else float(np.sum(np.asarray(x)))

    eq_kl = None
    if sums.eq_kl_scale is not None:
        scales = np.asarray(sums.eq_kl_scale, float).reshape(-1)
        finite = np.isfinite(scales)
        eq_kl = 0.0
        if finite.any():
            weights = np.where(
                finite, np.exp(np.where(finite, scales, 0.0) - scales[finite].max()), 0.0
            )
            den = float(np.sum(np.asarray(sums.eq_kl_den).reshape(-1) * weights))
            num = float(np.sum(np.asarray(sums.eq_kl_num).reshape(-1) * weights))
            eq_kl = num / den if den > 0 else 0.0
    return LevelTotals(
        info=total(sums.info),
        eq_kl=eq_kl,
        ref_kl=total(sums.ref_kl),
        mi=total(sums.mi),
        grad_abs=total(sums.grad_abs),
    )
