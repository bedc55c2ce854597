"""experiments.data: level weights of exact and sampled supervised data."""

import jax
import numpy as np
import pytest

from experiments import data
from experiments.config import WorldConfig
from experiments.world import HARMFUL, make_world
from toy_lm.engines import tree
from toy_lm.tables import all_prefixes


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(length=4, num_harmful=2))


def test_level_weights_of_all_responses_equal_the_policy_weights(world):
    tables = world.behaviour[HARMFUL]
    probs = data.response_probs(tables)
    exact = data.policy_weights(tables)
    scattered = data.level_weights(data.response_examples(probs, 5, 4), 5, 4)
    for a, b in zip(exact, scattered):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-15)
    # each level's weights are a distribution over (prefix, next token)
    for w in scattered:
        assert w.sum() == pytest.approx(1.0, abs=1e-13)


def test_loss_from_skips_the_context_tokens():
    ex = data.Examples(np.array([[1, 2, 3], [1, 2, 3]]), np.array([0, 2]), np.array([0.25, 0.75]))
    w = data.level_weights(ex, 4, 3)
    assert w[0][0, 1] == 0.25 and w[1][1, 2] == 0.25
    assert w[2][1 * 4 + 2, 3] == 1.0
    assert sum(x.sum() for x in w) == pytest.approx(0.25 * 3 + 0.75)


def test_augmentation_examples_follow_qi_et_al(world):
    base = world.behaviour[HARMFUL]
    ex = data.augmentation_examples(base, world)
    assert ex.weights.sum() == pytest.approx(1.0, abs=1e-13)
    # k = 0 with probability 1/2, otherwise uniform over 1..T-1
    for k in range(world.length):
        mass = ex.weights[ex.loss_from == k].sum()
        assert mass == pytest.approx(0.5 if k == 0 else 0.5 / (world.length - 1), abs=1e-13)
    # the supervised token right after the prefix is always a refusal, the rest are end tokens
    rows = np.arange(len(ex.weights))
    assert np.all(ex.sequences[rows, ex.loss_from] == world.refusal)
    for seq, k in zip(ex.sequences, ex.loss_from):
        assert np.all(seq[k + 1 :] == world.end)
    # the prefixes are distributed as the base model's harmful prefixes q_k
    k = 2
    q = np.asarray(tree.harmful_prefix_dist(base, world.harm, k))
    sel = ex.loss_from == k
    idx = ex.sequences[sel, :k] @ (world.vocab_size ** np.arange(k - 1, -1, -1))
    got = np.zeros_like(q)
    np.add.at(got, idx, ex.weights[sel])
    np.testing.assert_allclose(got, q * 0.5 / (world.length - 1), rtol=0, atol=1e-15)


def test_conditioned_response_distributions(world):
    base = world.behaviour
    harmful = data.harmful_response_probs(base[HARMFUL], world)
    assert harmful.sum() == pytest.approx(1.0) and np.all(harmful[np.asarray(world.harm) == 0] == 0)
    helpful = data.helpful_response_probs(base[1], world)
    assert np.all(helpful[np.asarray(world.utility) == 0] == 0)


def test_sampled_dataset_is_a_multinomial_draw(world):
    probs = data.response_probs(world.behaviour[HARMFUL])
    ex = data.response_examples(probs, 5, 4)
    assert data.sample_examples(jax.random.key(0), ex, 0) is ex
    small = data.sample_examples(jax.random.key(0), ex, 4000)
    assert len(small.weights) == 4000 and small.weights.sum() == pytest.approx(1.0)
    w_exact = data.level_weights(ex, 5, 4)[0]
    w_sampled = data.level_weights(small, 5, 4)[0]
    # first-token frequencies: binomial standard error sqrt(p(1-p)/n) <= 0.008; 5 sigma
    np.testing.assert_allclose(w_sampled, w_exact, atol=0.04)
    again = data.sample_examples(jax.random.key(0), ex, 4000)
    np.testing.assert_array_equal(small.sequences, again.sequences)


def test_mixture_and_refusal_response(world):
    a = data.zeros_like_weights(5, 2)
    b = tuple(np.ones_like(x) for x in a)
    mixed = data.mixture((0.5, a), (2.0, b))
    assert mixed[1].shape == (5, 5) and np.all(mixed[1] == 2.0)
    np.testing.assert_array_equal(
        data.refusal_response(world, [2]), [2, world.refusal, world.end, world.end]
    )
    assert all_prefixes(5, 0).shape == (1, 0)
