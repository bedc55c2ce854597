"""Tests of proofs_check.strategies, and the project's own property tests built on them."""

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import toy_lm
from proofs_check import select
from proofs_check.strategies import harms, instances, policies

CHEAP_KINDS = ("tabular", "positional", "markov")


@given(st.data())
def test_harms_have_the_requested_horizon(data):
    v = data.draw(st.integers(2, 3))
    t = data.draw(st.integers(1, 4))
    tau = data.draw(st.integers(0, t))
    harm = data.draw(harms(v, t, horizon=tau, kinds=("binary",)))
    assert harm.shape == (v**t,) and set(np.unique(harm)) <= {0.0, 1.0}
    assert toy_lm.horizon(harm, v) == tau
    soft = data.draw(harms(v, t, horizon=tau, kinds=("soft",)))
    assert toy_lm.horizon(soft, v) <= tau and np.all((soft >= 0) & (soft <= 1))
    automaton = data.draw(harms(v, t, kinds=("automaton",)))
    assert set(np.unique(automaton)) <= {0.0, 1.0}


@given(policies(kinds=CHEAP_KINDS, max_vocab=3, max_length=3))
def test_policies_give_canonical_tables(drawn):
    policy, params = drawn
    tables = policy.level_tables(params)
    assert [t.shape for t in tables] == [
        (policy.vocab_size**l, policy.vocab_size) for l in range(policy.length)
    ]
    assert all(t.dtype == np.float64 for t in tables)


harm_information = jax.jit(toy_lm.harm_information)


@given(instances(kinds=CHEAP_KINDS, max_vocab=3, max_length=3))
def test_no_information_beyond_the_horizon(inst):
    """The README example: a property of the engine in a few lines."""
    info = harm_information(inst.tables, inst.harm)
    assert all(float(i) == 0.0 for i in info[inst.horizon :])


@settings(max_examples=min(settings.default.max_examples, 8))
@given(instances(kinds=CHEAP_KINDS, max_vocab=3, max_length=3, min_length=2))
def test_registered_checks_hold_on_drawn_instances(inst):
    for check in select(["T1", "T3", "T4", "T5", "T7b", "T9b"]):
        if check.applies(inst):
            result = check.run(inst)
            assert result.status in ("pass", "n/a"), result.to_json()  # n/a: nothing to compare
