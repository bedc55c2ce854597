"""Tests of toy_lm.models.harms: harm tables, determined masks, per-response and global horizons."""

import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import HARM_KINDS, SIZES, examples, make_harm

from toy_lm.errors import InputError
from toy_lm.models import harms


def brute_force_masks(harm, vocab_size, length):
    """``det_l[row]``: is ``h`` constant over every continuation of the prefix? (by enumeration)"""
    values = {
        y: harm[int(np.dot(y, vocab_size ** np.arange(length - 1, -1, -1)))]
        for y in itertools.product(range(vocab_size), repeat=length)
    }
    masks = []
    for level in range(length + 1):
        mask = []
        for prefix in itertools.product(range(vocab_size), repeat=level):
            seen = {
                values[prefix + rest]
                for rest in itertools.product(range(vocab_size), repeat=length - level)
            }
            mask.append(len(seen) == 1)
        masks.append(np.array(mask))
    return masks


harm_cases = st.tuples(
    st.sampled_from(SIZES), st.sampled_from(HARM_KINDS), st.integers(0, 2**31 - 1), st.data()
)


@settings(max_examples=examples(30))
@given(harm_cases)
def test_determined_masks_and_horizons_agree_with_brute_force(case):
    (vocab_size, length), kind, seed, data = case
    tau = data.draw(st.integers(0, length))
    harm = make_harm(kind, vocab_size, length, tau, seed)
    masks = harms.determined_masks(harm, vocab_size)
    want = brute_force_masks(harm, vocab_size, length)
    assert len(masks) == length + 1
    for got, exp in zip(masks, want):
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, exp)
    # tau(y): the first level at which y's prefix is determined.
    taus = harms.response_horizons(harm, vocab_size)
    for row, y in enumerate(itertools.product(range(vocab_size), repeat=length)):
        first = min(
            l
            for l in range(length + 1)
            if want[l][int(np.dot(y[:l], vocab_size ** np.arange(l - 1, -1, -1)))]
        )
        assert taus[row] == first
    assert harms.horizon(harm, vocab_size) == taus.max()


@settings(max_examples=examples(20))
@given(st.sampled_from(SIZES), st.integers(0, 2**31 - 1), st.booleans(), st.data())
def test_random_decided_harm_is_decided_at_exactly_tau(vt, seed, binary, data):
    vocab_size, length = vt
    tau = data.draw(st.integers(0, length))
    harm = np.asarray(
        harms.random_decided_harm(jax.random.key(seed), vocab_size, length, tau, binary=binary)
    )
    assert harm.shape == (vocab_size**length,) and harm.dtype == np.float64
    assert np.all((harm >= 0) & (harm <= 1))
    if binary:
        assert set(np.unique(harm)) <= {0.0, 1.0}
    # h depends only on the first tau tokens ...
    blocks = harm.reshape(vocab_size**tau, -1)
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :1], blocks.shape))
    # ... and on all of them: the horizon is exactly tau.
    assert harms.horizon(harm, vocab_size) == tau


def test_random_harm_is_deterministic_in_the_key():
    a = harms.random_decided_harm(jax.random.key(3), 3, 3, 2)
    b = harms.random_decided_harm(jax.random.key(3), 3, 3, 2)
    c = harms.random_decided_harm(jax.random.key(4), 3, 3, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_soft_harm_is_soft():
    harm = np.asarray(harms.soft_harm(jax.random.key(0), 3, 3))
    assert np.all((harm >= 0) & (harm <= 1))
    assert np.mean((harm > 0) & (harm < 1)) > 0.5  # mostly strictly between 0 and 1
    assert harms.horizon(harm, 3) == 3
    assert harms.horizon(np.asarray(harms.soft_harm(jax.random.key(0), 3, 3, tau=1)), 3) == 1


def test_masks_of_constant_and_identity_harms():
    assert harms.horizon(np.zeros(8), 2) == 0
    assert all(m.all() for m in harms.determined_masks(np.ones(9), 3))
    # h(y) = y_T alone: nothing is determined before the last token.
    harm = np.tile([0.0, 1.0], 4)
    masks = harms.determined_masks(harm, 2)
    assert [m.any() for m in masks] == [False, False, False, True]
    np.testing.assert_array_equal(harms.response_horizons(harm, 2), 3)


def test_masks_are_exact_for_nearly_equal_values():
    # Values that differ in the last bit are different harms: no tolerance in the masks.
    harm = np.array([0.3, np.nextafter(0.3, 1.0), 0.5, 0.5])
    masks = harms.determined_masks(harm, 2)
    np.testing.assert_array_equal(masks[1], [False, True])


def test_harm_table_and_bad_inputs():
    np.testing.assert_array_equal(harms.harm_table([0, 1, 1, 0], 2, 2), [0.0, 1.0, 1.0, 0.0])
    with pytest.raises(InputError, match="outside"):
        harms.harm_table([0, 2, 1, 0], 2, 2)
    with pytest.raises(InputError, match="NaN"):
        harms.harm_table([0, np.nan, 1, 0], 2, 2)
    with pytest.raises(InputError, match="not a power"):
        harms.determined_masks(np.zeros(6), 4)
    with pytest.raises(InputError, match="vector"):
        harms.determined_masks(np.zeros((2, 2)), 2)
    with pytest.raises(InputError, match="tau"):
        harms.random_decided_harm(jax.random.key(0), 2, 3, 4)
    with pytest.raises(InputError, match="tau"):
        harms.random_decided_harm(jax.random.key(0), 2, 3, -1)
