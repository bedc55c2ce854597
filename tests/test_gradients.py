"""Tests of toy_lm.engines.gradients: per-position gradients g_t by two routes, for every
parameterization (tabular, positional, Markov, shared-weight transformer and MLP)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import POLICY_KINDS, SMALL_SIZES, examples, instances, tol

from toy_lm.engines import gradients, tree
from toy_lm.models import harms
from toy_lm.models.policies import TabularPolicy


@functools.cache
def routes(policy):
    """Both per-position routes and the total gradient, in one jitted program per policy."""

    def run(params, harm):
        tables_fn = policy.level_tables
        return (
            gradients.per_position_grads_autodiff(tables_fn, params, harm),
            gradients.per_position_grads_surrogate(tables_fn, params, harm),
            gradients.total_grad(tables_fn, params, harm),
        )

    return jax.jit(run)


def leaves(tree_):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree_)]


@pytest.mark.parametrize("kind", POLICY_KINDS)
@settings(max_examples=examples(1))
@given(data=st.data())
def test_both_routes_agree_and_vanish_beyond_the_horizon(kind, data):
    """T3/T5 for any parameterization: g_t by stop-gradient autodiff equals g_t by the
    martingale surrogate; Σ_t g_t = ∇E[h]; g_t = 0 for t > τ* (exactly, by the surrogate)."""
    inst = data.draw(instances(sizes=SMALL_SIZES[:1], policy_kinds=(kind,)))
    T, n = inst.length, inst.vocab_size**inst.length
    by_autodiff, by_surrogate, total = routes(inst.policy)(inst.params, jnp.asarray(inst.harm))
    a, s, g = leaves(by_autodiff), leaves(by_surrogate), leaves(total)
    scale = max(1.0, max(np.abs(x).max() for x in a))
    bound = tol(64 * (T + 1) * n * scale, "64 x (T+1) factors x V**T terms x gradient scale")
    tau_star = harms.horizon(inst.harm, inst.vocab_size)
    for x, y, z in zip(a, s, g):
        assert x.shape == (T,) + z.shape
        np.testing.assert_allclose(x, y, rtol=0, atol=bound)
        np.testing.assert_allclose(x.sum(axis=0), z, rtol=0, atol=bound)
        np.testing.assert_allclose(x[tau_star:], 0.0, rtol=0, atol=bound)
        assert np.all(y[tau_star:] == 0.0)
    norms = np.asarray(gradients.per_position_norms(by_surrogate))
    assert norms.shape == (T,)
    np.testing.assert_allclose(
        norms, np.sqrt(sum((x.reshape(T, -1) ** 2).sum(axis=1) for x in s)), rtol=1e-12, atol=0
    )


def test_tabular_per_position_grads_are_the_logit_grads():
    """For free logits, g_t lives on the level-(t-1) table and equals G there (T4)."""
    policy = TabularPolicy(2, 3)
    params = policy.init(jax.random.key(0))
    harm = jnp.asarray([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    g = routes(policy)(params, harm)[1]
    closed = tree.logit_grads(policy.level_tables(params), harm)
    for level in range(3):
        for t in range(3):
            want = closed[level] if t == level else 0.0
            np.testing.assert_allclose(
                np.asarray(g[level])[t, 0],
                want,
                rtol=0,
                atol=tol(64 * 4 * 8, "(T+1) factors x V**T terms"),
            )


def test_routes_check_detects_a_wrong_harm():
    """Planted error: the surrogate of a different harm disagrees with the autodiff route."""
    policy = TabularPolicy(2, 3)
    params = policy.init(jax.random.key(2))
    harm = jnp.asarray([0, 1, 1, 0, 1, 0, 0, 1.0])
    a = routes(policy)(params, harm)[0]
    s = routes(policy)(params, harm.at[0].set(0.5))[1]
    assert any(not np.allclose(x, y, rtol=0, atol=1e-10) for x, y in zip(leaves(a), leaves(s)))
