"""The KL-regularized equilibrium in the DP engine against the tree engine, and at long horizons."""

import numpy as np
import pytest
from markov_cases import CASES, assert_close, jit, make_case, tolerance

from toy_lm.engines import markov
from toy_lm.engines import markov_equilibrium as eq
from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.markov_analysis import expand_to_tree
from toy_lm.engines.reference import reference_analysis
from toy_lm.errors import InputError
from toy_lm.models.automata import harmful_before_refusal

LAM = 0.7
SHOWN = ["k0-V3-T5-random", "k1-V3-T6-random", "k1-V2-T8-soft", "k2-V3-T5-random"]


@pytest.fixture(scope="module", params=SHOWN)
def case(request):
    return make_case(**CASES[request.param])


@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "log-sum-exp"])
def test_equilibrium_matches_tree(case, scaled):
    tol = tolerance(case)
    exact = analyze_tree(case.tables, case.harm, lam=LAM)
    policy = jit(eq.equilibrium_policy, lam=LAM, scaled=scaled)(case.logits, case.dfa)
    for level, (dp, tr) in enumerate(
        zip(expand_to_tree(policy, case.dfa), exact.equilibrium_logits)
    ):
        assert_close(dp, tr, tol, f"log π*_λ at level {level}")
    kl = jit(eq.equilibrium_kl, lam=LAM, scaled=scaled)(case.logits, case.dfa)
    assert_close(kl, exact.equilibrium_kl, tol, "KL_t(π*_λ || π0)")


def test_exact_zeros_at_determined_states(case):
    """T7b: π*_λ = π0 exactly at determined states, so KL_t = 0 exactly beyond the horizon."""
    policy = np.asarray(jit(eq.equilibrium_policy, lam=LAM)(case.logits, case.dfa))
    det = markov.determined(case.dfa, case.length)
    base = np.asarray(markov.log_policy(markov.lift_order(case.logits, max(case.order, 1))))
    for level in range(case.length):
        states = np.flatnonzero(det[level])
        np.testing.assert_array_equal(
            policy[level][:, states],
            np.broadcast_to(base[level][:, None], policy[level][:, states].shape),
        )
    tau = markov.horizon(case.dfa, case.length)
    kl = np.asarray(jit(eq.equilibrium_kl, lam=LAM)(case.logits, case.dfa))
    assert np.all(kl[tau:] == 0.0)


def test_tiny_lambda_with_extreme_logits_stays_finite():
    """λ = 1e-3 (1/λ beyond the scaled form's bound) with logits spread over 1500: the
    log-sum-exp form is chosen and agrees with the plain numpy reference."""
    case = make_case(**CASES["k1-V3-T6-random"], scale=500.0)
    lam = 1e-3
    assert not eq.scaling_is_safe(lam, case.vocab_size, np.float64)
    policy = jit(eq.equilibrium_policy, lam=lam)(case.logits, case.dfa)
    kl = jit(eq.equilibrium_kl, lam=lam)(case.logits, case.dfa)
    assert np.all(np.isfinite(policy)) and np.all(np.isfinite(kl))
    ref = reference_analysis(case.tables, case.harm, lam=lam)
    tol = tolerance(case)
    for level, dp in enumerate(expand_to_tree(policy, case.dfa)):
        real = np.isfinite(ref[f"equilibrium_logits_{level}"])
        assert_close(
            dp[real], ref[f"equilibrium_logits_{level}"][real], tol, f"log π* level {level}"
        )


def test_scaling_bound():
    assert eq.scaling_is_safe(0.01, 64, np.float64)  # 1/λ = 100 < 672 - log 64
    assert not eq.scaling_is_safe(1 / 700, 64, np.float64)
    assert eq.scaling_is_safe(0.1, 64, np.float32)  # 10 < 67 - log 64
    assert not eq.scaling_is_safe(0.01, 64, np.float32)


def test_long_horizon_chain_rule_and_small_lambda_limit():
    """T = 256: Σ_t KL_t = KL(π*||π0) = -E_π*[h]/λ - log Z_0 (T7e), and for λ -> 0 the total
    tends to -log P_π0(h = 0) (T7d), with no underflow even though Z_0 ~ e^{-1/λ}-small terms."""
    dfa = harmful_before_refusal(6, 4, [1, 2], [5])
    logits = np.random.default_rng(5).normal(size=(256, 6, 6))
    mean = float(jit(markov.expected_harm)(logits, dfa))
    tol = 16 * 257 * 36 * np.finfo(np.float64).eps  # 16 (T+1) V² eps, as in markov_cases
    for lam in (2.0, 1e-3):  # the scaled and the log-sum-exp recursions
        kl = np.asarray(jit(eq.equilibrium_kl, lam=lam)(logits, dfa))
        logz = np.asarray(jit(eq.log_partition, lam=lam)(logits, dfa))
        tilted = np.asarray(jit(eq.equilibrium_state_probs, lam=lam)(logits, dfa))
        harm_star = float(np.sum(tilted[-1] * dfa.verdict))
        total = -harm_star / lam - logz[0, 0, dfa.start]
        assert np.all(np.isfinite(kl))
        assert abs(kl.sum() - total) <= tol * max(1.0, abs(total)), (lam, kl.sum(), total)
    assert abs(kl.sum() + np.log1p(-mean)) < 1e-12  # λ = 1e-3: e^{-1000} corrections


def test_bad_lambda():
    case = make_case(**CASES["k1-V3-T6-random"])
    with pytest.raises(InputError, match="lambda"):
        eq.equilibrium_kl(case.logits, case.dfa, -1.0)
