"""Tests of toy_lm.tables: canonical layout, validation and the enumeration size guard."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from toy_lm import tables
from toy_lm.errors import EnumerationTooLarge, InputError

sizes = st.tuples(st.integers(2, 5), st.integers(0, 4))


@given(sizes)
def test_all_prefixes_is_lexicographic_product(vt):
    vocab_size, level = vt
    got = tables.all_prefixes(vocab_size, level)
    want = np.array(list(itertools.product(range(vocab_size), repeat=level)), np.int32)
    assert got.dtype == np.int32
    assert got.shape == (vocab_size**level, level)
    np.testing.assert_array_equal(got, want.reshape(got.shape))


@given(sizes)
def test_prefix_index_inverts_all_prefixes(vt):
    vocab_size, level = vt
    rows = tables.prefix_index(tables.all_prefixes(vocab_size, level), vocab_size)
    np.testing.assert_array_equal(rows, np.arange(vocab_size**level))


def test_children_layout():
    # Children of row i at level l are rows i*V ... i*V+V-1 at level l+1.
    prefixes = tables.all_prefixes(3, 3)
    parents = tables.all_prefixes(3, 2)
    np.testing.assert_array_equal(
        prefixes.reshape(9, 3, 3)[:, :, :2], np.repeat(parents[:, None, :], 3, axis=1)
    )


def test_level_size_and_rows():
    assert tables.level_size(7, 30) == 7**30  # Python int, no overflow
    assert tables.num_tree_rows(3, 4) == 1 + 3 + 9 + 27


@given(sizes.filter(lambda vt: vt[1] >= 1))
def test_infer_sizes_accepts_canonical(vt):
    vocab_size, length = vt
    tabs = [np.zeros((vocab_size**l, vocab_size)) for l in range(length)]
    assert tables.infer_sizes(tabs) == (vocab_size, length)
    assert tables.validate_tables(tabs) == (vocab_size, length)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "no logits tables"),
        ([np.zeros((2, 2))], r"logits_0 must have shape \(1, V\)"),
        ([np.zeros(3)], r"logits_0 must have shape \(1, V\)"),
        ([np.zeros((1, 1))], "V must be at least 2"),
        ([np.zeros((1, 3)), np.zeros((3, 2))], r"logits_1 has shape \(3, 2\), expected \(3, 3\)"),
        ([np.zeros((1, 2)), np.zeros((2, 2)), np.zeros((3, 2))], "logits_2 has shape"),
    ],
)
def test_infer_sizes_rejects(bad, match):
    with pytest.raises(InputError, match=match):
        tables.infer_sizes(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_validate_tables_rejects_non_finite(value):
    tabs = [np.zeros((1, 2)), np.zeros((2, 2))]
    tabs[1][1, 0] = value
    with pytest.raises(InputError, match="logits_1 has 1 non-finite"):
        tables.validate_tables(tabs)


def test_validate_tables_rejects_non_numeric():
    with pytest.raises(InputError, match="dtype"):
        tables.validate_tables([np.array([["a", "b"]])])


def test_validate_harm():
    good = tables.validate_harm(np.array([0, 1, 1, 0], np.int64), 2, 2)
    assert good.dtype == np.float64
    np.testing.assert_array_equal(good, [0, 1, 1, 0])
    assert tables.validate_harm(np.array([True, False]), 2, 1).dtype == np.float64
    with pytest.raises(InputError, match=r"harm has shape \(3,\), expected \(4,\)"):
        tables.validate_harm(np.zeros(3), 2, 2)
    with pytest.raises(InputError, match="NaN"):
        tables.validate_harm(np.array([0.0, np.nan]), 2, 1)
    with pytest.raises(InputError, match="outside"):
        tables.validate_harm(np.array([0.0, 1.5]), 2, 1)
    with pytest.raises(InputError, match="outside"):
        tables.validate_harm(np.array([-1e-9, 0.5]), 2, 1)
    with pytest.raises(InputError, match="outside"):
        tables.validate_harm(np.array([0.0, np.inf]), 2, 1)
    with pytest.raises(InputError, match="dtype"):
        tables.validate_harm(np.array(["a", "b"]), 2, 1)


def test_is_binary():
    assert tables.is_binary(np.array([0.0, 1.0, 1.0]))
    assert not tables.is_binary(np.array([0.0, 0.5]))


def test_size_guard_refuses_before_allocating(monkeypatch):
    need = tables.estimate_tree_bytes(4, 12)
    # The estimate counts at least the logit tables and the harm in float64.
    assert need >= 8 * (tables.num_tree_rows(4, 12) * 4 + 4**12)
    assert tables.check_enumeration_size(4, 12, budget=need) == need
    with pytest.raises(EnumerationTooLarge, match=r"4\*\*12 .* needs about [0-9.]+ GiB.*Markov"):
        tables.check_enumeration_size(4, 12, budget=need - 1)
    # A size that would overflow any fixed-width integer is refused, not wrapped around.
    with pytest.raises(EnumerationTooLarge):
        tables.check_enumeration_size(50, 40)


@pytest.mark.parametrize(
    "text, value",
    [("1000", 1000), ("2K", 2048), ("1.5M", 1.5 * 2**20), ("8G", 8 * 2**30), ("8gb", 8 * 2**30)],
)
def test_memory_limit_env(monkeypatch, text, value):
    monkeypatch.setenv(tables.MEMORY_LIMIT_ENV, text)
    assert tables.memory_budget() == int(value)


def test_memory_limit_env_guard_and_bad_value(monkeypatch):
    monkeypatch.setenv(tables.MEMORY_LIMIT_ENV, "1K")
    with pytest.raises(EnumerationTooLarge, match=tables.MEMORY_LIMIT_ENV):
        tables.check_enumeration_size(2, 3)
    monkeypatch.setenv(tables.MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(InputError, match="is not a size"):
        tables.memory_budget()


def test_memory_budget_default_is_positive(monkeypatch):
    monkeypatch.delenv(tables.MEMORY_LIMIT_ENV, raising=False)
    assert tables.memory_budget() > 2**20
