"""Tests of proofs_check.results: tolerances, comparisons, JSON records."""

import json
import math

import numpy as np
import pytest

from proofs_check.results import CheckResult, compare, rounding_tolerance, stated_tolerance


def test_rounding_tolerance_is_eps_times_stated_factor():
    tol = rounding_tolerance(np.float64, terms=81, ops=32, magnitude=0.5, what="bound")
    eps = np.finfo(np.float64).eps
    assert tol.value == pytest.approx(eps * 2 * (32 + 81) * 0.5)
    assert tol.dtype == "float64"
    assert (
        "eps(float64)" in tol.derivation
        and "81 terms" in tol.derivation
        and "bound" in tol.derivation
    )
    assert rounding_tolerance(
        np.float32, terms=1, ops=1, magnitude=1, what="x"
    ).value == pytest.approx(np.finfo(np.float32).eps * 4)


def test_compare_equality_and_bounds():
    tol = stated_tolerance(0.1, "test")
    part = compare(
        "eq", np.array([1.0, 2.0]), np.array([1.05, 2.0]), tol, lhs_name="a", rhs_name="b"
    )
    assert part.passed and part.max_abs_error == pytest.approx(0.05)
    assert part.max_rel_error == pytest.approx(0.05 / 2.0)
    assert not compare("eq", 1.0, 1.2, tol, lhs_name="a", rhs_name="b").passed
    # One-sided claims: lhs <= rhs and lhs >= rhs.
    assert (
        compare("up", 0.5, 1.0, tol, bound="upper", lhs_name="a", rhs_name="b").max_abs_error == 0.0
    )
    assert not compare("up", 1.5, 1.0, tol, bound="upper", lhs_name="a", rhs_name="b").passed
    assert not compare("low", 0.5, 1.0, tol, bound="lower", lhs_name="a", rhs_name="b").passed
    # NaN never passes.
    assert not compare("nan", np.nan, 0.0, tol, lhs_name="a", rhs_name="b").passed


def test_check_result_record_has_every_field_and_is_json():
    tol = stated_tolerance(1e-12, "derivation")
    good = compare("a", 1.0, 1.0, tol, lhs_name="l", rhs_name="r")
    bad = compare("b", 1.0, math.inf, tol, lhs_name="l", rhs_name="r")
    result = CheckResult("T0", "statement", "inst", [good, bad])
    assert not result.passed and result.worst is bad
    record = json.loads(json.dumps(result.to_json()))
    for field in (
        "check",
        "statement",
        "instance",
        "lhs",
        "rhs",
        "lhs_summary",
        "rhs_summary",
        "max_abs_error",
        "max_rel_error",
        "tolerance",
        "tolerance_derivation",
        "dtype",
        "passed",
        "parts",
    ):
        assert field in record
    assert record["max_abs_error"] == "inf" and record["passed"] is False
