"""Tests of proofs_check.enumeration (direct sums) against the plain numpy reference."""

import numpy as np

from proofs_check import enumeration
from toy_lm.engines.reference import reference_analysis


def _instance(vocab, length, seed=0):
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(vocab**l, vocab)) for l in range(length)]
    harm = (rng.random(vocab**length) < 0.5).astype(float)
    logp = [enumeration.log_softmax(z) for z in logits]
    probs = np.exp(enumeration.response_log_probs_from_tables(logp, vocab, length))
    return logits, harm, logp, probs


def test_direct_sums_match_reference():
    vocab, length = 3, 3
    logits, harm, logp, probs = _instance(vocab, length)
    ref = reference_analysis(logits, harm, lam=0.7)
    assert probs.dtype == np.float64 and abs(probs.sum() - 1) < 1e-14
    for level, h in enumerate(enumeration.direct_cond_harm(probs, harm, vocab, length)):
        np.testing.assert_allclose(h, ref[f"H_{level}"], atol=1e-14)
    for level, pi in enumerate(enumeration.direct_conditionals(probs, vocab, length)):
        np.testing.assert_allclose(pi, np.exp(logp[level]), atol=1e-14)
    for level, det in enumerate(enumeration.direct_determined(harm, vocab, length)):
        np.testing.assert_array_equal(det, ref[f"determined_{level}"])
    assert enumeration.direct_horizon(harm, vocab, length) == ref["horizon"]
    eq = enumeration.log_normalize(np.log(probs) - harm / 0.7)
    kl = enumeration.per_position_kl_direct(eq, np.log(probs), vocab, length)
    np.testing.assert_allclose(kl, ref["equilibrium_kl"], atol=1e-13)
    np.testing.assert_allclose(kl.sum(), enumeration.sequence_kl(eq, np.log(probs)), atol=1e-13)


def test_blocks_and_expand_are_inverse_layouts():
    values = np.arange(27.0)
    sums = enumeration.block_sums(values, 3, 1)
    np.testing.assert_array_equal(sums, [36.0, 117.0, 198.0])
    np.testing.assert_array_equal(
        enumeration.expand(np.array([1.0, 2.0, 3.0]), 3, 3), np.repeat([1.0, 2.0, 3.0], 9)
    )
    assert enumeration.all_responses(2, 3).shape == (8, 3)
