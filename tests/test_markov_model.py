"""toy_lm.models.markov_model: the analyze-markov model file, built from a policy and an automaton."""

import numpy as np
import pytest

from experiments.cli.markov import read_model
from toy_lm.errors import EnumerationTooLarge, InputError
from toy_lm.models.automata import make_automaton, pattern_harm
from toy_lm.models.markov_model import (
    MODEL_KEYS,
    markov_model_arrays,
    random_markov_model,
    save_markov_model,
)


def test_arrays_have_the_documented_keys_dtypes_and_shapes():
    logits, dfa = random_markov_model(0, vocab_size=4, length=7, order=2)
    arrays = markov_model_arrays(logits, dfa)
    assert tuple(arrays) == MODEL_KEYS
    assert arrays["markov_logits"].shape == (7, 16, 4)
    assert arrays["markov_logits"].dtype == np.float64
    assert arrays["dfa_transitions"].dtype == np.int64
    assert arrays["dfa_transitions"].shape == (dfa.num_states, 4)
    assert arrays["dfa_verdict"].shape == (dfa.num_states,)
    assert arrays["dfa_start"].shape == () and arrays["dfa_start"].dtype == np.int64


def test_saved_file_reads_back_identically(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 3, 3))  # order 1 over V = 3
    dfa = pattern_harm(3, [1, 1])
    path = tmp_path / "m.npz"
    save_markov_model(str(path), logits, dfa)
    got_logits, got_dfa = read_model(str(path))
    np.testing.assert_array_equal(got_logits, logits)
    np.testing.assert_array_equal(got_dfa.transitions, dfa.transitions)
    np.testing.assert_array_equal(got_dfa.verdict, dfa.verdict)
    assert got_dfa.start == dfa.start


def test_random_model_is_reproducible_and_differs_by_seed():
    a, dfa = random_markov_model(5, 3, 4, 1)
    b, _ = random_markov_model(5, 3, 4, 1)
    c, _ = random_markov_model(6, 3, 4, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert dfa.verdict.max() == 1.0 and dfa.verdict.min() == 0.0


@pytest.mark.parametrize(
    "logits, match",
    [
        (np.zeros((4, 5, 3)), "not a power of V=3"),
        (np.zeros((4, 3, 2)), "dfa_transitions has shape"),
        (np.full((4, 3, 3), np.nan), "finite"),
    ],
)
def test_bad_models_are_refused(logits, match):
    with pytest.raises(InputError, match=match):
        markov_model_arrays(logits, make_automaton(np.zeros((2, 3), np.int64), [0.0, 1.0], 0))


def test_too_large_random_model_is_refused_before_allocation(monkeypatch):
    monkeypatch.setenv("HARM_HORIZON_MEMORY_LIMIT", "1M")
    with pytest.raises(EnumerationTooLarge, match="lower order"):
        random_markov_model(0, 8, 100, 6)
