"""Tests of toy_lm.engines.fastmath: the vectorizable exp/log of the Numba kernels against numpy, in ulp.

The bounds are the ones the module documents (1 ulp for exp, 3 ulp for log); numpy's exp and log
are themselves within about 1 ulp of the correctly rounded value, so a function that met neither
bound would show up here as a difference of several ulp.
"""

import numpy as np
import pytest

pytest.importorskip("numba", reason='numba not installed (pip install "harm-horizon[numba]")')

from toy_lm.engines.fastmath import exp_array, log_array  # noqa: E402 (after the skip)


def _ulp_error(got, want):
    return np.abs(got - want) / np.spacing(np.abs(want))


@pytest.mark.parametrize(
    "lo, hi", [(-1.0, 0.0), (-40.0, 0.0), (-700.0, 0.0), (-5.0, 5.0), (0.0, 709.0)]
)
def test_exp_within_one_ulp(lo, hi):
    x = np.random.default_rng(0).uniform(lo, hi, 1 << 18)
    out = np.empty_like(x)
    exp_array(x, out)
    assert _ulp_error(out, np.exp(x)).max() <= 1.0


def test_exp_special_values_and_subnormals():
    x = np.array([0.0, -0.0, -np.inf, -746.0, -745.1, -708.5, -1e-300, 1e-300])
    out = np.empty_like(x)
    exp_array(x, out)
    assert out[0] == out[1] == 1.0 and out[-2] == out[-1] == 1.0
    assert out[2] == out[3] == 0.0
    np.testing.assert_allclose(out[4:6], np.exp(x[4:6]), rtol=0, atol=5e-324)
    sub = np.random.default_rng(1).uniform(-745.0, -708.4, 1 << 14)
    got = np.empty_like(sub)
    exp_array(sub, got)
    # Subnormal results: within a couple of subnormal steps (the final scaling rounds once more).
    assert np.abs(got - np.exp(sub)).max() <= 2 * 5e-324


@pytest.mark.parametrize(
    "lo, hi",
    [(1.0, 4.0), (1e-300, 1.0), (0.5, 2.0), (1 - 1e-8, 1 + 1e-8), (1e-10, 1e10), (1e-320, 1e-300)],
)
def test_log_within_three_ulp(lo, hi):
    x = np.random.default_rng(2).uniform(lo, hi, 1 << 18)
    out = np.empty_like(x)
    log_array(x, out)
    assert _ulp_error(out, np.log(x)).max() <= 3.0


def test_log_special_values():
    x = np.array([1.0, 2.0, 0.5, 0.0, 5e-324])
    out = np.empty_like(x)
    log_array(x, out)
    assert out[0] == 0.0 and out[3] == -np.inf
    np.testing.assert_allclose(out[[1, 2, 4]], np.log(x[[1, 2, 4]]), rtol=4e-16, atol=0)
