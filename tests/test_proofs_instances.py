"""Tests of proofs_check.instances: the built-in suite, instance construction, size guards."""

import numpy as np
import pytest

from proofs_check import instances
from toy_lm.errors import InputError
from toy_lm.models.policy_factory import make_policy


def test_builtin_suite_covers_every_parameterization_setting_and_harm_kind():
    suite = instances.builtin_suite()
    kinds = {inst.kind for inst in suite}
    assert kinds == set(instances.POLICY_KINDS)
    assert {inst.harm_kind for inst in suite} == {"binary", "soft", "ties", "automaton", "mixed"}
    assert {(i.vocab_size, i.length) for i in suite if i.kind == "tabular"} == {
        (2, 3),
        (3, 4),
        (4, 5),
    }
    assert {(i.vocab_size, i.length) for i in suite if i.kind == "transformer"} == {(2, 3), (3, 4)}
    assert max(i.num_responses for i in suite) >= 1024
    assert {1e-2, 1e3} <= {i.lam for i in suite}
    assert {i.horizon for i in suite if i.harm_kind == "binary"} == {1, 2}
    assert len({inst.name for inst in suite}) == len(suite)
    for inst in suite:
        if inst.harm_kind == "automaton":
            assert inst.dfa is not None and inst.cost_dfa is not None
    mixed = next(i for i in suite if i.harm_kind == "mixed")
    from toy_lm.models.harms import response_horizons

    taus = response_horizons(mixed.harm, mixed.vocab_size)
    assert len(set(taus.tolist())) > 1 and mixed.horizon < mixed.length  # τ(y) varies, τ* < T
    rare = next(i for i in suite if "rare" in i.name)
    from proofs_check.enumeration import prefix_marginals

    assert 1e-15 < float(prefix_marginals(rare.probs, rare.vocab_size, rare.length)[2][0]) < 1e-11


def test_chosen_sizes_make_the_product_and_check_horizons():
    decided, automaton = instances.suite_settings(vocab=[4], length=[2, 3], horizon=[1])
    assert decided == [(4, 2, 1), (4, 3, 1)] and automaton == [(4, 2), (4, 3)]
    with pytest.raises(InputError, match="horizon 5"):
        instances.suite_settings(length=[3], horizon=[5])
    with pytest.raises(InputError, match="V\\*\\*T"):
        instances.builtin_suite(["tabular"], vocab=[4], length=[6])
    with pytest.raises(InputError, match="seeds"):
        instances.builtin_suite(["tabular"], seeds=0)
    with pytest.raises(InputError, match="unknown policy kind"):
        make_policy("lstm", 2, 2)


def test_instance_quantities_are_float64_and_cached():
    inst = instances.make_instance("tabular", 2, 3, seed=3, tau=1)
    q = inst.quantities
    assert q["scores"].dtype == np.float64 and q["scores"].shape[:2] == (8, 3)
    assert inst.quantities is q
    assert abs(inst.probs.sum() - 1) < 1e-14
    assert inst.horizon == 1 and inst.binary
    soft = instances.make_instance("positional", 2, 3, seed=1, tau=2, harm_kind="soft")
    assert not soft.binary and soft.horizon <= 2


def test_recovery_cost_is_undetermined_after_the_harm_is_decided():
    dfa = instances.recovery_cost_automaton(3)
    # harmful (1) -> cost state; refusal (2) afterwards -> recovered; refusal first -> safe.
    assert dfa.transitions[0, 1] == 1 and dfa.transitions[1, 2] == 2 and dfa.transitions[0, 2] == 3
    assert dfa.transitions[1, 0] == 1 and list(dfa.verdict) == [0, 1, 0, 0]


def test_float32_parameters_are_refused():
    from toy_lm.errors import PrecisionError

    inst = instances.make_instance("tabular", 2, 2, seed=0, tau=1)
    params32 = tuple(np.asarray(p, np.float32) for p in inst.params)
    with pytest.raises(PrecisionError, match="require_x64"):
        instances.Instance("f32", inst.policy, params32, inst.harm)
