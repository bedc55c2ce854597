"""Parameter-space quantities of an instance by autodiff, compiled once per policy shape.

Everything a check needs in parameter space (scores, per-position gradients by every route)
comes from one jitted call per instance, :func:`parameter_quantities`, whose
compiled program is reused by every instance with the same policy (same kind, ``V`` and ``T``;
the policy is a static argument, parameters and harm are traced). Compilation dominates the cost
of these tiny programs, so the programs are compiled with XLA's backend optimization turned off
(:data:`COMPILER_OPTIONS`): on a 2-core CPU that halves compile time and costs nothing
measurable at run time for trees of a few hundred responses.

Routes to ``g_t`` computed here (all flattened to ``(T, D)`` with ``D`` parameters, leaves in
``jax.tree_util`` order):

* ``g_autodiff`` - :func:`toy_lm.engines.gradients.per_position_grads_autodiff` (level tables, stop-gradient);
* ``g_surrogate`` - :func:`toy_lm.engines.gradients.per_position_grads_surrogate` (martingale surrogate);
* ``g_total`` - :func:`toy_lm.engines.gradients.total_grad`, plain ``jax.grad`` of ``E_π[h]``;
* ``g_teacher`` (:func:`teacher_forced_grads`) - written here: ``jax.grad`` of ``Σ_y P(y) h(y)`` with ``P(y)`` from
  the teacher-forced token log-probabilities and every position but ``t`` under stop-gradient;
* ``scores`` - ``s_t(y) = ∇_θ log π_θ(y_t|y_<t)`` for every response and position, ``(V**T, T, D)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.engines import gradients
from toy_lm.tables import all_prefixes

__all__ = [
    "COMPILER_OPTIONS",
    "flatten",
    "jit",
    "level_tables",
    "parameter_quantities",
    "response_log_probs",
    "score_tensor",
    "teacher_forced_grads",
    "to_numpy",
    "value_and_flat_grad",
]

#: XLA options for the checks' programs: backend optimization off (compile time is the cost).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def jit(fn=None, **kwargs):
    """``jax.jit`` with :data:`COMPILER_OPTIONS`; usable as a decorator with keyword arguments."""
    if fn is None:
        return functools.partial(jit, **kwargs)
    return jax.jit(fn, compiler_options=COMPILER_OPTIONS, **kwargs)


def flatten(tree, lead: tuple[int, ...]) -> jax.Array:
    """Concatenate the leaves of a pytree whose leaves share leading axes ``lead``: ``(*lead, D)``."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate([jnp.reshape(leaf, lead + (-1,)) for leaf in leaves], axis=-1)


def _responses(policy) -> jax.Array:
    return jnp.asarray(all_prefixes(policy.vocab_size, policy.length))


def _tables_fn(policy):
    return functools.partial(policy.level_tables, prompt=0)


@jit(static_argnames=("policy",))
def level_tables(policy, params) -> tuple:
    """``policy.level_tables(params)`` as one compiled program."""
    return policy.level_tables(params)


def score_tensor(policy, params, responses) -> jax.Array:
    """``s_t(y) = ∇_θ log π_θ(y_t|y_<t)`` for every response and position, ``(N, T, D)``.

    One reverse pass per (response, position), vmapped over responses: each response's ``T``
    teacher-forced log-probabilities are differentiated on their own.
    """
    length = responses.shape[1]

    def one(y):
        jac = jax.jacrev(lambda p: policy.token_log_probs(p, y[None])[0])(params)
        return flatten(jac, (length,))

    return jax.vmap(one)(responses)


@jit(static_argnames=("policy",))
def parameter_quantities(policy, params, harm) -> dict:
    """Tables, teacher-forced log-probs, scores and ``g_t`` by every route.

    Args:
      policy: a :class:`toy_lm.models.policies.Policy` (static).
      params: its parameters.
      harm: ``(V**T,)``.

    Returns:
      dict with ``tables`` (tuple of ``(V**l, V)``), ``token_log_probs`` ``(V**T, T)``, ``scores``
      ``(V**T, T, D)``, ``g_autodiff`` ``(T, D)``, ``g_surrogate`` ``(T, D)``, ``g_total`` ``(D,)``,
      and ``g_teacher`` ``(T, D)`` (:func:`teacher_forced_grads`).
    """
    responses = _responses(policy)
    length = responses.shape[1]
    tables_fn = _tables_fn(policy)
    return {
        "tables": tables_fn(params),
        "token_log_probs": policy.token_log_probs(params, responses),
        "scores": score_tensor(policy, params, responses),
        "g_autodiff": flatten(
            gradients.per_position_grads_autodiff(tables_fn, params, harm), (length,)
        ),
        "g_surrogate": flatten(
            gradients.per_position_grads_surrogate(tables_fn, params, harm), (length,)
        ),
        "g_total": flatten(gradients.total_grad(tables_fn, params, harm), ()),
        "g_teacher": _teacher_forced_grads(policy, params, harm, stop_gradient=True),
    }


def _teacher_forced_grads(policy, params, harm, *, stop_gradient: bool = True) -> jax.Array:
    """``g_t = ∇_θ Σ_y P(y) h(y)`` with only position ``t``'s factor live, ``(T, D)``.

    ``P(y) = exp Σ_s log π_θ(y_s|y_<s)`` from the teacher-forced log-probabilities of every response
    (not the level tables); position ``t``'s term is ``sg(lp) + e_t (lp - sg(lp))``. With
    ``stop_gradient=False`` (a planted error) every factor stays live and each row is the total
    gradient.
    """
    responses = _responses(policy)
    length = responses.shape[1]
    harm = jnp.asarray(harm)

    def per_position(p):
        logp = policy.token_log_probs(p, responses)  # (N, T)
        frozen = jax.lax.stop_gradient(logp) if stop_gradient else logp
        eye = jnp.eye(length, dtype=logp.dtype)
        masked = frozen[None] + eye[:, None, :] * (logp - frozen)[None]  # (T, N, T)
        return jnp.sum(jnp.exp(jnp.sum(masked, axis=-1)) * harm[None], axis=1)

    return flatten(jax.jacrev(per_position)(params), (length,))


#: :func:`_teacher_forced_grads` on its own (for a planted dropped stop-gradient or a planted harm).
teacher_forced_grads = jit(_teacher_forced_grads, static_argnames=("policy", "stop_gradient"))


def to_numpy(tree):
    """Device arrays to numpy (float64 stays float64)."""
    return jax.tree_util.tree_map(np.asarray, tree)


def response_log_probs(tables, vocab_size: int, length: int) -> jax.Array:
    """``log P(y)`` of every response ``(V**T,)`` from level tables of logits, written over the
    responses' base-``V`` digits (independent of :mod:`toy_lm.engines.tree`; differentiable, for the
    checks that compare an objective's ``jax.grad`` with a direct sum)."""
    digits = jnp.asarray(all_prefixes(vocab_size, length))
    out = jnp.zeros(digits.shape[0], jnp.result_type(float))
    for level, table in enumerate(tables):
        row = (
            digits[:, :level] @ (vocab_size ** jnp.arange(level - 1, -1, -1))
            if level
            else jnp.zeros(digits.shape[0], int)
        )
        out = out + jax.nn.log_softmax(jnp.asarray(table), axis=-1)[row, digits[:, level]]
    return out


def value_and_flat_grad(fn, tables) -> np.ndarray:
    """``[fn(tables), ∇fn(tables) flattened]`` as one float64 vector (a loss and its gradient
    compared with a direct sum in one part)."""
    value, grads = jax.value_and_grad(fn)(tables)
    return np.concatenate(
        [[float(value)]] + [np.asarray(g).reshape(-1) for g in jax.tree_util.tree_leaves(grads)]
    )
