"""Per-position gradients ``g_t`` for any parameterization, by two independent routes.

A parameterization is a function ``tables_fn(params) -> level tables`` (for a policy,
``functools.partial(policy.level_tables, prompt=x)``). THEORY.md defines

``g_t = ∇_θ E_π[h]`` with only the factor ``π_θ(y_t | y_<t)`` differentiated,

and proves (T3) ``g_t = E[h s_t] = E[Δ_t s_t] = Cov(H_t, s_t)``. The two routes here are:

* :func:`per_position_grads_autodiff` - ``jax.grad`` of the exact expectation ``Σ_y P(y) h(y)``
  in which every level table except level ``t - 1`` is under ``stop_gradient``;
* :func:`per_position_grads_surrogate` - ``jax.grad`` of the martingale surrogate
  ``Σ_y sg(P(y_<=t)) sg(Δ_t(y_<=t)) log π_θ(y_t | y_<t)``, the enumerated covariance.

Both return pytrees shaped like ``params`` with a leading axis of length ``T`` (position ``t`` at
index ``t - 1``); :func:`total_grad` is plain ``jax.grad`` of ``E_π[h]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from toy_lm.engines import tree
from toy_lm.mutation import point

__all__ = [
    "TablesFn",
    "expected_harm_fn",
    "martingale_surrogate",
    "per_position_grads_autodiff",
    "per_position_grads_surrogate",
    "per_position_norms",
    "total_grad",
]

TablesFn = Callable[..., tuple]


def _sequence_expectation(tables, harm):
    """``Σ_y P(y) h(y)`` with ``P(y)`` the product of conditionals over the whole response."""
    return jnp.sum(jnp.exp(tree.response_log_probs(tables)) * harm)


def expected_harm_fn(tables_fn: TablesFn, harm: jax.Array) -> Callable:
    """``params -> E_π[h]`` through ``tables_fn`` (sequence-product form)."""
    return lambda params: _sequence_expectation(tables_fn(params), harm)


def total_grad(tables_fn: TablesFn, params, harm: jax.Array):
    """Plain ``jax.grad`` of ``E_π[h]`` with respect to ``params``."""
    return jax.grad(expected_harm_fn(tables_fn, harm))(params)


def per_position_grads_autodiff(tables_fn: TablesFn, params, harm: jax.Array):
    """``g_t`` by stop-gradient autodiff: only level ``t - 1`` of the tables is live.

    Returns:
      ``params``-shaped pytree with a leading axis ``T``.
    """

    def live_at_each_position(p):
        tables = tables_fn(p)
        frozen = [jax.lax.stop_gradient(z) for z in tables]

        def live_at(level):
            live = point("gradients.autodiff.live", level, length=len(tables))
            return frozen[:live] + [tables[live]] + frozen[live + 1 :]

        return jnp.stack(
            [_sequence_expectation(live_at(level), harm) for level in range(len(tables))]
        )

    return jax.jacrev(live_at_each_position)(params)


def martingale_surrogate(tables_fn: TablesFn, params, harm: jax.Array) -> jax.Array:
    """``S_t(θ) = Σ_{y_<=t} sg(P(y_<=t) Δ_t(y_<=t)) log π_θ(y_t | y_<t)`` for ``t = 1 ... T``.

    Its gradient is ``E[Δ_t s_t] = g_t`` (THEORY.md T3); its value is not meaningful.
    """
    tables = tables_fn(params)
    frozen = [jax.lax.stop_gradient(z) for z in tables]
    weights = point("gradients.surrogate.weights", frozen, live=tables)
    probs = tree.prefix_probs(weights)
    deltas = tree.increments(weights, harm)
    out = []
    for level, z in enumerate(tables):
        logp = jax.nn.log_softmax(z, axis=-1).reshape(-1)
        out.append(jnp.sum(probs[level + 1] * deltas[level] * logp))
    return jnp.stack(out)


def per_position_grads_surrogate(tables_fn: TablesFn, params, harm: jax.Array):
    """``g_t`` as the gradient of :func:`martingale_surrogate` (enumerated covariance route).

    Returns:
      ``params``-shaped pytree with a leading axis ``T``.
    """
    return jax.jacrev(lambda p: martingale_surrogate(tables_fn, p, harm))(params)


def per_position_norms(grads) -> jax.Array:
    """Euclidean norm of each position's gradient over all parameter leaves, ``(T,)``."""
    leaves = jax.tree_util.tree_leaves(grads)
    return jnp.sqrt(sum(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in leaves))
