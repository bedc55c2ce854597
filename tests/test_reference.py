"""Tests of toy_lm.engines.reference: the plain numpy per-level analysis against the brute-force
response oracle (the two share no code), so that it can serve as the benchmark baseline and an
independent second opinion."""

import numpy as np
import oracle
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import SIZES, examples, make_harm, tol

from toy_lm.engines.reference import reference_analysis
from toy_lm.tables import all_prefixes


@settings(max_examples=examples(20))
@given(
    st.sampled_from(SIZES),
    st.sampled_from(("decided", "table_soft", "pattern")),
    st.integers(0, 2**31 - 1),
    st.sampled_from((0.1, 1.0)),
    st.data(),
)
def test_reference_against_brute_force(vt, harm_kind, seed, lam, data):
    vocab_size, length = vt
    rng = np.random.default_rng(seed)
    tables = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    ref = [rng.normal(size=z.shape) for z in tables]
    harm = make_harm(harm_kind, vocab_size, length, data.draw(st.integers(0, length)), seed)
    out = reference_analysis(tables, harm, lam=lam, ref_logits=ref)
    n = vocab_size**length
    b = tol(64 * (length + 1) * n / lam, "64 x (T+1) factors x V**T terms (x 1/λ)")
    logP = oracle.response_log_probs(tables)
    P = np.exp(logP)
    assert abs(out["expected_harm"] - np.sum(P * harm)) <= b
    for level, h in enumerate(oracle.cond_harm(tables, harm)):
        np.testing.assert_allclose(out[f"H_{level}"], h, rtol=0, atol=b)
    var = np.sum(P * (harm - np.sum(P * harm)) ** 2)
    assert abs(out["harm_information"].sum() - var) <= b
    # Sequence-level KL (chain rule) for both KL outputs.
    logQ = oracle.response_log_probs(ref)
    assert abs(out["per_position_kl"].sum() - np.sum(P * (logP - logQ))) <= b
    tilted = logP - harm / lam
    star = np.exp(tilted - tilted.max())
    star /= star.sum()
    eq = [out[f"equilibrium_logits_{l}"] for l in range(length)]
    np.testing.assert_allclose(np.exp(oracle.response_log_probs(eq)), star, rtol=0, atol=b)
    assert abs(out["equilibrium_kl"].sum() - np.sum(star * (np.log(star) - logP))) <= b
    # Determined masks by enumeration of continuations.
    ys = all_prefixes(vocab_size, length)
    for level in range(length + 1):
        rows = ys[:, :level] @ (vocab_size ** np.arange(level - 1, -1, -1))
        spread = np.zeros(vocab_size**level)
        np.maximum.at(spread, rows, harm)
        low = np.ones(vocab_size**level)
        np.minimum.at(low, rows, harm)
        np.testing.assert_array_equal(out[f"determined_{level}"], spread == low)
    assert out["horizon"] == min(l for l in range(length + 1) if out[f"determined_{l}"].all())


def test_reference_is_not_exact_beyond_the_horizon_but_close():
    """The reference makes no effort to give exact zeros (THEORY.md section 4): its I_t beyond
    the horizon is tiny but is allowed to be non-zero; it must stay within rounding."""
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(3**l, 3)) for l in range(4)]
    harm = np.repeat((rng.random(3) < 0.5).astype(float), 27)
    harm[:27] = 0.0
    harm[27:54] = 1.0
    out = reference_analysis(tables, harm)
    assert out["horizon"] == 1
    assert np.all(np.abs(out["harm_information"][1:]) <= tol(64 * 5 * 81, "rounding"))
    assert out["harm_information"][0] > 0.01
