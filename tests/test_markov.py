"""The Markov x automaton DP engine against the exact tree engine, on held-out instances.

Every DP table is expanded to the canonical prefix-tree layout (``expand_to_tree``) and compared
with the exact tree engine on the harm table of the same automaton, within a float64 tolerance
derived from machine epsilon and the problem size (``markov_cases.tolerance``, below 1e-12 here).
The tree side is :func:`toy_lm.engines.analysis.analyze_tree` (the chunked tree engine: a few compiled
kernels per size) and jitted :mod:`toy_lm.engines.tree` functions, computed once per case.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markov_cases import (
    Case,
    all_cases,
    assert_close,
    jit,
    make_case,
    prefix_probs,
    random_automaton,
    tolerance,
)

from toy_lm.engines import markov
from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.markov_analysis import aggregate_tree_grads, expand_to_tree
from toy_lm.errors import InputError
from toy_lm.models import harms
from toy_lm.models.automata import automaton_determined_masks, make_automaton

CASES = all_cases()


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request) -> Case:
    return make_case(**CASES[request.param])


@pytest.fixture(scope="module")
def exact(case):
    """The tree engine's analysis of the same policy and harm (with the reference policy)."""
    return analyze_tree(case.tables, case.harm, ref_logits=case.ref_tables)


def test_float64():
    assert jnp.zeros(()).dtype == jnp.float64


def test_cond_harm_and_probs_match_tree(case, exact):
    tol = tolerance(case)
    values = jit(markov.cond_harm)(case.logits, case.dfa)
    expected = exact.cond_harm
    for level, (dp, tr) in enumerate(zip(expand_to_tree(values, case.dfa), expected)):
        assert_close(dp, tr, tol, f"H_{level}")
    assert_close(jit(markov.expected_harm)(case.logits, case.dfa), expected[0][0], tol, "E[h]")
    # p_l(c, s) is the total probability of the level-l prefixes in joint state (c, s).
    probs = np.asarray(jit(markov.state_probs)(case.logits, case.dfa))
    contexts = probs.shape[1]
    for level, pref in enumerate(prefix_probs(case.tables)):
        agg = np.zeros(probs.shape[1:])
        ctx = np.arange(case.vocab_size**level) % contexts
        np.add.at(
            agg,
            (
                ctx,
                expand_to_tree(np.arange(probs.shape[2])[None].repeat(level + 1, 0), case.dfa)[
                    level
                ],
            ),
            np.asarray(pref),
        )
        assert_close(probs[level], agg, tol, f"p_{level}")


def test_information_and_gradients_match_tree(case, exact):
    tol = tolerance(case)
    info = jit(markov.harm_information)(case.logits, case.dfa)
    assert_close(info, exact.harm_information, tol, "I_t")
    grads = jit(markov.logit_grads)(case.logits, case.dfa)
    contexts = case.logits.shape[1]
    expected = aggregate_tree_grads(exact.logit_grads, contexts)
    assert_close(grads, expected, tol, "tied logit gradients (covariance form)")
    autodiff = jit(markov.logit_grads_autodiff)(case.logits, case.dfa)
    assert_close(autodiff, expected, tol, "tied logit gradients (autodiff through the DP)")


def test_reference_kl_and_prefill_match_tree(case, exact):
    tol = tolerance(case)
    kl = jit(markov.per_position_kl)(case.logits, case.ref_logits)
    assert_close(kl, exact.per_position_kl, tol, "KL_t(π||π_ref)")
    base = analyze_tree(case.ref_tables, case.harm)
    if base.expected_harm > 0:  # ASR(k) = Σ_{y<=k} P0(y<=k) H0_k H_k / E0[h]
        curve = jit(markov.prefill_asr_curve)(case.logits, case.dfa, case.ref_logits)
        base_probs = prefix_probs(case.ref_tables)
        expected = [
            np.sum(base_probs[k] * base.cond_harm[k] * exact.cond_harm[k]) / base.expected_harm
            for k in range(case.length)
        ]
        assert_close(curve, expected, tol, "prefill ASR curve")


def test_determined_states_and_horizon_match_the_harm_table(case):
    det = markov.determined(case.dfa, case.length)
    from_table = harms.determined_masks(case.harm, case.vocab_size)
    for level, (dp, tr, dfa_mask) in enumerate(
        zip(
            expand_to_tree(det, case.dfa),
            from_table,
            automaton_determined_masks(case.dfa, case.length),
        )
    ):
        np.testing.assert_array_equal(dp, tr, err_msg=f"determined, level {level}")
        np.testing.assert_array_equal(dp, dfa_mask, err_msg=f"automata module, level {level}")
    assert markov.horizon(case.dfa, case.length) == harms.horizon(case.harm, case.vocab_size)


def test_determined_masks_match_the_tree_engine(case, exact):
    for dp, tr in zip(
        expand_to_tree(markov.determined(case.dfa, case.length), case.dfa), exact.determined
    ):
        np.testing.assert_array_equal(dp, tr)
    assert markov.horizon(case.dfa, case.length) == exact.horizon


def test_exact_zeros_beyond_the_horizon(case):
    tau = markov.horizon(case.dfa, case.length)
    info = np.asarray(jit(markov.harm_information)(case.logits, case.dfa))
    grads = np.asarray(jit(markov.logit_grads)(case.logits, case.dfa))
    assert np.all(info[tau:] == 0.0), info  # positions t > τ*
    assert np.all(grads[tau:] == 0.0)  # levels >= τ*
    if tau > 0:
        assert info[tau - 1] > 0


def test_fixed_prefix_attack_matches_tree():
    case = make_case(**CASES["k2-V3-T5-random"])
    prefix = [2, 0]
    q_dp = markov.prefix_state(prefix, case.dfa, case.order)
    q_tree = np.zeros(case.vocab_size ** len(prefix))
    q_tree[prefix[0] * case.vocab_size + prefix[1]] = 1.0
    asr = markov.prefill_asr(case.logits, case.dfa, q_dp, len(prefix))
    values = analyze_tree(case.tables, case.harm).cond_harm[len(prefix)]
    assert_close(asr, np.sum(q_tree * values), tolerance(case), "ASR of a fixed prefix")


def test_eager_and_jit_agree(maybe_jit):
    case = make_case(**CASES["k1-V3-T6-random"])
    values = maybe_jit(markov.cond_harm)(case.logits, case.dfa)
    assert_close(values, jit(markov.cond_harm)(case.logits, case.dfa), tolerance(case), "H")


def test_planted_errors_are_flagged():
    """The comparisons above can fail: a one-transition change of the automaton, and a 1e-9
    perturbation of one H entry, are both flagged."""
    case = make_case(**CASES["k1-V3-T6-random"])
    tol = tolerance(case)
    trans = case.dfa.transitions.copy()
    trans[case.dfa.start, 0] = (trans[case.dfa.start, 0] + 1) % trans.shape[0]
    wrong = make_automaton(trans, case.dfa.verdict, case.dfa.start)
    values = jit(markov.cond_harm)(case.logits, wrong)
    expected = analyze_tree(case.tables, case.harm).cond_harm
    with pytest.raises(AssertionError):
        for level, (dp, tr) in enumerate(zip(expand_to_tree(values, wrong), expected)):
            assert_close(dp, tr, tol, f"H_{level}")
    good = np.array(jit(markov.cond_harm)(case.logits, case.dfa))
    good[2] += 1e-9
    with pytest.raises(AssertionError):
        assert_close(expand_to_tree(good, case.dfa, [2])[0], expected[2], tol, "H_2")


def test_long_horizon_is_finite_and_consistent():
    """T = 4096: no underflow or overflow; T1 (Σ_t I_t = Var h) holds; p_l stays a distribution."""
    rng = np.random.default_rng(3)
    from toy_lm.models.automata import harmful_before_refusal

    dfa = harmful_before_refusal(8, 5, [1, 2], [7])
    logits = 2.0 * rng.normal(size=(4096, 8, 8))
    values = np.asarray(jit(markov.cond_harm)(logits, dfa))
    probs = np.asarray(jit(markov.state_probs)(logits, dfa))
    info = np.asarray(jit(markov.harm_information)(logits, dfa))
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(info))
    mean = values[0, 0, dfa.start]
    tol = 8 * 4097 * 8**2 * np.finfo(np.float64).eps  # same derivation, T = 4096, V = 8
    assert abs(info.sum() - mean * (1 - mean)) <= tol
    assert np.max(np.abs(probs.sum(axis=(1, 2)) - 1)) <= tol
    assert 0 < mean < 1


def test_lift_order_preserves_the_policy():
    case = make_case(**CASES["k1-V3-T6-random"])
    lifted = markov.lift_order(case.logits, 2)
    assert lifted.shape == (case.length, 9, 3)
    assert_close(
        jit(markov.cond_harm)(lifted, case.dfa)[:, :3],
        jit(markov.cond_harm)(case.logits, case.dfa),
        tolerance(case),
        "lifted H",
    )
    with pytest.raises(InputError, match="lower order"):
        markov.lift_order(lifted, 1)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((4, 3), "shape \\(T, V\\*\\*k, V\\)"),
        ((4, 5, 3), "not a power of V=3"),
        ((4, 3, 2), "dfa_transitions has shape"),
    ],
)
def test_bad_shapes_raise_input_error(shape, match):
    dfa = random_automaton(np.random.default_rng(0), 3, 3)
    with pytest.raises(InputError, match=match):
        markov.cond_harm(np.zeros(shape), dfa)


@settings(max_examples=5)
@given(
    vocab_size=st.integers(2, 3),
    length=st.integers(1, 4),
    order=st.integers(0, 2),
    num_states=st.integers(3, 4),
    binary=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_dp_equals_tree(vocab_size, length, order, num_states, binary, seed):
    case = make_case(seed, vocab_size, length, order, num_states, binary=binary)
    tol = tolerance(case)
    values = jit(markov.cond_harm)(case.logits, case.dfa)
    exact = analyze_tree(case.tables, case.harm)
    for level, (dp, tr) in enumerate(zip(expand_to_tree(values, case.dfa), exact.cond_harm)):
        assert_close(dp, tr, tol, f"H_{level}")
    assert_close(
        jit(markov.harm_information)(case.logits, case.dfa), exact.harm_information, tol, "I_t"
    )
    assert markov.horizon(case.dfa, length) == harms.horizon(case.harm, vocab_size)


def test_jit_compiles_once_per_shape():
    """Different automata and logits of the same shapes reuse one compiled program."""
    fn = jax.jit(lambda logits, dfa: markov.cond_harm(logits, dfa))
    for seed in range(3):
        case = make_case(seed, 3, 5, 1, 4)
        fn(case.logits, case.dfa)
    assert fn._cache_size() == 1
    fn(make_case(0, 3, 6, 1, 4).logits, case.dfa)  # another T: one more compile, as expected
    assert fn._cache_size() == 2
