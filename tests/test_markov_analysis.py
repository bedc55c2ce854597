"""The one-scan analysis against the per-quantity DP functions and the tree engine."""

import numpy as np
import pytest
from markov_cases import all_cases, assert_close, jit, make_case, tolerance

from toy_lm.engines import markov
from toy_lm.engines import markov_equilibrium as eq
from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.markov_analysis import (
    aggregate_tree_grads,
    analyze_markov,
    expand_to_tree,
    joint_states,
)
from toy_lm.errors import InputError
from toy_lm.models.automata import harmful_before_refusal, make_automaton

LAM = 0.7
CASES = all_cases()
SHOWN = ["k0-V3-T5-random", "k1-V2-T8-soft", "k2-V2-T7-pattern", "k1-V3-T6-refusal"]


@pytest.fixture(scope="module", params=SHOWN)
def case(request):
    return make_case(**CASES[request.param])


def test_analysis_matches_tree(case):
    tol = tolerance(case)
    res = analyze_markov(
        case.logits, case.dfa, lam=LAM, ref_logits=case.ref_logits, logit_grads=True
    )
    exact = analyze_tree(case.tables, case.harm, lam=LAM, ref_logits=case.ref_tables)
    assert_close(res.expected_harm, exact.expected_harm, tol, "E[h]")
    for level, (dp, tr) in enumerate(zip(expand_to_tree(res.cond_harm, case.dfa), exact.cond_harm)):
        assert_close(dp, tr, tol, f"H_{level}")
    for dp, tr in zip(expand_to_tree(res.determined, case.dfa), exact.determined):
        np.testing.assert_array_equal(dp, tr)
    assert res.horizon == exact.horizon
    assert_close(res.harm_information, exact.harm_information, tol, "I_t")
    assert_close(res.equilibrium_kl, exact.equilibrium_kl, tol, "KL_t(π*||π)")
    assert_close(res.per_position_kl, exact.per_position_kl, tol, "KL_t(π||π_ref)")
    assert_close(
        res.logit_grads,
        aggregate_tree_grads(exact.logit_grads, res.logit_grads.shape[1]),
        tol,
        "tied logit gradients",
    )
    # Exact zeros past the horizon.
    assert np.all(res.harm_information[res.horizon :] == 0.0)
    assert np.all(res.equilibrium_kl[res.horizon :] == 0.0)
    assert np.all(res.logit_grads[res.horizon :] == 0.0)


def test_analysis_matches_per_quantity_functions_at_long_horizon():
    """T = 4096: the martingale identities of the one-scan analysis (I_t = E[H_t²] - E[H_{t-1}²],
    KL_t = E_π*[log Z_t] - E_π*[log Z_{t-1}]) against the per-joint-state sums of
    toy_lm.engines.markov / toy_lm.engines.markov_equilibrium, which share none of that arithmetic."""
    vocab_size, length = 16, 4096
    dfa = harmful_before_refusal(vocab_size, 4, [1, 2, 3], [15])
    rng = np.random.default_rng(9)
    logits = 2.0 * rng.normal(size=(length, vocab_size, vocab_size))
    ref = rng.normal(size=(length, vocab_size, vocab_size))
    lam = 0.3
    res = analyze_markov(logits, dfa, lam=lam, ref_logits=ref)
    # 16 (T+1) V² eps: the same derivation as markov_cases.tolerance, at T = 4096, V = 16.
    tol = 16 * (length + 1) * vocab_size**2 * np.finfo(np.float64).eps
    checks = {
        "H": (res.cond_harm, jit(markov.cond_harm)(logits, dfa)),
        "p": (res.state_probs, jit(markov.state_probs)(logits, dfa)),
        "I_t": (res.harm_information, jit(markov.harm_information)(logits, dfa)),
        "KL_t(π*||π)": (res.equilibrium_kl, jit(eq.equilibrium_kl, lam=lam)(logits, dfa)),
        "log Z": (res.log_partition, jit(eq.log_partition, lam=lam)(logits, dfa)),
        "KL_t(π||π_ref)": (res.per_position_kl, jit(markov.per_position_kl)(logits, ref)),
    }
    for what, (fast, direct) in checks.items():
        direct = np.asarray(direct)
        assert np.all(np.isfinite(fast)), what
        err = np.max(np.abs(fast - direct))
        assert err <= tol * max(1.0, np.max(np.abs(direct))), (what, err, tol)
    assert np.all(np.abs(res.state_probs.sum(axis=(1, 2)) - 1) <= tol)


def test_lambda_below_the_scaling_bound_uses_log_sum_exp():
    case = make_case(**CASES["k1-V3-T6-random"], scale=300.0)
    lam = 1e-3
    res = analyze_markov(case.logits, case.dfa, lam=lam)
    direct = jit(eq.equilibrium_kl, lam=lam)(case.logits, case.dfa)
    assert np.all(np.isfinite(res.equilibrium_kl))
    assert_close(res.equilibrium_kl, direct, tolerance(case), "KL_t at λ = 1e-3")


def test_without_lambda_or_reference():
    case = make_case(**CASES["k1-V3-T6-random"])
    res = analyze_markov(case.logits, case.dfa)
    assert res.equilibrium_kl is None and res.log_partition is None
    assert res.per_position_kl is None and res.logit_grads is None
    assert res.cond_harm.shape == (case.length + 1, 3, case.dfa.num_states)


def test_joint_states_and_expansion():
    dfa = make_automaton([[0, 1], [1, 1]], [0.0, 1.0], 0)
    contexts, states = joint_states(dfa, 2, 2)
    np.testing.assert_array_equal(contexts, [0, 1, 0, 1])  # last token of 00, 01, 10, 11
    np.testing.assert_array_equal(states, [0, 1, 1, 1])
    table = np.arange(3 * 2 * 2, dtype=float).reshape(3, 2, 2)
    np.testing.assert_array_equal(expand_to_tree(table, dfa, [2])[0], table[2][contexts, states])


def test_bad_inputs():
    case = make_case(**CASES["k1-V3-T6-random"])
    with pytest.raises(InputError, match="ref_logits has T"):
        analyze_markov(case.logits, case.dfa, ref_logits=case.ref_logits[:-1])
    with pytest.raises(InputError, match="lambda"):
        analyze_markov(case.logits, case.dfa, lam=0.0)


def test_float32_within_the_rederived_tolerance():
    """float32 (for GPUs) against float64 at T = 256: within eps(float32) x 16 (T+1) V², the float64
    derivation with float32's epsilon (H is a convex combination per level, so rounding grows
    like T times the V-term sums)."""
    vocab_size, length = 8, 256
    dfa = harmful_before_refusal(vocab_size, 3, [1, 2], [7])
    logits = np.random.default_rng(2).normal(size=(length, vocab_size, vocab_size))
    high = analyze_markov(logits, dfa, lam=0.5)
    low = analyze_markov(logits, dfa, lam=0.5, dtype=np.float32)
    assert low.cond_harm.dtype == np.float32 and high.cond_harm.dtype == np.float64
    tol = float(np.finfo(np.float32).eps) * 16 * (length + 1) * vocab_size**2
    for what in ("cond_harm", "harm_information", "equilibrium_kl"):
        err = np.max(np.abs(getattr(low, what) - getattr(high, what)))
        assert err <= tol, (what, err, tol)


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_markov_logits_are_refused(bad):
    dfa = harmful_before_refusal(3, 2, [1], [2])
    logits = np.zeros((4, 3, 3))
    logits[2, 1, 0] = bad
    with pytest.raises(InputError, match="markov_logits has non-finite"):
        analyze_markov(logits, dfa)
    with pytest.raises(InputError, match="ref_logits has non-finite"):
        analyze_markov(np.zeros((4, 3, 3)), dfa, ref_logits=logits)
