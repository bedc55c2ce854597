"""Issue 11's defects, each with a test that fails on the old behaviour.

Every check must be able to fail: a wrong ``H`` is caught (T1 compares it with direct sums), a
recovery term that is not there fails T9, the symmetric T7c instance (``κ_t = 0``) passes, a
planted error that raises is not a detection, a comparison over nothing is "n/a", and the dtype
shown is the compared arrays'.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from proofs_check import instances, registry, runner
from proofs_check.engines import read_through
from proofs_check.registry import Check
from proofs_check.results import CheckResult, compare
from toy_lm.mutation import active, point
from toy_lm.precision import Tolerance


@pytest.fixture(scope="module")
def inst():
    return instances.make_instance("tabular", 3, 3, seed=0, tau=2)


def test_wrong_H_is_caught_by_T1(inst):
    """Old T1 re-centred Δ against π inside the engine, so a uniform-weights H passed."""
    t1 = registry.select(["T1"])[0]
    assert t1.run(inst).passed
    assert t1.run(inst, "uniform-H").status == "fail"
    fresh = instances.with_engine(inst, "tree")
    with active({"tree.backward.weights": lambda pi, **_: 0.0 * pi + 1.0 / pi.shape[-1]}):
        result = t1.run(fresh)
    assert result.status == "fail" and result.killed_by_comparison()


def test_inflated_information_is_caught(inst):
    """Old T6 read I_t from the same code as g, so an inflated I_t passed; now T1-var sees it."""
    fresh = instances.with_engine(inst, "tree")
    with active({"tree.information.weight": lambda p, **_: 2.0 * p}):
        assert registry.select(["T1-var"])[0].run(fresh).status == "fail"


def test_T9_fails_without_the_recovery_term():
    """Old T9 passed with μ = 1e-300 (it reduced to T4); the recovery part is now checked at its
    own scale, so an objective whose μ is 0 fails."""
    auto = instances.make_instance("tabular", 3, 4, seed=0, harm_kind="automaton", lam=0.5)
    t9 = registry.select(["T9"])[0]
    assert t9.run(auto).passed
    for plant in ("mu-zero", "mu-dropped"):
        assert t9.run(auto, plant).status == "fail"
    assert registry.select(["T9-train"])[0].run(auto, "mu-zero").status == "fail"


def test_T7c_passes_the_symmetric_instance():
    """Uniform π0 and h = 1[y_1 = 1]: κ_1 = 0, the error falls like 1/λ² (old T7c: slope -2, FAIL)."""
    base = instances.make_instance("tabular", 2, 2, seed=0, tau=1)
    policy, params = base.policy, jax_zeros_like(base.params)
    harm = np.array([0.0, 0.0, 1.0, 1.0])
    sym = instances.Instance("uniform V2 T2 h=y1", policy, params, harm)
    t7c = registry.select(["T7c"])[0]
    result = t7c.run(sym)
    assert result.measurements["kappa"] == [pytest.approx(0.0, abs=1e-12)]
    assert result.passed, result.to_json()


def jax_zeros_like(tree):
    import jax

    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def test_a_raising_planted_error_is_not_a_detection(inst):
    def fn(instance, plant):
        if plant:
            raise ValueError("the planted error broke the check")
        return [
            compare(
                "x = 0",
                np.zeros(3),
                0.0,
                Tolerance(0.0, "exact", "float64"),
                lhs_name="x",
                rhs_name="0",
            )
        ]

    check = Check("TX", "a check whose planted error raises", fn, ("shifted-H",))
    tasks = runner.plan([check], [inst], negative_controls=True)
    rows = runner.summarize(runner.run_tasks(tasks))
    assert rows[0].errors == 1 and rows[0].failed == 0
    assert not rows[0].ok and rows[0].status == "ERROR"


def test_an_empty_comparison_is_na_not_pass(inst):
    tol = Tolerance(1e-12, "exact", "float64")
    part = compare("nothing", np.zeros(0), 0.0, tol, lhs_name="none", rhs_name="0")
    assert part.status == "n/a" and part.compared == 0
    result = CheckResult("TX", "vacuous", inst.name, [part])
    assert result.status == "n/a" and not result.passed
    check = Check("TX", "vacuous", lambda i, p: [part], ("shifted-H",))
    rows = runner.summarize(runner.run_tasks(runner.plan([check], [inst])))
    assert rows[0].status == "N/A" and not rows[0].ok


def test_vacuous_parts_no_longer_pass_when_no_prefix_is_determined():
    """With τ* = T, T5's 'beyond the horizon' part compares nothing: n/a, not PASS."""
    deep = instances.make_instance("tabular", 2, 3, seed=0, tau=3)
    result = registry.select(["T5"])[0].run(deep)
    statuses = {p.name: p.status for p in result.parts}
    assert statuses["g_t = 0 for t > τ*"] == "n/a"
    assert result.status == "pass"  # the other parts did compare


def test_dtype_is_read_from_the_arrays():
    tol = Tolerance(1e-6, "x", "float64")
    part = compare(
        "x", np.ones(2, np.float32), np.ones(2, np.float32), tol, lhs_name="a", rhs_name="b"
    )
    assert part.dtype == "float32"
    assert compare("x", np.ones(2), 0.0, tol, lhs_name="a", rhs_name="b").dtype == "float64"


def test_every_engine_is_checked(inst):
    """T1 on the analysis (Numba), XLA (chunk boundaries crossed) and Markov DP engines."""
    markov = instances.make_instance("markov", 3, 3, seed=0, harm_kind="automaton", lam=0.5)
    engines = ("tree", "xla", "markov")
    views = read_through([inst, markov], engines)
    assert sorted({v.engine for v in views}) == sorted(engines)
    assert [v.engine for v in views].count("markov") == 1  # the DP needs a Markov automaton
    for check in registry.select(["T1", "T12", "T7b"]):
        for view in views:
            if view.engine in check.engines and check.applies(view):
                assert check.run(view).passed, (check.id, view.name)


def test_injection_points_are_free_and_checked():
    assert point("tree.tilt", 3.0) == 3.0
    with pytest.raises(KeyError, match="unknown injection point"):
        with active({"tree.no-such-role": lambda v, **_: v}):
            pass


def test_checks_report_what_they_compared(inst):
    result = registry.select(["T1"])[0].run(inst)
    assert result.comparisons > 0
    record = result.to_json()
    assert record["status"] == "pass" and record["comparisons"] == result.comparisons
    assert all(p["dtype"] == "float64" for p in record["parts"])


def test_with_engine_shares_engine_free_caches_only(inst):
    _ = inst.quantities
    view = instances.with_engine(inst, "xla")
    assert view.name.endswith("[xla]") and view.engine == "xla"
    assert "quantities" in view.__dict__ and "_engine_cache" not in view.__dict__
    assert dataclasses.replace(view).engine == "xla"
