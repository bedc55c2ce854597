"""experiments.objectives: sampled and supervised objectives against exact definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import objectives as obj
from toy_lm.engines import objectives as exact
from toy_lm.engines import tree
from toy_lm.models.automata import automaton_harm_table, harmful_before_refusal
from toy_lm.models.policies import TabularPolicy
from toy_lm.tables import all_prefixes

V, T = 3, 3
EPS = np.finfo(np.float64).eps


def _setup(seed=0):
    policy = TabularPolicy(V, T)
    params = policy.init(jax.random.key(seed))
    base = policy.level_tables(policy.init(jax.random.key(seed + 100)))
    harm = automaton_harm_table(harmful_before_refusal(V, 2, [1], [2]), T)
    return policy, params, base, harm


def test_dpo_blocks_equal_the_shared_exact_definition():
    policy, params, base, harm = _setup()
    tables = policy.level_tables(params)
    blocks = obj.dpo_pair_blocks(harm, chunk=5)  # several chunks, one padded
    for beta in (0.1, 1.0):
        ours, g_ours = jax.jit(
            jax.value_and_grad(lambda t: obj.dpo_loss_blocks(t, base, blocks, beta))
        )(tables)
        shared, g_shared = jax.jit(
            jax.value_and_grad(lambda t: exact.dpo_loss(t, base, harm, beta))
        )(tables)
        assert abs(float(ours) - float(shared)) < 64 * EPS * len(harm) ** 2
        for a, b in zip(g_ours, g_shared):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    # planted error: the pairs of the opposite preference give a different loss
    flipped = obj.dpo_pair_blocks(1 - np.asarray(harm))
    assert (
        abs(
            float(obj.dpo_loss_blocks(tables, base, flipped, 1.0))
            - float(exact.dpo_loss(tables, base, harm, 1.0))
        )
        > 1e-3
    )


def test_dpo_blocks_refuse_soft_or_constant_costs():
    with pytest.raises(ValueError, match="binary"):
        obj.dpo_pair_blocks(np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="no preference pairs"):
        obj.dpo_pair_blocks(np.zeros(4))


def test_supervised_loss_is_weighted_token_nll():
    policy, params, base, harm = _setup(1)
    tables = policy.level_tables(params)
    seqs = all_prefixes(V, T)
    weights = np.linspace(0.0, 1.0, len(seqs))
    from experiments.data import Examples, level_weights

    w = level_weights(Examples(seqs, np.ones(len(seqs), np.int64), weights), V, T)
    direct = -np.sum(weights[:, None] * np.asarray(policy.token_log_probs(params, seqs))[:, 1:])
    assert float(obj.supervised_loss(tables, w)) == pytest.approx(direct, rel=1e-13)


def test_qi_beta_schedule():
    np.testing.assert_array_equal(obj.qi_betas(7), [0.5, 2, 2, 2, 2, 0.1, 0.1])
    np.testing.assert_array_equal(obj.qi_betas(3), [0.5, 2, 2])
    np.testing.assert_array_equal(obj.qi_betas(4, 1.0, 3.0, 2, 0.5), [1.0, 3.0, 0.5, 0.5])


def test_constrained_loss_gradient_is_reweighted_cross_entropy():
    policy, params, base, harm = _setup(2)
    tables = policy.level_tables(params)
    ref = policy.level_tables(policy.init(jax.random.key(7)))
    rng = np.random.default_rng(0)
    w = tuple(rng.uniform(size=np.shape(t)) for t in tables)
    betas = np.array([0.5, 2.0, 0.1])
    grad = jax.grad(lambda t: obj.constrained_loss(t, ref, w, betas))(tables)

    def reweighted_ce(t):  # Qi et al.'s implementation: CE scaled by 2(1 - σ(β Δ)), detached
        total = 0.0
        for level, (z, zr, wl) in enumerate(zip(t, ref, w)):
            logp = jax.nn.log_softmax(z, -1)
            scale = 2 * (1 - jax.nn.sigmoid(betas[level] * (logp - jax.nn.log_softmax(zr, -1))))
            total = total + jnp.sum(wl * jax.lax.stop_gradient(scale) * -logp)
        return total

    for a, b in zip(grad, jax.grad(reweighted_ce)(tables)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # at π = π_ref every weight is 2(1 - 1/2) = 1: the plain SFT gradient
    g_ref = jax.grad(lambda t: obj.constrained_loss(t, t_stop(ref), w, betas))(ref)
    g_sft = jax.grad(lambda t: obj.supervised_loss(t, w))(ref)
    for a, b in zip(g_ref, g_sft):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def t_stop(tables):
    return tuple(jax.lax.stop_gradient(t) for t in tables)


def _exact_reinforce_gradient(policy, params, base_params, harm, lam, baseline):
    """Σ_y π(y) ∇ surrogate(y): the estimator's expectation, by enumeration."""
    seqs = jnp.asarray(all_prefixes(V, T))
    probs = jnp.exp(policy.log_prob(params, seqs))
    log_ratio = policy.token_log_probs(params, seqs) - policy.token_log_probs(base_params, seqs)
    returns = obj.returns_to_go(jnp.asarray(harm), log_ratio, lam)
    if baseline:
        values = tree.cond_harm(policy.level_tables(params), harm)
        returns = returns - obj.value_baseline(values, seqs, V)

    def surrogate(p):
        logp = policy.token_log_probs(p, seqs)
        return jnp.sum(probs[:, None] * jax.lax.stop_gradient(returns) * logp)

    return jax.grad(surrogate)(params), returns


@pytest.mark.parametrize("baseline", [False, True])
def test_reinforce_estimator_is_unbiased(baseline):
    policy, params, _, harm = _setup(3)
    base_params = policy.init(jax.random.key(4))
    lam = 0.7
    estimate, _ = _exact_reinforce_gradient(policy, params, base_params, harm, lam, baseline)
    base = policy.level_tables(base_params)
    truth = jax.grad(lambda p: exact.kl_regularized_loss(policy.level_tables(p), base, harm, lam))(
        params
    )
    for a, b in zip(estimate, truth):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)


def test_value_baseline_gives_exactly_zero_advantage_beyond_the_horizon():
    policy, params, _, harm = _setup(5)
    # at π = π0 the KL part of the return vanishes and the advantage is h - H_{t-1}
    _, adv = _exact_reinforce_gradient(policy, params, params, harm, 0.5, True)
    seqs = all_prefixes(V, T)
    from toy_lm.models.harms import determined_masks

    masks = determined_masks(np.asarray(harm), V)
    checked = 0
    for t in range(T):
        rows = seqs[:, :t] @ (V ** np.arange(t - 1, -1, -1)) if t else np.zeros(len(seqs), int)
        det = masks[t][rows]
        assert np.all(np.asarray(adv)[det, t] == 0.0)
        checked += det.sum()
    assert checked > 0
    # without the baseline the same entries are h(y), not zero (noise without signal)
    _, raw = _exact_reinforce_gradient(policy, params, params, harm, 0.5, False)
    assert np.any(np.asarray(raw)[:, -1] != 0)


def test_mean_baseline_is_leave_one_out():
    returns = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    np.testing.assert_allclose(obj.mean_baseline(returns), [[4.0, 6.5], [3.0, 5.5], [2.0, 3.0]])
    np.testing.assert_allclose(
        obj.returns_to_go(jnp.array([1.0]), jnp.array([[0.5, 0.25]]), 2.0), [[2.5, 1.5]]
    )


def test_sampled_dpo_loss_skips_ties():
    lp_a, lp_b = jnp.array([0.0, -1.0, 0.0]), jnp.array([-1.0, 0.0, 0.0])
    ref = jnp.zeros(3)
    pref = obj.dpo_preferences(jnp.array([0.0, 0.0, 1.0]), jnp.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(pref, [1, 1, 0])
    loss = obj.sampled_dpo_loss(lp_a, lp_b, ref, ref, pref, 2.0)
    expected = (-jax.nn.log_sigmoid(2.0) - jax.nn.log_sigmoid(-2.0)) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-14)
    assert float(obj.sampled_dpo_loss(lp_a, lp_b, ref, ref, jnp.zeros(3), 2.0)) == 0.0
    with pytest.raises(ValueError, match="must both be"):
        obj.reinforce_surrogate(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
