"""Tests of toy_lm.models.neural: the shared-weight transformer and MLP policies (Flax NNX)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import NEURAL_KINDS, SMALL_SIZES, examples, init_params, jitted, make_policy, tol

from toy_lm.errors import InputError
from toy_lm.models.neural import MLPPolicy, TransformerPolicy
from toy_lm.models.policies import Policy
from toy_lm.tables import all_prefixes

SAME = tol(64, "the same logits by another order of operations")


@pytest.mark.parametrize("kind", NEURAL_KINDS)
def test_parameters_are_float64_nnx_state(kind):
    policy = make_policy(kind, 3, 2)
    params = init_params(policy, kind, 0)
    assert isinstance(params, nnx.State)
    leaves = jax.tree_util.tree_leaves(params)
    assert leaves and all(leaf.dtype == jnp.float64 for leaf in leaves)
    tables = jitted(policy, "level_tables")(params)
    assert all(t.dtype == jnp.float64 for t in tables)


@settings(max_examples=examples(6))
@given(st.sampled_from(NEURAL_KINDS), st.sampled_from(SMALL_SIZES), st.integers(0, 2**31 - 1))
def test_logits_are_causal(kind, vt, seed):
    """Changing later tokens never changes the logits at earlier positions (teacher forcing)."""
    vocab_size, length = vt
    policy = make_policy(kind, vocab_size, length)
    params = init_params(policy, kind, seed)
    rng = np.random.default_rng(seed)
    responses = rng.integers(0, vocab_size, (8, length))
    changed = responses.copy()
    changed[:, -1] = (changed[:, -1] + 1) % vocab_size
    forced = jitted(policy, "teacher_forced_logits")
    a, b = np.asarray(forced(params, responses)), np.asarray(forced(params, changed))
    np.testing.assert_array_equal(a, b)  # the last token conditions nothing
    if length > 1:
        changed[:, -2] = (changed[:, -2] + 1) % vocab_size
        c = np.asarray(forced(params, changed))
        np.testing.assert_allclose(a[:, :-1], c[:, :-1], rtol=0, atol=SAME)
        assert not np.allclose(a[:, -1], c[:, -1])  # ... but it does condition the next one


@pytest.mark.parametrize("kind", NEURAL_KINDS)
def test_length_one(kind):
    policy = make_policy(kind, 3, 1)
    params = init_params(policy, kind, 1)
    (table,) = jitted(policy, "level_tables")(params)
    assert table.shape == (1, 3)
    root = jitted(policy, "next_logits")(params, jnp.zeros((1, 0), jnp.int32))
    np.testing.assert_allclose(table, root, rtol=0, atol=SAME)


def test_level_tables_jit_equals_eager(maybe_jit):
    policy = make_policy("mlp", 2, 3)
    params = init_params(policy, "mlp", 4)
    got = maybe_jit(policy.level_tables)(params)
    want = jax.jit(Policy.level_tables, static_argnums=0)(policy, params)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=SAME)


def test_two_layer_transformer_and_gradients_through_state():
    policy = TransformerPolicy(2, 3, d_model=8, num_heads=2, num_layers=2)
    params = policy.init(jax.random.key(0))
    assert len(params["blocks"]) == 2
    grads = jax.jit(jax.grad(lambda p: sum(jnp.sum(t**2) for t in policy.level_tables(p))))(params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads))


def test_mlp_features_layout():
    policy = MLPPolicy(3, 3, num_prompts=2)
    features = policy._features(jnp.asarray(all_prefixes(3, 1)), 1)
    # (T-1)*V one-hot slots, then T position bits, then P prompt bits.
    assert features.shape == (3, 2 * 3 + 3 + 2)
    np.testing.assert_array_equal(features[:, :3], np.eye(3))
    np.testing.assert_array_equal(features[:, 3:6], 0)
    np.testing.assert_array_equal(features[:, 6:9], np.tile([0, 1, 0], (3, 1)))
    np.testing.assert_array_equal(features[:, 9:], np.tile([0, 1], (3, 1)))


def test_bad_heads_are_refused():
    with pytest.raises(InputError, match="divisible"):
        TransformerPolicy(2, 2, d_model=6, num_heads=4)
