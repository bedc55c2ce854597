"""proofs_check.dynamics (THEORY.md T14): the identity holds to rounding, every planted error
breaks the comparison (not an exception), and shared weights are measured, not asserted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proofs_check import REGISTRY, builtin_suite, dynamics, make_instance
from toy_lm.engines import objectives


@pytest.fixture(scope="module")
def tabular():
    """The built-in suite's tabular instances that T14 applies to (V=3, T=4, τ=2 and automaton)."""
    insts = [i for i in builtin_suite(["tabular"]) if dynamics.deep_undetermined(i)]
    assert len(insts) >= 2
    return insts


@pytest.mark.parametrize("check_id", ["T14", "T14-natural"])
def test_t14_passes_on_the_builtin_suite(check_id, tabular):
    check = REGISTRY[check_id]
    for inst in tabular:
        result = check.run(inst)
        assert result.passed, result.to_json()
        identity, moved = result.parts
        assert identity.dtype == "float64" and identity.tolerance < 1e-8
        assert identity.tolerance_derivation.startswith("eps(float64)")
        assert moved.passed and moved.max_abs_error == 0.0  # the subtree really moved
        masses = [p["P_u"] for p in result.measurements["prefixes"]]
        levels = [l for l in range(1, inst.length) if not inst.determined[l].all()]
        assert [p["level"] for p in result.measurements["prefixes"]] == levels
        assert all(0 < m < 1 for m in masses)


@pytest.mark.parametrize("check_id", ["T14", "T14-natural"])
def test_each_planted_error_fails_the_identity_comparison(check_id, tabular):
    check = REGISTRY[check_id]
    for inst in tabular:
        plants = check.plants_for(inst)
        assert {p.name for p in plants} == set(check.plants)
        for plant in plants:
            result = check.run(inst, plant.name)  # an exception would fail the test here
            identity = result.parts[0]
            assert not identity.passed, (plant.name, inst.name)
            assert identity.max_abs_error > 1e3 * identity.tolerance


def test_gradient_identity_below_u(tabular):
    """∂L_λ/∂z(w) = P_π(u) ∂L_λ^u/∂z(w) for every w below u (the statement T14 integrates)."""
    inst = tabular[0]
    tables = tuple(
        jnp.asarray(z) + 0.3 * jnp.sin(jnp.arange(z.size).reshape(z.shape)) for z in inst.tables
    )  # away from π0, so the KL term contributes
    base = tuple(jnp.asarray(z) for z in inst.tables)
    whole = jax.grad(objectives.kl_regularized_loss)(tables, base, jnp.asarray(inst.harm), inst.lam)
    probs = np.exp(np.asarray(dynamics.continuation_log_probs([z for z in tables])))
    for level, row in dynamics.checked_prefixes(inst):
        block = inst.vocab_size ** (inst.length - level)
        p_u = probs[row * block : (row + 1) * block].sum()
        sub = dynamics.subtree(tables, level, row)
        alone = jax.grad(dynamics.subtree_loss)(
            sub,
            dynamics.subtree(base, level, row),
            jnp.asarray(inst.harm[row * block : (row + 1) * block]),
            inst.lam,
        )
        for a, b in zip(dynamics.subtree(whole, level, row), alone):
            np.testing.assert_allclose(np.asarray(a), p_u * np.asarray(b), rtol=0, atol=1e-14)


def test_not_applicable_without_an_undetermined_prefix_below_the_root():
    inst = make_instance("tabular", 2, 3, seed=0, tau=1)
    assert not dynamics.deep_undetermined(inst) and not REGISTRY["T14"].applies(inst)


def test_shared_weights_gap_is_measured_not_asserted():
    inst = make_instance("markov", 3, 4, seed=0, harm_kind="automaton", lam=0.5)
    result = REGISTRY["T14"].run(inst)
    assert result.passed  # the tabular identity on the policy's logit tables
    gap = result.measurements["shared_weight_gap"]["prefixes"]
    assert len(gap) == inst.length - 1
    for row in gap:
        assert np.isfinite(row["relative_error"]) and row["relative_error"] >= 0
        assert row["predicted_change"] > 0


def test_registered_and_selected_by_statement():
    from proofs_check import select

    assert [c.id for c in select(["T14"])] == ["T14", "T14-natural"]
    assert REGISTRY["T14"].topic == "dynamics"
    assert set(REGISTRY["T14"].plants) == {
        "prefix-mass-dropped",
        "ancestors-not-frozen",
        "lambda-scale",
    }
    assert set(REGISTRY["T14-natural"].plants) == {"prefix-mass-added", "lambda-scale"}
