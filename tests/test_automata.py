"""Tests of toy_lm.models.automata: automaton harms, their tables and their DP determined masks."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import AUTOMATON_KINDS, SIZES, examples, make_automaton, random_automaton

from toy_lm.errors import InputError
from toy_lm.models import automata, harms

responses = lambda V, T: itertools.product(range(V), repeat=T)  # noqa: E731


def run_dfa(dfa, tokens):
    state = dfa.start
    for token in tokens:
        state = dfa.transitions[state, token]
    return state


automaton_cases = st.tuples(
    st.sampled_from(SIZES + ((2, 6), (4, 3))),
    st.sampled_from(AUTOMATON_KINDS),
    st.integers(0, 2**31 - 1),
)


@settings(max_examples=examples(40))
@given(automaton_cases)
def test_table_and_dp_masks_agree_with_simulation(case):
    (vocab_size, length), kind, seed = case
    dfa = make_automaton(kind, vocab_size, length, seed)
    table = np.asarray(automata.automaton_harm_table(dfa, length))
    want = [dfa.verdict[run_dfa(dfa, y)] for y in responses(vocab_size, length)]
    np.testing.assert_array_equal(table, want)
    states = automata.level_states(dfa, length)
    for level in range(length + 1):
        np.testing.assert_array_equal(
            states[level], [run_dfa(dfa, y) for y in responses(vocab_size, level)]
        )
    # The DP masks over (steps left, state) equal the masks computed from the table.
    dp = automata.automaton_determined_masks(dfa, length)
    for got, exp in zip(dp, harms.determined_masks(table, vocab_size)):
        np.testing.assert_array_equal(got, exp)


def test_dp_masks_check_detects_a_wrong_table():
    """Planted error: masks of a table with one flipped response differ from the DP masks."""
    dfa = automata.harmful_before_refusal(3, 1, [1], [2])
    table = np.asarray(automata.automaton_harm_table(dfa, 3)).copy()
    table[-1] = 1 - table[-1]
    dp = automata.automaton_determined_masks(dfa, 3)
    assert any(not np.array_equal(a, b) for a, b in zip(dp, harms.determined_masks(table, 3)))


@settings(max_examples=examples(25))
@given(st.sampled_from(((2, 4), (3, 3), (4, 3))), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_harmful_before_refusal_semantics(vt, num_harmful, seed):
    vocab_size, length = vt
    rng = np.random.default_rng(seed)
    tokens = rng.permutation(vocab_size)
    split = int(rng.integers(1, vocab_size))
    harmful, refusal = set(tokens[:split].tolist()), set(tokens[split:].tolist())
    dfa = automata.harmful_before_refusal(vocab_size, num_harmful, harmful, refusal)
    table = np.asarray(automata.automaton_harm_table(dfa, length))
    for row, y in enumerate(responses(vocab_size, length)):
        count, harmful_y = 0, 0.0
        for token in y:
            if token in refusal:
                break
            count += token in harmful
            if count >= num_harmful:
                harmful_y = 1.0
                break
        assert table[row] == harmful_y, y


@settings(max_examples=examples(25))
@given(st.sampled_from(((2, 5), (3, 3))), st.lists(st.integers(0, 2), min_size=1, max_size=3))
def test_pattern_harm_is_substring_search(vt, pattern):
    vocab_size, length = vt
    pattern = [p % vocab_size for p in pattern]
    table = np.asarray(
        automata.automaton_harm_table(automata.pattern_harm(vocab_size, pattern), length)
    )
    text = lambda seq: ",".join(map(str, seq)) + ","  # noqa: E731
    for row, y in enumerate(responses(vocab_size, length)):
        assert table[row] == float(("," + text(pattern)) in ("," + text(y))), (y, pattern)


def test_determined_states_of_built_in():
    dfa = automata.harmful_before_refusal(3, 2, [1], [2])
    det = automata.determined_states(dfa, 3)
    assert det.shape == (4, 4)
    assert det[:, 2].all() and det[:, 3].all()  # HARM and SAFE are absorbing
    assert det[0].all()  # with no steps left every verdict is fixed
    assert not det[1, 1] and det[1, 0]  # one step: count 1 can still become harmful, count 0 not


def test_random_automaton_is_valid():
    dfa = random_automaton(5, 3)
    assert dfa.vocab_size == 3 and 1 <= dfa.num_states <= 4


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((2, 1), int), [0, 1]), r"shape \(S, V\)"),
        ((np.zeros((2, 2)), [0, 1]), "integers"),
        ((np.zeros((2, 2), int), [0, 1, 0]), "dfa_verdict must have shape"),
        ((np.full((2, 2), 2), [0, 1]), "outside"),
        ((np.zeros((2, 2), int), [0, 1.5]), r"\[0, 1\]"),
        ((np.zeros((2, 2), int), [0, np.nan]), r"\[0, 1\]"),
    ],
)
def test_make_automaton_rejects(args, match):
    with pytest.raises(InputError, match=match):
        automata.make_automaton(*args)
    with pytest.raises(InputError, match="not a state"):
        automata.make_automaton(np.zeros((2, 2), int), [0, 1], start=2)


def test_built_ins_reject_bad_arguments():
    with pytest.raises(InputError, match="at least 1"):
        automata.harmful_before_refusal(3, 0, [1], [2])
    with pytest.raises(InputError, match="disjoint"):
        automata.harmful_before_refusal(3, 1, [1], [1])
    with pytest.raises(InputError, match="token ids"):
        automata.harmful_before_refusal(3, 1, [1], [3])
    with pytest.raises(InputError, match="pattern"):
        automata.pattern_harm(3, [])
    with pytest.raises(InputError, match="pattern"):
        automata.pattern_harm(3, [3])
