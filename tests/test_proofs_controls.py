"""Tests of proofs_check.controls: the planted errors really change what they claim to."""

import numpy as np

from proofs_check import controls, enumeration


def test_shifted_levels_and_wrong_baseline():
    values = [np.array([0.5]), np.array([0.2, 0.8]), np.array([0.0, 0.4, 1.0, 0.6])]
    shifted = controls.shifted_levels(values)
    np.testing.assert_array_equal(shifted[0], [0.2])
    np.testing.assert_array_equal(shifted[1], [0.0, 1.0])
    np.testing.assert_array_equal(shifted[2], values[2])
    base = controls.wrong_level_baseline(values, 2)
    np.testing.assert_array_equal(base[0], [0.5])
    np.testing.assert_array_equal(base[1], [0.5, 0.5])
    deltas = controls.increments_of(values, 2)
    np.testing.assert_allclose(deltas[1], [-0.2, 0.2, 0.2, -0.2])


def test_changed_harm_undetermines_a_determined_prefix():
    harm = np.repeat([0.0, 1.0], 4)  # decided by the first token, V=2, T=3
    det = enumeration.direct_determined(harm, 2, 3)
    changed = controls.changed_below_determined(harm, 2, 3, det)
    assert np.sum(changed != harm) == 1
    new_det = enumeration.direct_determined(changed, 2, 3)
    assert any((d & ~n).any() for d, n in zip(det, new_det))
    assert (
        controls.changed_below_determined(
            np.array([0.0, 1.0]), 2, 1, enumeration.direct_determined(np.array([0.0, 1.0]), 2, 1)
        )
        is None
    )


def test_perturbed_tables_keep_determined_rows_bit_for_bit():
    tables = [np.zeros((1, 2)), np.ones((2, 2))]
    masks = [np.array([False]), np.array([True, False])]
    moved = controls.perturbed_tables(tables, masks, 0)
    np.testing.assert_array_equal(moved[1][0], tables[1][0])
    assert not np.array_equal(moved[1][1], tables[1][1]) and not np.array_equal(moved[0], tables[0])
    everywhere = controls.perturbed_tables(tables, masks, 0, everywhere=True)
    assert not np.array_equal(everywhere[1][0], tables[1][0])
