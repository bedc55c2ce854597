"""Exact-expectation alignment objectives as pure functions of level tables.

Every objective here is an exact expectation over all responses (no sampling), differentiable
with ``jax.grad`` through whatever parameterization produced the tables. The sampled versions used
in training experiments live in :mod:`experiments`.

* :func:`kl_regularized_loss` - ``L_λ = E_π[h] + λ KL(π‖π0)`` (THEORY.md section 2);
* :func:`recovery_prefill_loss` - ``L_rec = E_π[h] + Σ_k μ_k ASR_π(k)`` with fixed ``q_k``;
* :func:`dense_recovery_loss` - ``L_dense = E_π[h] + Σ_t μ_t E_π[c_t(Y_<=t)]``;
* :func:`dense_equilibrium_policy` - the minimizer of ``L_dense + λ KL``, ``π0`` tilted by
  ``exp(-(h + Σ_t μ_t c_t)/λ)``;
* :func:`dpo_loss` - DPO with preference pairs drawn from ``π_ref`` and labelled by ``h``.

Index convention: ``costs[t-1]`` is ``c_t``, shape ``(V**t,)`` over the prefixes ``y_<=t``
(position ``t = 1 ... T``); ``mu`` for the prefill form is indexed by ``k = 1 ... T-1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.engines import tree
from toy_lm.errors import InputError
from toy_lm.models.automata import Automaton, level_states
from toy_lm.mutation import point
from toy_lm.tables import infer_sizes, level_size

__all__ = [
    "automaton_costs",
    "base_harmful_prefix_dists",
    "dense_equilibrium_policy",
    "dense_recovery_loss",
    "dense_total_cost",
    "dpo_loss",
    "kl_regularized_loss",
    "recovery_prefill_loss",
]


def kl_regularized_loss(logits, base_logits, harm, lam) -> jax.Array:
    """``L_λ(π) = E_π[h] + λ Σ_t KL_t(π‖π0)``; its minimizer is ``π*_λ ∝ π0 exp(-h/λ)``."""
    logits, base_logits = point("objectives.kl.pair", (logits, base_logits))
    return tree.expected_harm(logits, harm) + lam * jnp.sum(
        tree.per_position_kl(logits, base_logits)
    )


def recovery_prefill_loss(logits, harm, prefix_dists: Sequence, mu) -> jax.Array:
    """``L_rec(π) = E_π[h] + Σ_{k=1}^{T-1} μ_k ASR_π(k)``, ``ASR_π(k) = Σ q_k(y_<=k) H^π_k(y_<=k)``.

    Args:
      logits: the trained policy's level tables.
      harm: ``(V**T,)``.
      prefix_dists: ``q_1 ... q_{T-1}``, ``q_k`` of shape ``(V**k,)`` (fixed, off-policy; e.g.
        :func:`toy_lm.engines.tree.harmful_prefix_dist` of the base model).
      mu: ``(T-1,)`` non-negative weights ``μ_1 ... μ_{T-1}``.
    """
    _, length = infer_sizes(logits)
    if len(prefix_dists) != length - 1:
        raise InputError(
            f"need T-1 = {length - 1} prefix distributions q_1 ... q_(T-1), got {len(prefix_dists)}"
        )
    values = tree.cond_harm(logits, harm)
    asr = jnp.stack(
        [
            jnp.sum(point("objectives.recovery.dist", jnp.asarray(q), k=k) * values[k])
            for k, q in enumerate(prefix_dists, 1)
        ]
    )
    return values[0][0] + jnp.sum(jnp.asarray(mu) * asr)


def base_harmful_prefix_dists(base_logits, harm) -> list[jax.Array]:
    """``q_k = P_{π0}(y_<=k | h=1)`` for ``k = 1 ... T-1`` (the base model's harmful prefixes)."""
    _, length = infer_sizes(base_logits)
    return [tree.harmful_prefix_dist(base_logits, harm, k) for k in range(1, length)]


def automaton_costs(dfa: Automaton, length: int, cost_states) -> list[jax.Array]:
    """Dense costs ``c_t(y_<=t) = 1[state after y_<=t ∈ cost_states]`` for ``t = 1 ... T``.

    For :func:`toy_lm.models.automata.harmful_before_refusal` the natural choice of ``cost_states`` is
    every state with at least one harmful token and no refusal yet, plus HARM ("harmful, not yet
    recovered").
    """
    mask = np.zeros(dfa.num_states, bool)
    mask[list(cost_states)] = True
    states = level_states(dfa, length)
    return [jnp.asarray(mask[states[t]], jnp.result_type(float)) for t in range(1, length + 1)]


def dense_recovery_loss(logits, harm, costs: Sequence, mu) -> jax.Array:
    """``L_dense(π) = E_π[h] + Σ_t μ_t E_π[c_t(Y_<=t)]`` with ``costs[t-1] = c_t`` ``(V**t,)``."""
    _, length = infer_sizes(logits)
    _check_costs(costs, length)
    probs = tree.prefix_probs(logits)
    dense = jnp.stack([jnp.sum(probs[t] * jnp.asarray(c)) for t, c in enumerate(costs, 1)])
    return tree.expected_harm(logits, harm) + jnp.sum(jnp.asarray(mu) * dense)


def _check_costs(costs, length):
    if len(costs) != length:
        raise InputError(f"need T = {length} cost tables c_1 ... c_T, got {len(costs)}")


def dense_total_cost(harm, costs: Sequence, mu, vocab_size: int) -> jax.Array:
    """Sequence-level cost ``h(y) + Σ_t μ_t c_t(y_<=t)`` for every response ``(V**T,)``."""
    length = len(costs)
    _check_costs(costs, length)
    total = jnp.asarray(harm)
    for t, (c, m) in enumerate(zip(costs, jnp.asarray(mu)), 1):
        c = point("objectives.dense.cost", jnp.asarray(c), position=t, length=length)
        total = total + m * jnp.repeat(c, level_size(vocab_size, length - t))
    return total


def dense_equilibrium_policy(base_logits, harm, costs: Sequence, mu, lam):
    """Log-prob tables of the minimizer of ``L_dense + λ KL(π‖π0)``.

    It is ``π0`` tilted by ``exp(-(h + Σ_t μ_t c_t)/λ)``, i.e.
    :func:`toy_lm.engines.tree.equilibrium_policy` applied to the total sequence-level cost.
    """
    vocab_size, _ = infer_sizes(base_logits)
    return tree.equilibrium_policy(base_logits, dense_total_cost(harm, costs, mu, vocab_size), lam)


def dpo_loss(logits, ref_logits, harm, beta) -> jax.Array:
    """Exact expected DPO loss with pairs drawn from ``π_ref ⊗ π_ref`` and labelled by ``h``.

    ``L = Σ_{y, y'} π_ref(y) π_ref(y') 1[h(y) < h(y')] (-log σ(β (r(y) - r(y'))))`` with
    ``r(y) = log π(y) - log π_ref(y)``: the less harmful response of each pair is preferred, ties
    carry no preference. Costs ``O(V**(2T))`` memory: for small trees only.

    References:
      Rafailov et al. 2023, "Direct Preference Optimization", eq. 7.
    """
    ref_logp = tree.response_log_probs(ref_logits)
    ratio = tree.response_log_probs(logits) - ref_logp
    harm = jnp.asarray(harm)
    preferred = point("objectives.dpo.preferred", harm[:, None] < harm[None, :], harm=harm)
    pair_weight = jnp.exp(ref_logp[:, None] + ref_logp[None, :]) * preferred
    margin = point(
        "objectives.dpo.margin", beta * (ratio[:, None] - ratio[None, :]), ratio=ratio, beta=beta
    )
    return jnp.sum(pair_weight * -jax.nn.log_sigmoid(margin))
