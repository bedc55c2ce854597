"""Sampled and supervised alignment objectives (the exact ones live in :mod:`toy_lm.engines.objectives`).

Pure functions of arrays; :mod:`experiments.recipes` wires them to policies and configurations.

Sampled (responses ``y^(b) ~ π``, ``b = 1 ... B``, under ``stop_gradient``):

* :func:`reinforce_surrogate` - REINFORCE for ``E_π[c] + λ KL(π‖π0)`` with the KL in the return:
  ``∇ ≈ (1/B) Σ_b Σ_t (G_t^(b) - b_t^(b)) s_t(y^(b))``,
  ``G_t = c(y) + λ Σ_{s>=t} log(π(y_s|y_<s) / π0(y_s|y_<s))``; baselines :func:`value_baseline`
  (``H_{t-1}(y_<t)``, exactly zero advantage beyond the horizon, THEORY.md T10) and
  :func:`mean_baseline` (leave-one-out batch mean, so the estimator stays unbiased).
* :func:`sampled_dpo_loss` - DPO on pairs drawn from ``π_ref ⊗ π_ref`` and labelled by the cost.

Exact, for binary costs: :func:`dpo_loss_blocks` equals :func:`toy_lm.engines.objectives.dpo_loss` (the
shared definition) but only forms the (preferred, dispreferred) block, in chunks.

Supervised (level weights ``W_l`` of :mod:`experiments.data`):

* :func:`supervised_loss` - cross-entropy ``Σ_l Σ_{u,v} W_l[u,v] (-log π(v|u))``: base SFT, SFT on
  refusals, safety-recovery augmentation, the harmful fine-tuning attack;
* :func:`constrained_loss` - Qi et al.'s token-wise constrained objective
  ``Σ_l Σ_{u,v} W_l[u,v] (-(2/β_t) log σ(β_t (log π(v|u) - log π_ref(v|u))))``, ``t = l + 1``,
  with :func:`qi_betas`.

References:
  Qi et al. 2025, "Safety Alignment Should Be Made More Than Just a Few Tokens Deep", sec. 3
  (augmentation) and eq. 3 (token-wise constrained objective).
  Rafailov et al. 2023, "Direct Preference Optimization", eq. 7.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.engines import tree
from toy_lm.errors import InputError
from toy_lm.tables import prefix_index

__all__ = [
    "constrained_loss",
    "dpo_loss_binary",
    "dpo_loss_blocks",
    "dpo_pair_blocks",
    "dpo_preferences",
    "mean_baseline",
    "qi_betas",
    "reinforce_surrogate",
    "returns_to_go",
    "sampled_dpo_loss",
    "supervised_loss",
    "value_baseline",
]


# -- supervised -------------------------------------------------------------------------------
def supervised_loss(logits: Sequence, weights: Sequence) -> jax.Array:
    """``Σ_l Σ_{u,v} W_l[u, v] · (-log π(v | u))`` over level tables ``(V**l, V)``."""
    return sum(
        jnp.sum(jnp.asarray(w) * -jax.nn.log_softmax(z, axis=-1)) for z, w in zip(logits, weights)
    )


def qi_betas(
    length: int, first: float = 0.5, early: float = 2.0, early_until: int = 5, late: float = 0.1
) -> np.ndarray:
    """Per-position ``β_t``, ``t = 1 ... T``: ``β_1 = first``, ``β_t = early`` for
    ``2 <= t <= early_until``, ``β_t = late`` after (Qi et al.'s default schedule)."""
    betas = np.full(length, float(late))
    betas[: min(early_until, length)] = early
    betas[0] = first
    return betas


def constrained_loss(logits: Sequence, ref_logits: Sequence, weights: Sequence, betas) -> jax.Array:
    """Qi et al.'s token-wise constrained fine-tuning loss on level tables.

    ``Σ_l Σ_{u,v} W_l[u,v] · (-(2/β_t) log σ(β_t (log π(v|u) - log π_ref(v|u))))`` with
    ``t = l + 1``. Its gradient is the cross-entropy gradient scaled by
    ``2 (1 - σ(β_t Δ))``: as ``β_t → 0`` it is plain SFT; a large ``β_t`` stops pushing once
    ``π`` exceeds ``π_ref`` on the token, which protects the positions with large ``β_t``.
    """
    total = 0.0
    for level, (z, zr, w) in enumerate(zip(logits, ref_logits, weights)):
        beta = betas[level]
        ratio = jax.nn.log_softmax(z, axis=-1) - jax.nn.log_softmax(zr, axis=-1)
        total = total + jnp.sum(jnp.asarray(w) * (-2.0 / beta) * jax.nn.log_sigmoid(beta * ratio))
    return total


# -- REINFORCE --------------------------------------------------------------------------------
def returns_to_go(costs: jax.Array, log_ratio: jax.Array, lam) -> jax.Array:
    """``G_t = c(y) + λ Σ_{s>=t} log(π(y_s|y_<s)/π0(y_s|y_<s))``, ``(B,) (B,T) -> (B,T)``."""
    tail = jnp.flip(jnp.cumsum(jnp.flip(log_ratio, axis=1), axis=1), axis=1)
    return costs[:, None] + lam * tail


def value_baseline(values: Sequence, responses: jax.Array, vocab_size: int) -> jax.Array:
    """``b_t = H_{t-1}(y_<t)`` for every sample and position, ``(B, T)``.

    Args:
      values: ``H_0 ... H_T`` of the cost under the current policy (:func:`toy_lm.engines.tree.cond_harm`).
      responses: ``(B, T)`` sampled responses.
    """
    length = responses.shape[1]
    return jnp.stack(
        [values[level][prefix_index(responses[:, :level], vocab_size)] for level in range(length)],
        axis=1,
    )


def mean_baseline(returns: jax.Array) -> jax.Array:
    """Leave-one-out batch mean of the returns per position, ``(B, T) -> (B, T)``."""
    batch = returns.shape[0]
    return (jnp.sum(returns, axis=0, keepdims=True) - returns) / (batch - 1)


def reinforce_surrogate(token_logp: jax.Array, advantages: jax.Array) -> jax.Array:
    """``(1/B) Σ_b Σ_t sg(A_t^(b)) log π(y_t^(b) | y_<t^(b))``; its gradient is the estimate."""
    if token_logp.shape != advantages.shape:
        raise InputError(
            f"token log-probs {token_logp.shape} and advantages {advantages.shape} "
            "must both be (B, T)"
        )
    return jnp.mean(jnp.sum(jax.lax.stop_gradient(advantages) * token_logp, axis=1))


# -- DPO --------------------------------------------------------------------------------------
def dpo_preferences(cost_a: jax.Array, cost_b: jax.Array) -> jax.Array:
    """``+1`` where ``a`` is preferred (lower cost), ``-1`` where ``b`` is, ``0`` for ties."""
    return jnp.sign(cost_b - cost_a)


def sampled_dpo_loss(logp_a, logp_b, ref_a, ref_b, preference, beta) -> jax.Array:
    """Mean DPO loss ``-log σ(β (r_w - r_l))`` over the pairs with a preference.

    ``r = log π(y) - log π_ref(y)`` per sequence; ``preference`` from :func:`dpo_preferences`
    (pairs with 0 carry no preference and are skipped; no valid pair gives loss 0).
    """
    margin = preference * ((logp_a - ref_a) - (logp_b - ref_b))
    valid = preference != 0
    losses = jnp.where(valid, -jax.nn.log_sigmoid(beta * margin), 0.0)
    return jnp.sum(losses) / jnp.maximum(jnp.sum(valid), 1)


def dpo_pair_blocks(cost, chunk: int = 1024) -> dict:
    """Index arrays of the (preferred, dispreferred) pairs of a binary cost, for
    :func:`dpo_loss_blocks`: ``good`` ``(n_chunks, chunk)`` (padded), ``live`` (1 = real, 0 = pad)
    and ``bad``. ``cost`` must be a concrete 0/1 array."""
    cost = np.asarray(cost)
    if not np.all((cost == 0) | (cost == 1)):
        raise InputError(
            "the block DPO loss needs a binary (0/1) cost; use "
            "toy_lm.engines.objectives.dpo_loss for soft costs"
        )
    good, bad = np.flatnonzero(cost == 0), np.flatnonzero(cost == 1)
    if len(good) == 0 or len(bad) == 0:
        raise InputError("every response has the same cost: DPO has no preference pairs")
    chunk = min(chunk, len(good))
    pad = (-len(good)) % chunk
    return {
        "good": np.concatenate([good, np.full(pad, good[0])]).reshape(-1, chunk),
        "live": np.concatenate([np.ones(len(good)), np.zeros(pad)]).reshape(-1, chunk),
        "bad": bad,
    }


def dpo_loss_blocks(logits, ref_logits, blocks: dict, beta) -> jax.Array:
    """Exact expected DPO loss for a binary cost, by (preferred, dispreferred) blocks.

    ``L = Σ_{y: c(y)=0} Σ_{y': c(y')=1} π_ref(y) π_ref(y') (-log σ(β (r(y) - r(y'))))`` with
    ``r = log π - log π_ref`` - the same quantity as :func:`toy_lm.engines.objectives.dpo_loss` (which forms
    all ``V**(2T)`` pairs) in ``O(chunk · |{c = 1}|)`` memory; ``blocks`` from
    :func:`dpo_pair_blocks`.
    """
    ref_logp = tree.response_log_probs(ref_logits)
    ratio = tree.response_log_probs(logits) - ref_logp
    ref_p = jnp.exp(ref_logp)
    bad_r, bad_w = ratio[blocks["bad"]], ref_p[blocks["bad"]]

    def block(args):
        idx, live = args
        weight = (live * ref_p[idx])[:, None] * bad_w[None, :]
        return jnp.sum(weight * -jax.nn.log_sigmoid(beta * (ratio[idx][:, None] - bad_r[None, :])))

    return jnp.sum(jax.lax.map(block, (jnp.asarray(blocks["good"]), jnp.asarray(blocks["live"]))))


def dpo_loss_binary(logits, ref_logits, cost, beta, chunk: int = 1024) -> jax.Array:
    """:func:`dpo_loss_blocks` for a concrete binary ``cost`` (builds the blocks first)."""
    return dpo_loss_blocks(logits, ref_logits, dpo_pair_blocks(cost, chunk), beta)
