"""KL-regularized equilibrium in the Markov x automaton engine (THEORY.md section 2, T7).

The minimizer of ``E_π[h] + λ KL(π || π0)`` over all policies is ``π*_λ ∝ π0 exp(-h/λ)``. For a
Markov ``π0`` and an automaton harm, ``Z_l(y_<=l) = E_π0[exp(-h/λ) | y_<=l]`` depends only on
the joint state ``(c, s)`` after ``y_<=l``, so ``π*_λ`` is Markov in (context x automaton state):

* ``log Z_l(c, s) = log Σ_v π0_l(v|c) Z_{l+1}(c ⊕ v, δ(s, v))``, ``log Z_T = -verdict / λ``;
* ``log π*_λ(v | c, s) = log π0(v|c) + log Z_{l+1}(c ⊕ v, δ(s, v)) - log Z_l(c, s)``;
* the law of the joint state under ``π*_λ`` at level ``l`` is ``p_l(c, s) Z_l(c, s) / Z_0``.

``log Z`` lies in ``[-1/λ, 0]``; the recursion runs in log space, scaled per row (see
:func:`scaling_is_safe`), with exact values and zero KL at determined states (T7b).
"""

from __future__ import annotations

import math

import jax
import jax.core  # jax.core.Tracer below (the submodule is not an attribute of jax's stubs)
import jax.numpy as jnp
import numpy as np

from toy_lm.bounds import check_concrete_lam
from toy_lm.engines.markov import (
    at_least_order_one,
    check_markov,
    children,
    log_policy,
    split_context,
    state_probs,
)
from toy_lm.models.automata import Automaton

__all__ = [
    "equilibrium_kl",
    "equilibrium_policy",
    "equilibrium_state_probs",
    "log_partition",
    "log_partition_step",
    "scaling_is_safe",
]


def scaling_is_safe(lam, vocab_size: int, dtype) -> bool:
    """Whether the scaled sum of :func:`log_partition_step` is safe from underflow (a static bound).

    ``log Z`` lies in ``[-1/λ, 0]`` (verdicts lie in ``[0, 1]``), so the children's values span at
    most ``1/λ`` and ``σ = Σ_v π_v e^{A_v - max A} >= e^{-1/λ} / V`` (the most likely token
    contributes at least ``1/V``). The scaled form keeps full relative precision while that bound
    stays above ``tiny / eps`` of the dtype: ``1/λ + log V < -log(tiny / eps)`` (``λ > 1/672`` in
    float64 at ``V = 64``, ``λ > 1/67`` in float32).
    """
    if isinstance(lam, jax.core.Tracer):
        return False
    finfo = np.finfo(np.dtype(dtype))
    return 1.0 / float(lam) + math.log(vocab_size) < -math.log(float(finfo.tiny) / float(finfo.eps))


def log_partition_step(logp: jax.Array, child: jax.Array, *, scaled: bool = True):
    """``log Z_l`` and the row KL ``KL(π*(.|c,s) || π(.|c))`` from the children's ``log Z``.

    Scaled form (``scaled=True``; see :func:`scaling_is_safe`): with ``A = log Z_{l+1}`` of the
    children and ``m = max_v A_v``, ``σ = Σ_v π_v e^{A_v - m}`` gives ``log Z = m + log σ`` and
    ``KL = Σ_v π_v e^{A_v - m} (A_v - m) / σ - log σ`` (two small matrix products). Otherwise a
    full log-sum-exp over ``(context, state, token)``, safe for any ``λ`` and logits.

    Args:
      logp: ``(V, L, V)`` log-conditionals; child: ``(L, S, V)``.

    Returns:
      ``(log Z (V, L, S), row KL (V, L, S))``; rows with constant children give ``m`` and 0 exactly.
    """
    top = jnp.max(child, axis=-1, keepdims=True)
    constant = jnp.all(child == top, axis=-1)[None]
    shifted = child - top
    if scaled:
        scaled_child = jnp.exp(shifted)
        both = jnp.einsum(
            "hlv,lsv->hls",
            jnp.exp(logp),
            jnp.concatenate([scaled_child, scaled_child * shifted], axis=1),
        )
        sigma, weighted = jnp.split(both, 2, axis=2)
        log_sigma = jnp.log(sigma)
        logz, row_kl = top[None, ..., 0] + log_sigma, weighted / sigma - log_sigma
    else:
        a = logp[:, :, None, :] + child[None]
        logz = jax.nn.logsumexp(a, axis=-1)
        tilted = jnp.exp(a - logz[..., None])
        row_kl = jnp.sum(tilted * (child[None] - logz[..., None]), axis=-1)
    return (
        jnp.where(constant, top[None, ..., 0], logz),
        jnp.where(constant, jnp.zeros_like(row_kl), row_kl),
    )


def _partition_scan(logits, dfa: Automaton, lam, scaled: bool | None = None):
    """``(log Z (T+1, C, S), row KL of π*_λ (T, C, S))`` for order >= 1 logits.

    ``scaled`` forces the scaled (True) or log-sum-exp (False) step; None decides from ``λ``.
    """
    vocab_size = logits.shape[2]
    logp = log_policy(logits)
    last = jnp.broadcast_to(
        -jnp.asarray(dfa.verdict, logp.dtype) / lam, logits.shape[1:2] + (dfa.transitions.shape[0],)
    )

    if scaled is None:
        scaled = scaling_is_safe(lam, vocab_size, logp.dtype)

    def step(logz_next, logp_l):
        logz, row_kl = log_partition_step(
            split_context(logp_l, vocab_size), children(logz_next, dfa), scaled=scaled
        )
        logz = logz.reshape(logz_next.shape)
        return logz, (logz, row_kl.reshape(logz_next.shape))

    _, (logzs, row_kl) = jax.lax.scan(step, last, logp, reverse=True)
    return jnp.concatenate([logzs, last[None]]), row_kl


def log_partition(logits, dfa: Automaton, lam, *, scaled: bool | None = None) -> jax.Array:
    """``log Z_l(c, s) = log E_π0[exp(-h/λ) | joint state (c, s) at level l]``, ``(T+1, C, S)``."""
    check_markov(logits, dfa)
    check_concrete_lam(lam)
    return _partition_scan(at_least_order_one(logits), dfa, lam, scaled)[0]


def equilibrium_policy(logits, dfa: Automaton, lam, *, scaled: bool | None = None) -> jax.Array:
    """Log-conditionals of ``π*_λ ∝ π0 exp(-h/λ)``, Markov in (context, state): ``(T, C, S, V)``.

    ``log π*_λ(v | c, s) = log π0(v|c) + log Z_{l+1}(c ⊕ v, δ(s,v)) - log Z_l(c, s)``, and exactly
    ``log π0`` at joint states whose children share one ``Z`` (determined states), so T7b holds
    exactly. Memory ``T * C * S * V``: use :func:`equilibrium_kl` for long horizons.
    """
    check_markov(logits, dfa)
    check_concrete_lam(lam)
    logits = at_least_order_one(logits)
    vocab_size = logits.shape[2]
    logz, _ = _partition_scan(logits, dfa, lam, scaled)

    def level(args):
        logp_l, logz_l, logz_next = args
        child = children(logz_next, dfa)  # (L, S, V)
        logp3 = split_context(logp_l, vocab_size)[:, :, None, :]  # (V, L, 1, V)
        constant = jnp.all(child == child[..., :1], axis=-1)[None, ..., None]
        tilted = logp3 + child[None] - split_context(logz_l, vocab_size)[..., None]
        return jnp.where(constant, logp3, tilted).reshape(logz_l.shape + (vocab_size,))

    return jax.lax.map(level, (log_policy(logits), logz[:-1], logz[1:]))


def equilibrium_state_probs(
    logits, dfa: Automaton, lam, *, scaled: bool | None = None
) -> jax.Array:
    """``π*_λ(joint state (c, s) at level l) = p_l(c, s) Z_l(c, s) / Z_0``, ``(T+1, C, S)``.

    Computed in log space and normalized per level (``Σ_{c,s} p_l Z_l = Z_0`` at every level), so
    no ``Z`` ratio can overflow; no forward pass over ``π*`` is needed.
    """
    check_markov(logits, dfa)
    check_concrete_lam(lam)
    logits = at_least_order_one(logits)
    logz, _ = _partition_scan(logits, dfa, lam, scaled)
    return _tilted(state_probs(logits, dfa), logz)


def _tilted(probs, logz):
    """``p Z`` normalized per level, from ``p`` and ``log Z`` of shape ``(levels, C, S)``."""
    log_mass = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)) + logz, -jnp.inf)
    top = jnp.max(log_mass, axis=(1, 2), keepdims=True)
    mass = jnp.exp(log_mass - top)
    return mass / jnp.sum(mass, axis=(1, 2), keepdims=True)


def equilibrium_kl(logits, dfa: Automaton, lam, *, scaled: bool | None = None) -> jax.Array:
    """``KL_t(π*_λ || π0) = Σ_{c,s} π*_λ(c, s at level t-1) KL(π*(.|c,s) || π0(.|c))``: ``(T,)``.

    Exactly 0 at and beyond the horizon (T7b); ``Σ_t KL_t = KL(π*_λ || π0)`` (T7e).
    """
    check_markov(logits, dfa)
    check_concrete_lam(lam)
    logits = at_least_order_one(logits)
    logz, row_kl = _partition_scan(logits, dfa, lam, scaled)
    weights = _tilted(state_probs(logits, dfa)[:-1], logz[:-1])
    return jnp.sum(weights * row_kl, axis=(1, 2))
