"""Every registered check passes on held-out instances and flags every one of its planted errors.

Instances here (V = 4, T = 2, seeds 8 and 9, every parameterization, plus the automaton harm) are
not in the built-in suite; they share shapes with the CLI's held-out run in test_proofs_cli.py,
so the compiled programs are reused within one pytest process.
"""

import numpy as np
import pytest

from proofs_check import all_checks, instances

HELD_OUT = (4, 2, 1)


@pytest.fixture(scope="module")
def suite():
    v, t, tau = HELD_OUT
    out = []
    for kind in instances.POLICY_KINDS:
        out.append(instances.make_instance(kind, v, t, seed=8, tau=tau))
        out.append(instances.make_instance(kind, v, t, seed=9, harm_kind="automaton", lam=0.5))
    out.append(instances.make_instance("tabular", v, t, seed=9, tau=tau, harm_kind="soft"))
    for kind in instances.POLICY_KINDS:  # prompt mixtures (the T3-prompts check)
        out.append(
            instances.make_mixture_instance(kind, v, t, seed=8, taus=(tau, t), weights=(0.6, 0.4))
        )
    return out


CHECKS = {c.id: c for c in all_checks()}


@pytest.mark.parametrize("check_id", list(CHECKS))
def test_check_passes_and_flags_its_planted_errors(check_id, suite):
    check = CHECKS[check_id]
    applicable = [inst for inst in suite if check.applies(inst)]
    assert applicable, f"{check_id} applies to none of the held-out instances"
    kinds = {inst.kind for inst in applicable}
    assert kinds == set(instances.POLICY_KINDS), f"{check_id} not run on every parameterization"
    planted_runs = 0
    for inst in applicable:
        result = check.run(inst)
        assert result.passed, (inst.name, result.to_json())
        for part in result.parts:
            assert part.dtype == "float64"
            assert part.max_abs_error <= part.tolerance
        for plant in check.plants_for(inst):
            planted = check.run(inst, plant.name)
            assert planted.status == "fail", (
                f"{check_id}: planted error {plant.name} not flagged by a failed comparison on "
                f"{inst.name} ({planted.status})"
            )
            planted_runs += 1
    assert planted_runs > 0, f"{check_id}: no planted error applied to any instance"


def test_exact_tolerances_are_eps_derived(suite):
    inst = suite[0]
    for check in all_checks():
        if not check.applies(inst):
            continue
        for part in check.run(inst).parts:
            if part.kind == "exact" and part.tolerance > 0:
                assert part.tolerance_derivation.startswith("eps(float64)")
                assert part.tolerance < 1e-8


def test_shared_weights_spill_over_is_measured_not_asserted(suite):
    t8 = CHECKS["T8"]
    transformer = next(i for i in suite if i.kind == "transformer" and i.harm_kind == "binary")
    result = t8.run(transformer)
    spill = result.measurements["shared_weight_spill_over"]
    assert result.passed and spill["max_kl_beyond_horizon"] >= 0.0
    assert np.isfinite(spill["max_kl_within_horizon"])
    tabular = next(i for i in suite if i.kind == "tabular" and i.harm_kind == "binary")
    assert "shared_weight_spill_over" not in t8.run(tabular).measurements


def test_t7c_reproduces_the_reference_ratio_trend():
    """THEORY.md section 4's setting (V=3, T=4, harm fixed by two tokens): λ(2λ²KL_t/I_t - 1) -> κ_t,
    the error shrinking at every doubling of λ, so 2λ²KL_t/I_t -> 1."""
    inst = instances.make_instance("tabular", 3, 4, seed=0, tau=2)
    result = CHECKS["T7c"].run(inst)
    assert result.passed and result.measurements["positions"] == [1, 2]
    lams = np.asarray(result.measurements["lambdas"])
    for position, kappa in zip((1, 2), result.measurements["kappa"]):
        error = np.asarray(result.measurements["errors"][position])
        assert np.all(np.diff(error) < 0)  # shrinks as λ doubles
        assert np.all(error[1:] <= error[:-1] / 1.8)
        assert abs(kappa) / lams[-1] < 1e-3  # so ratio - 1 = κ/λ + O(1/λ²) is small
