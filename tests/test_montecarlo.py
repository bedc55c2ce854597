"""Monte Carlo estimators against exact values, and the coverage of their 95% intervals.

The estimator tier (STYLE.md): tolerances are statistical and justified by sample sizes.

* Agreement: on a small tabular case (V = 3, T = 4, harm decided by the first 2 tokens) each
  estimate's 99.9% interval contains the exact value (tree engine / exact gradients); a check at
  that level fails by chance with probability 1e-3 per coordinate (the keys are fixed, so the
  outcome is deterministic).
* Coverage: every estimator is repeated R = 400 times with independent samples; the number of
  nominal-95% intervals containing the truth is Binomial(R, 0.95) if the intervals are right, so
  the test accepts counts inside that distribution's central 99.9% range ([364, 393] of 400, i.e.
  91.0% ... 98.3%). A real miscalibration (e.g. a normal instead of a t quantile on 20 batch
  means, or a wrong standard error) moves the count outside it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from toy_lm.engines import montecarlo as mc
from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.markov import cond_harm as markov_cond_harm
from toy_lm.engines.tree import harmful_prefix_dist, prefill_asr
from toy_lm.models.automata import automaton_harm_table, harmful_before_refusal
from toy_lm.models.harms import random_decided_harm
from toy_lm.models.policies import MarkovPolicy, TabularPolicy

V, T, TAU = 3, 4, 2
REPS = 400
#: Rounding bound on exact values (eps x 16 (T+1) V², as in the DP tests): zero-variance
#: estimates are exact, the engines' truths carry ~1e-17.
EXACT_ATOL = 16 * (T + 1) * V**2 * np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def setup():
    policy = TabularPolicy(V, T)
    params, ref = policy.init(jax.random.key(0)), policy.init(jax.random.key(1))
    harm = random_decided_harm(jax.random.key(2), V, T, TAU)
    tables, ref_tables = policy.level_tables(params), policy.level_tables(ref)
    exact = analyze_tree(tables, harm, ref_logits=ref_tables)
    base = analyze_tree(ref_tables, harm)
    # Exact g_t: tabular parameters are the level tables, so g_t is the closed-form logit
    # gradient G of level t-1 (THEORY.md T4) in leaf t-1 and zero in every other leaf.
    grads = []
    for level, g in enumerate(exact.logit_grads):
        leaf = np.zeros((T, 1) + g.shape)
        leaf[level, 0] = g
        grads.append(leaf)
    return dict(
        policy=policy,
        params=params,
        ref=ref,
        harm=harm,
        exact=exact,
        base=base,
        tables=tables,
        ref_tables=ref_tables,
        grads=grads,
        harm_fn=mc.table_harm_fn(harm, V),
    )


def test_t_interval_matches_scipy():
    x = np.random.default_rng(0).normal(size=(50, 3))
    est = mc.t_interval(x, 0.9)
    low, high = scipy.stats.t.interval(0.9, 49, loc=x.mean(0), scale=scipy.stats.sem(x))
    np.testing.assert_allclose(est.low, low, rtol=1e-12)
    np.testing.assert_allclose(est.high, high, rtol=1e-12)


def test_rollouts_agree_with_exact_cond_harm(setup):
    prefixes = jnp.array([[0, 0], [1, 2], [2, 1]])
    est = mc.cond_harm_mc(
        jax.random.key(3),
        setup["policy"],
        setup["params"],
        setup["harm_fn"],
        prefixes,
        4000,
        level=0.999,
    )
    truth = setup["exact"].cond_harm[2][np.array([0, 5, 7])]
    assert np.all(est.covers(truth, EXACT_ATOL)), (est.mean, truth)
    assert np.all(est.high - est.low < 0.1)


@pytest.mark.parametrize("estimator", ["full", "sampled"])
def test_per_position_kl_agrees_with_exact(setup, estimator):
    est = mc.per_position_kl_mc(
        jax.random.key(4),
        setup["policy"],
        setup["params"],
        setup["policy"],
        setup["ref"],
        20000,
        estimator=estimator,
        level=0.999,
    )
    truth = setup["exact"].per_position_kl
    assert np.all(est.covers(truth, EXACT_ATOL)), (est.mean, truth)
    if estimator == "full":  # position 1 has one prefix: the full estimator is exact there
        # Every sample evaluates the same row KL; only rounding (a few ulp of each of the V
        # terms of the row sum) separates them, so the standard error is at most that spread.
        assert est.stderr[0] <= 4 * V * np.finfo(np.float64).eps * max(1.0, truth[0])


@pytest.mark.parametrize("baseline", [None, "batch_mean", "exact"])
def test_reinforce_agrees_with_exact_gradients(setup, baseline):
    if baseline == "exact":
        baseline = mc.table_baseline(setup["exact"].cond_harm, V)
    est, _ = mc.reinforce_grads(
        jax.random.key(5),
        setup["policy"],
        setup["params"],
        setup["harm_fn"],
        16000,
        baseline=baseline,
        level=0.999,
    )
    for level, (e, g) in enumerate(zip(est, setup["grads"])):
        assert np.all(e.covers(g, EXACT_ATOL)), level


def test_reinforce_beyond_the_horizon(setup):
    """T10: beyond τ* the plain estimator has mean 0 but positive variance; with the exact
    baseline H_{t-1} it is exactly 0 sample by sample."""
    policy, params, harm_fn = setup["policy"], setup["params"], setup["harm_fn"]
    plain, _ = mc.reinforce_grads(jax.random.key(6), policy, params, harm_fn, 4096)
    exact_bl = mc.table_baseline(setup["exact"].cond_harm, V)
    zeroed, _ = mc.reinforce_batch_grads(
        jax.random.key(6), policy, params, harm_fn, 4096, baseline=exact_bl
    )
    for level in range(TAU, T):  # tables of levels >= τ* choose positions > τ*
        assert np.max(plain[level].stderr[level]) > 1e-3
        assert np.all(np.asarray(zeroed[level]) == 0.0)
    assert np.max(np.abs(np.asarray(zeroed[0][:, 0]))) > 0


def test_prefill_asr_agrees_with_exact(setup):
    k = 1
    prefixes = mc.harmful_prefixes(
        jax.random.key(7), setup["policy"], setup["ref"], setup["harm_fn"], k, 20000
    )
    est = mc.prefill_asr_mc(
        jax.random.key(8), setup["policy"], setup["params"], setup["harm_fn"], prefixes, level=0.999
    )
    q = harmful_prefix_dist(setup["ref_tables"], setup["harm"], k)
    truth = float(prefill_asr(setup["tables"], setup["harm"], q, k))
    assert est.covers(truth, EXACT_ATOL), (est.mean, truth)


def test_markov_baseline_and_automaton_harm_match_the_tables():
    dfa = harmful_before_refusal(3, 2, [1], [2])
    policy = MarkovPolicy(3, 5, order=1)
    params = policy.init(jax.random.key(0))
    responses = mc.sample(jax.random.key(1), policy, params, 512)
    harm = automaton_harm_table(dfa, 5)
    np.testing.assert_array_equal(
        mc.automaton_harm_fn(dfa)(responses), mc.table_harm_fn(harm, 3)(responses)
    )
    exact = analyze_tree(policy.level_tables(params), harm)
    dp_values = markov_cond_harm(params[0], dfa)
    np.testing.assert_allclose(
        mc.markov_baseline(dp_values, dfa)(responses),
        mc.table_baseline(exact.cond_harm, 3)(responses),
        rtol=0,
        atol=16 * 6 * 9 * np.finfo(np.float64).eps,
    )


@pytest.mark.slow
def test_transformer_too_large_to_enumerate():
    """V = 64, T = 32 (64**32 responses): estimates with finite, shrinking intervals."""
    from toy_lm.models.neural import TransformerPolicy

    policy = TransformerPolicy(64, 32)
    params, ref = policy.init(jax.random.key(0)), policy.init(jax.random.key(1))
    kl = mc.per_position_kl_mc(jax.random.key(2), policy, params, policy, ref, 128)
    assert kl.mean.shape == (32,) and np.all(np.isfinite(kl.high)) and np.all(kl.mean > 0)
    harm_fn = lambda y: (jnp.sum(y < 4, axis=1) >= 2).astype(jnp.float64)  # noqa: E731
    h = mc.cond_harm_mc(jax.random.key(3), policy, params, harm_fn, jnp.array([[1, 2]]), 128)
    assert 0 <= h.low[0] <= h.mean[0] <= h.high[0] <= 1.0 + 1e-12


def coverage_table(setup) -> list[dict]:
    """One row per estimator: how many of REPS nominal-95% intervals contain the truth."""
    policy, params, ref, harm_fn = (setup[k] for k in ("policy", "params", "ref", "harm_fn"))
    exact, grads = setup["exact"], setup["grads"]
    rows = []

    def row(name, est, truth):
        rows.append(
            dict(
                estimator=name,
                covered=int(np.sum(est.covers(truth, EXACT_ATOL))),
                reps=REPS,
                replicates=est.replicates,
            )
        )

    # H_1 at prefix (2,) (undetermined: the harm is decided at level 2), 400 rollouts per rep.
    harms = mc.rollout_harms(
        jax.random.key(10), policy, params, harm_fn, jnp.tile(jnp.array([[2]]), (REPS, 1)), 400
    )
    row("H_1(2) by rollouts", mc.t_interval(harms, axis=1), exact.cond_harm[1][2])
    for name in ("full", "sampled"):
        terms = mc.kl_samples(
            jax.random.key(11), policy, params, policy, ref, REPS * 500, estimator=name
        ).reshape(REPS, 500, T)
        row(f"KL_3 ({name})", mc.t_interval(terms[:, :, 2], axis=1), exact.per_position_kl[2])
    batches = 20
    g1 = np.asarray(grads[0])[0, 0, 0]  # g_1 w.r.t. the root logits (V,)
    coord = int(np.argmax(np.abs(g1)))
    for name, bl in (("none", None), ("batch mean", "batch_mean")):
        per_batch, _ = mc.reinforce_batch_grads(
            jax.random.key(12),
            policy,
            params,
            harm_fn,
            REPS * batches * 50,
            baseline=bl,
            num_batches=REPS * batches,
        )
        g = np.asarray(per_batch[0])[:, 0, 0, 0, coord].reshape(REPS, batches)
        row(f"REINFORCE g_1, baseline {name}", mc.t_interval(g, axis=1), g1[coord])
        if bl is None:  # beyond the horizon (prefix (0, 1), h = 1): truth 0, noise only
            g = np.asarray(per_batch[TAU])[:, TAU, 0, 1, 1].reshape(REPS, batches)
            row(
                f"REINFORCE g_{TAU + 1} (beyond τ*), no baseline",
                mc.t_interval(g, axis=1),
                np.asarray(grads[TAU])[TAU, 0, 1, 1],
            )
    prefixes = mc.harmful_prefixes(jax.random.key(13), policy, ref, harm_fn, 1, REPS * 400)
    harms = mc.rollout_harms(jax.random.key(14), policy, params, harm_fn, prefixes, 1)
    q = harmful_prefix_dist(setup["ref_tables"], setup["harm"], 1)
    row(
        "prefill ASR(1)",
        mc.t_interval(harms.reshape(REPS, 400), axis=1),
        float(prefill_asr(setup["tables"], setup["harm"], q, 1)),
    )
    return rows


def test_coverage_of_nominal_95_percent_intervals(setup):
    low, high = (int(scipy.stats.binom.ppf(p, REPS, 0.95)) for p in (0.0005, 0.9995))
    rows = coverage_table(setup)
    print(
        f"\ncoverage of nominal 95% intervals, {REPS} repetitions "
        f"(accepted: {low} ... {high}, the central 99.9% of Binomial({REPS}, 0.95))"
    )
    print(f"{'estimator':<44} {'covered':>8} {'rate':>7} {'replicates':>11}")
    for r in rows:
        print(
            f"{r['estimator']:<44} {r['covered']:>8} {r['covered'] / REPS:>7.3f} "
            f"{r['replicates']:>11}"
        )
    for r in rows:
        assert low <= r["covered"] <= high, r


def test_coverage_check_flags_a_miscalibrated_interval(setup):
    """The band can fail: intervals of half the correct width cover ~68%, far below it."""
    harms = mc.rollout_harms(
        jax.random.key(10),
        setup["policy"],
        setup["params"],
        setup["harm_fn"],
        jnp.tile(jnp.array([[2]]), (REPS, 1)),
        400,
    )
    est = mc.t_interval(harms, axis=1)
    narrow = est._replace(
        low=est.mean - (est.mean - est.low) / 2, high=est.mean + (est.high - est.mean) / 2
    )
    low = int(scipy.stats.binom.ppf(0.0005, REPS, 0.95))
    assert np.sum(narrow.covers(setup["exact"].cond_harm[1][2])) < low
