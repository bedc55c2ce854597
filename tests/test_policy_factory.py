"""Tests of toy_lm.models.policy_factory: one set of kind names everywhere, one factory, one init."""

import ast
import pathlib

import instances as test_instances
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toy_lm.errors import InputError
from toy_lm.models.neural import MLPPolicy, TransformerPolicy
from toy_lm.models.policies import MarkovPolicy, PositionalPolicy, TabularPolicy
from toy_lm.models.policy_factory import (
    POLICY_KINDS,
    POLICY_OPTIONS,
    init_params,
    make_policy,
    policy_kind,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_layer_names_the_kinds_of_the_one_factory():
    from experiments import config
    from experiments.cli.check import POLICY_CHOICES
    from proofs_check import instances

    assert instances.POLICY_KINDS is POLICY_KINDS  # the check instances
    # `check --policy` spells them out (its parser must not import JAX to answer --help)
    assert POLICY_CHOICES == (*POLICY_KINDS, "all")
    assert set(config.POLICY_KINDS) <= set(POLICY_KINDS)  # experiments configure a subset
    assert {kind for kind, _ in test_instances.KIND_OPTIONS.values()} == set(POLICY_KINDS)
    assert {inst.kind for inst in instances.builtin_suite()} == set(POLICY_KINDS)


def test_no_other_policy_factory_or_init_params_is_defined():
    defined = []
    for layer in ("toy_lm", "proofs_check", "experiments"):
        for path in (ROOT / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef) and node.name in {
                    "make_policy",
                    "init_params",
                    "init_params_pure",
                    "policy_kind",
                }:
                    defined.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert sorted(defined) == [
        "toy_lm/models/policy_factory.py:init_params",
        "toy_lm/models/policy_factory.py:make_policy",
        "toy_lm/models/policy_factory.py:policy_kind",
    ]


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("tabular", TabularPolicy),
        ("positional", PositionalPolicy),
        ("markov", MarkovPolicy),
        ("transformer", TransformerPolicy),
        ("mlp", MLPPolicy),
    ],
)
def test_make_policy_builds_each_kind_with_its_default_options(kind, cls):
    policy = make_policy(kind, 2, 3, num_prompts=2)
    assert type(policy) is cls and policy_kind(policy) == kind
    assert (policy.vocab_size, policy.length, policy.num_prompts) == (2, 3, 2)
    for name, value in POLICY_OPTIONS[kind].items():
        assert getattr(policy, name) == value
    assert make_policy(kind, 2, 3, num_prompts=2) == policy  # hashable, equal: one jit cache entry


def test_make_policy_refuses_unknown_kinds_and_options():
    with pytest.raises(InputError, match="unknown policy kind 'lstm'"):
        make_policy("lstm", 2, 2)
    with pytest.raises(InputError, match="takes no option hidden"):
        make_policy("markov", 2, 2, hidden=4)
    assert make_policy("markov", 2, 3, order=2).order == 2


@pytest.mark.parametrize("kind", ["tabular", "positional", "markov"])
def test_init_params_is_policy_init_scaled_and_float64(kind):
    policy = make_policy(kind, 2, 3, num_prompts=2)
    key = jax.random.key(5)
    got = init_params(policy, key, scale=0.25)
    want = policy.init(key, scale=0.25)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.dtype == jnp.float64 and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-15)
    unit = init_params(policy, key)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(unit)):
        np.testing.assert_allclose(np.asarray(a), 0.25 * np.asarray(b), rtol=1e-15, atol=0)


def test_tabular_init_is_one_flat_draw_cut_into_levels():
    """The layout experiments' base models were drawn with: ``(P, V**l, V)`` blocks in order."""
    policy = make_policy("tabular", 2, 3, num_prompts=2)
    key = jax.random.key(1)
    flat = 0.5 * np.asarray(jax.random.normal(key, (2 * (1 + 2 + 4) * 2,)))
    got = np.concatenate([np.ravel(t) for t in init_params(policy, key, scale=0.5)])
    np.testing.assert_allclose(got, flat, rtol=1e-15, atol=0)


def test_init_params_maps_over_scales_and_keys():
    policy = make_policy("markov", 2, 3)
    keys = jax.random.split(jax.random.key(0), 3)
    scales = jnp.array([0.1, 0.2, 0.3])
    batch = jax.vmap(lambda k, s: init_params(policy, k, scale=s))(keys, scales)
    assert batch.shape == (3, 1, 3, 2, 2)
    np.testing.assert_allclose(
        np.asarray(batch[2]), np.asarray(init_params(policy, keys[2], scale=0.3)), atol=1e-15
    )
