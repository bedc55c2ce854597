"""Tests of toy_lm.bench: the tree suite's JSON shape and the consistency of its ratios.
(Speed targets live in the benchmark itself, never in timed unit tests.)"""

import json

import jax
import numpy as np
import pytest

from toy_lm import bench
from toy_lm.cli import main

KEYS = {"name", "sequences", "seconds", "compile_seconds", "floor_seconds", "ratio_to_floor",
        "ratio_to_reference"}


@pytest.fixture(autouse=True)
def keep_caches(monkeypatch):
    """The bench empties JAX's caches before measuring compile time; in the test process that
    would throw away every program the other test files compiled, so record the call instead."""
    calls = []
    monkeypatch.setattr(jax, "clear_caches", lambda: calls.append(1))
    return calls


def test_memory_floor_reads_and_writes():
    inputs = [np.ones(1000), np.ones((10, 4))]
    floor = bench.memory_floor(inputs, [((100,), np.float64), ((5, 4), np.bool_)], repeats=2)
    assert 0 < floor < 10


def test_output_shapes_cover_every_output():
    shapes = bench._output_shapes(3, 2)
    # H_0..H_T and determined_0..determined_T, then grad and equilibrium tables per level.
    assert sorted(s for s, _ in shapes) == sorted([(1,), (3,), (9,)] * 2 + [(1, 3), (3, 3)] * 2)


def test_bench_tree_row_is_consistent(keep_caches):
    row = bench.bench_tree(2, 4, repeats=1)
    assert keep_caches  # compile time is measured from empty caches
    assert KEYS <= set(row)
    assert row["sequences"] == 16
    assert all(row[k] > 0 for k in ("seconds", "compile_seconds", "floor_seconds"))
    assert row["ratio_to_floor"] == pytest.approx(row["seconds"] / row["floor_seconds"])
    assert row["ratio_to_reference"] == pytest.approx(row["reference_seconds"] / row["seconds"])


def test_cli_bench_json(capsys):
    status = main(["bench", "--suite", "tree", "--json", "--quick", "--repeats", "1"])
    assert status == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and len(rows) == 2
    for row in rows:
        assert KEYS <= set(row)
        assert isinstance(row["name"], str) and isinstance(row["sequences"], int)


def test_cli_bench_refuses_zero_repeats(capsys):
    assert main(["bench", "--repeats", "0", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--repeats 0" in err[0]
