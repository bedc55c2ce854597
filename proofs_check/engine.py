"""The foundation's table-level computations under test, compiled once per tree shape.

The checks compare the exact engine (:mod:`toy_lm.engines.tree`, :mod:`toy_lm.engines.objectives`) and plain
``jax.grad`` with respect to the level tables against direct computations. Each function here is
one jitted program per ``(V, T)`` (tables and harm are traced), so every instance of a shape,
whatever its parameterization or seed, reuses the compiled code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from proofs_check.autodiff import jit
from toy_lm.engines import objectives, tree

__all__ = [
    "dense_equilibrium",
    "dpo_grad",
    "engine_quantities",
    "equilibrium_sweep",
    "kl_loss_grad",
    "recovery_grad",
]


def _sequence_expectation(tables, harm):
    """``E_π[h] = Σ_y P(y) h(y)`` with ``P(y)`` the product of the level conditionals along ``y``."""
    return jnp.sum(jnp.exp(tree.response_log_probs(tables)) * harm)


@jit
def engine_quantities(tables, harm) -> dict:
    """The engine's martingale quantities and ``jax.grad`` of ``E_π[h]`` w.r.t. the tables.

    Returns:
      dict with ``cond_harm`` (``H_0 ... H_T``), ``increments`` (``Δ_1 ... Δ_T``),
      ``logit_grads`` (engine closed form, T4), ``harm_information`` ``(T,)``, ``prefix_probs``
      (``P_0 ... P_T``) and ``grad_tables`` (autodiff of the sequence-product expectation).
    """
    tables = tuple(tables)
    return {
        "cond_harm": tree.cond_harm(tables, harm),
        "increments": tree.increments(tables, harm),
        "logit_grads": tree.logit_grads(tables, harm),
        "harm_information": tree.harm_information(tables, harm),
        "prefix_probs": tree.prefix_probs(tables),
        "grad_tables": jax.grad(_sequence_expectation)(tables, harm),
    }


@jit
def kl_loss_grad(tables, base_tables, harm, lam):
    """``∇_z L_λ`` w.r.t. the level tables, ``L_λ = E_π[h] + λ KL(π‖π0)`` (objectives)."""
    return jax.grad(objectives.kl_regularized_loss)(tuple(tables), tuple(base_tables), harm, lam)


@jit
def equilibrium_sweep(base_tables, harm, lams) -> dict:
    """``π*_λ`` and ``KL_t(π*_λ‖π0)`` for a vector of ``λ`` (vmapped), by the engine.

    Returns:
      dict with ``log_tables`` (tuple of ``(L, V**l, V)``), ``kl`` ``(L, T)``, ``log_partition``
      (``log Z_0 ... log Z_T``, tuple of ``(L, V**l)``) and ``harm_information`` ``(T,)`` of ``π0``.
    """
    base = tuple(base_tables)

    def one(lam):
        eq = tree.equilibrium_policy(base, harm, lam)
        return eq, tree.per_position_kl(eq, base), tree.log_partition(base, harm, lam)

    log_tables, kl, logz = jax.vmap(one)(lams)
    return {
        "log_tables": log_tables,
        "kl": kl,
        "log_partition": logz,
        "harm_information": tree.harm_information(base, harm),
    }


@jit
def recovery_grad(tables, base_tables, harm, mu) -> dict:
    """``∇_z L_rec`` w.r.t. the tables with ``q_k`` the base model's harmful prefixes (objectives)."""
    dists = objectives.base_harmful_prefix_dists(tuple(base_tables), harm)
    grad = jax.grad(objectives.recovery_prefill_loss)(tuple(tables), harm, dists, mu)
    return {"grad_tables": grad, "prefix_dists": tuple(dists)}


@jit
def dense_equilibrium(base_tables, harm, costs, mu, lam):
    """Log-prob tables of the minimizer of ``L_dense + λ KL`` (objectives)."""
    return objectives.dense_equilibrium_policy(tuple(base_tables), harm, tuple(costs), mu, lam)


@jit
def dpo_grad(tables, ref_tables, harm, beta):
    """``∇_z`` of the exact expected DPO loss w.r.t. the tables (objectives)."""
    return jax.grad(objectives.dpo_loss)(tuple(tables), tuple(ref_tables), harm, beta)
