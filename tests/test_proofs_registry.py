"""Tests of proofs_check.registry: every statement registered, with planted errors; selection."""

import pytest

from proofs_check import PLANTS, all_checks, select
from toy_lm.errors import InputError

STATEMENTS = (
    "T1",
    "T2",
    "T3",
    "T4",
    "T5",
    "T6",
    "T7a",
    "T7b",
    "T7c",
    "T7d",
    "T7e",
    "T8",
    "T9",
    "T9b",
    "T10",
    "T11",
)


def test_every_statement_of_theory_section_3_is_a_check_with_planted_errors():
    ids = [c.id for c in all_checks()]
    for statement in STATEMENTS:
        assert statement in ids
    for check in all_checks():
        assert check.plants and all(p in PLANTS for p in check.plants)
        assert check.statement and "\n" not in check.statement


def test_select_by_statement():
    assert [c.id for c in select(["T1"])] == ["T1", "T1-orth", "T1-sum", "T1-var"]
    assert [c.id for c in select(["t7"])] == ["T7a", "T7b", "T7c", "T7d", "T7e"]
    assert [c.id for c in select(["T9"])] == ["T9", "T9-train", "T9b"]
    assert [c.id for c in select(["T10", "T3-total"])] == ["T3-total", "T10"]
    assert len(select(None)) == len(all_checks())
    with pytest.raises(InputError, match="T99"):
        select(["T99"])


def test_public_api_is_importable():
    import proofs_check
    import proofs_check.strategies as strategies

    for name in proofs_check.__all__:
        assert getattr(proofs_check, name) is not None
    for name in ("vocab_sizes", "lengths", "policies", "harms", "instances"):
        assert callable(getattr(strategies, name))
