"""Tests of experiments.bench.main: the tree suite's JSON shape and the consistency of its ratios.
(Speed targets live in the benchmark itself, never in timed unit tests.)"""

import json
import weakref

import jax
import numpy as np
import pytest

from experiments.bench import main as bench
from experiments.cli.main import main
from toy_lm.engines import analysis

needs_numba = pytest.mark.skipif(
    not analysis.numba_available(), reason='numba not installed (pip install "harm-horizon[numba]")'
)

KEYS = {"name", "sequences", "seconds", "floor_seconds", "ratio_to_floor", "ratio_to_reference"}


@pytest.fixture(autouse=True)
def keep_caches(monkeypatch):
    """The bench empties JAX's caches before measuring compile time; in the test process that
    would throw away every program the other test files compiled, so record the call instead."""
    calls = []
    monkeypatch.setattr(jax, "clear_caches", lambda: calls.append(1))
    return calls


@pytest.fixture(autouse=True)
def numba_compiles(monkeypatch):
    """Compiling the Numba kernels from scratch takes about 45-60 s on 2 cores; the default suite
    records the call (test_compile_numba_kernels_from_scratch, marked slow, runs it for real)."""
    calls = []

    def fake():
        calls.append(1)
        return 1.0

    monkeypatch.setattr(analysis, "compile_numba_kernels", fake)
    return calls


@pytest.mark.parametrize("resident", [False, True])
def test_memory_floor_reads_and_writes(resident):
    inputs = [np.ones(1000), np.ones((10, 4))]
    floor = bench.memory_floor(
        inputs, [((100,), np.float64), ((5, 4), np.bool_)], repeats=2, resident=resident
    )
    assert 0 < floor < 10


def test_resident_floor_holds_every_output_at_once(monkeypatch):
    """The resident floor keeps each output alive until the last is written; the plain one lets
    each go before making the next (counted by the outputs alive when each one is made)."""
    alive = []
    real_empty = np.empty

    def empty(shape, dtype):
        alive.append(sum(ref() is not None for ref in made))
        out = real_empty(shape, dtype)
        made.append(weakref.ref(out))
        return out

    shapes = [((10,), np.float64)] * 4
    for resident, expected in ((False, [0, 0, 0, 0]), (True, [0, 1, 2, 3])):
        made, alive[:] = [], []
        monkeypatch.setattr(np, "empty", empty)
        bench.memory_floor([np.ones(3)], shapes, repeats=1, resident=resident)
        monkeypatch.setattr(np, "empty", real_empty)
        assert alive == expected


def test_output_shapes_cover_every_output():
    shapes = bench.output_shapes(3, 2)
    # H_0..H_T and determined_0..determined_T, then grad and equilibrium tables per level.
    assert sorted(s for s, _ in shapes) == sorted([(1,), (3,), (9,)] * 2 + [(1, 3), (3, 3)] * 2)


def test_interleaved_rounds_call_each_in_turn():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("floor", "xla", "numba")}
    system: dict = {}
    times = bench.interleaved_seconds(fns, 3, system)
    assert calls == ["floor", "xla", "numba"] * 4  # a warm-up round, then 3 timed ones
    assert {name: len(t) for name, t in times.items()} == {"floor": 3, "xla": 3, "numba": 3}
    assert {name: len(t) for name, t in system.items()} == {"floor": 3, "xla": 3, "numba": 3}
    assert all(t >= 0 for ts in [*times.values(), *system.values()] for t in ts)


def test_paired_ratio_is_the_median_of_the_rounds_ratios():
    # rounds' ratios 2, 3, 5: median 3, where median(times) / min(floors) would be 5
    assert bench.paired_ratio([2.0, 9.0, 5.0], [1.0, 3.0, 1.0]) == 3.0
    with pytest.raises(ValueError):
        bench.paired_ratio([1.0, 2.0], [1.0])


@pytest.mark.parametrize("numba", [False, pytest.param(True, marks=needs_numba)])
def test_bench_tree_row_is_consistent(keep_caches, numba_compiles, numba):
    row = bench.bench_tree(2, 4, repeats=1, compile_seconds=1.0, numba=numba)
    assert keep_caches  # XLA compile time is measured from empty caches
    assert row["backend"] == "xla" and row["xla_compile_seconds"] > 0  # the default backend
    assert KEYS <= set(row)
    assert row["sequences"] == 16
    assert all(row[k] > 0 for k in ("seconds", "floor_seconds"))
    assert row["ratio_to_floor"] == pytest.approx(row["seconds"] / row["floor_seconds"])
    # one round: the paired ratio is that round's time over that round's floor (the best one)
    assert row["paired_ratio_to_floor"] == pytest.approx(row["ratio_to_floor"])
    assert row["ratio_to_reference"] == pytest.approx(row["reference_seconds"] / row["seconds"])
    assert row["resident_floor_seconds"] > 0
    assert row["ratio_to_resident_floor"] == pytest.approx(
        row["seconds"] / row["resident_floor_seconds"]
    )
    for key in ("floor_system_seconds", "resident_floor_system_seconds", "system_seconds"):
        assert row[key] >= 0
    assert not numba_compiles  # Numba's compile: by the suite, on request
    assert ("numba_seconds" in row) == ("compile_seconds" in row) == numba
    if numba:
        assert row["compile_seconds"] == 1.0 and row["numba_seconds"] > 0
        assert row["numba_ratio_to_floor"] == pytest.approx(
            row["numba_seconds"] / row["floor_seconds"]
        )
        assert row["numba_paired_ratio_to_floor"] == pytest.approx(row["numba_ratio_to_floor"])
        assert row["numba_ratio_to_resident_floor"] == pytest.approx(
            row["numba_seconds"] / row["resident_floor_seconds"]
        )
        assert row["numba_system_seconds"] >= 0


@pytest.mark.parametrize("compile_flag", [[], ["--compile"]])
def test_cli_bench_json(capsys, numba_compiles, compile_flag):
    status = main(
        ["bench", "--suite", "tree", "--json", "--quick", "--repeats", "1"] + compile_flag
    )
    assert status == 0
    # From scratch only on request (and with numba installed), and then once for every size (the
    # kernels do not depend on V or T); otherwise the kernels come from the on-disk cache.
    measured = bool(compile_flag) and analysis.numba_available()
    assert len(numba_compiles) == (1 if measured else 0)
    rows = json.loads(capsys.readouterr().out)
    # the two quick sizes, and the no-shortcut case (harm decided at tau = T) of the second
    assert isinstance(rows, list) and len(rows) == 3
    assert [row["tau"] for row in rows] == [3, 6, 12]
    for row in rows:
        assert KEYS <= set(row) and ("compile_seconds" in row) == measured
        assert ("numba_seconds" in row) == analysis.numba_available()
        assert isinstance(row["name"], str) and isinstance(row["sequences"], int)


def test_cli_bench_compile_is_for_the_tree_suite(capsys):
    assert main(["bench", "--suite", "mc", "--compile"]) == 2
    assert "--compile applies to --suite tree only" in capsys.readouterr().err


def test_cli_bench_refuses_zero_repeats(capsys):
    assert main(["bench", "--repeats", "0", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--repeats 0" in err[0]


@needs_numba
@pytest.mark.slow
def test_compile_numba_kernels_from_scratch(monkeypatch):
    """The real from-scratch compile (about 45-60 s): it takes time and leaves working kernels."""
    monkeypatch.undo()
    seconds = analysis.compile_numba_kernels()
    assert seconds > 0
    tables = [np.zeros((3**l, 3)) for l in range(3)]
    assert analysis.analyze_tree(
        tables, np.repeat([0.0, 1.0, 1.0], 9), backend="numba"
    ).expected_harm == (pytest.approx(2 / 3, abs=1e-15))


def test_the_table_shows_rows_with_different_columns(capsys, monkeypatch):
    """A suite's rows may differ (the sweep suite's Ray row has columns of its own)."""
    rows = [{"name": "first", "seconds": 1.5}, {"name": "second", "ray_seconds": 2.5}]
    monkeypatch.setitem(bench.SUITES, "mc", lambda repeats, quick, progress: rows)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["bench", "--suite", "mc"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("seconds", "ray_seconds", "first", "second", "1.5", "2.5"))
