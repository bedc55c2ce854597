"""The markov, mc and gpu bench suites: quick runs through the CLI, in the tree suite's shape."""

import json

import jax
import numpy as np

from experiments.bench import gpu as bench_gpu
from experiments.bench.scale import exact_per_position_kl, largest_tree_length
from experiments.cli.main import main


def run_suite(capsys, suite):
    assert main(["bench", "--suite", suite, "--quick", "--json", "--repeats", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    for row in rows:
        assert isinstance(row["name"], str)
    return rows


def test_markov_suite(capsys):
    rows = run_suite(capsys, "markov")
    sizes = [r for r in rows if "vs tree" not in r["name"]]
    assert [r["length"] for r in sizes] == [64, 256]
    for r in sizes:
        assert r["seconds"] > 0 and r["first_call_seconds"] >= r["seconds"] * 0.5
        assert r["compile_seconds"] > 0
    versus = rows[-1]
    assert versus["ratio_tree_to_dp"] > 0
    assert versus["max_abs_error"] <= 16 * (versus["length"] + 1) * 8**2 * np.finfo(float).eps


def test_mc_suite(capsys):
    rows = run_suite(capsys, "mc")
    assert [r["sequences"] for r in rows] == [4**6]
    for r in rows:
        assert r["reached_target"] and r["max_rel_error"] <= 0.01
        assert r["ratio_mc_to_exact"] == r["seconds"] / r["exact_seconds"] or r["repeats"] > 1


def test_gpu_suite_skips_cleanly_without_a_gpu(capsys):
    if bench_gpu.gpu_device() is not None:  # pragma: no cover - only on a GPU machine
        return
    assert main(["bench", "--suite", "gpu", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert rows == [{"name": "gpu", "skipped": True, "reason": bench_gpu.SKIP_REASON}]
    assert "could not be measured" in captured.err


def test_gpu_rows_run_on_any_device():
    """The gpu suite's code, exercised on the CPU at small sizes (same kernels and checks)."""
    device = jax.devices()[0]
    rows = bench_gpu.gpu_rows(
        device,
        1,
        lambda msg: None,
        sizes={np.float32: (2, 8)},
        check_size=(3, 5),
        dtypes=(np.float32,),
    )
    assert rows[0]["dtype"] == "float32" and rows[0]["sequences"] == 2**8
    assert rows[0]["seconds"] > 0 and rows[0]["compile_seconds"] > 0
    assert rows[0]["ratio_to_floor"] > 0
    assert rows[1]["within_tolerance"]


def test_sizes_and_exact_kl():
    assert bench_gpu.largest_size(141e9, 4) == (2, 30)
    assert largest_tree_length(4, 6) == 6
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(2**l, 2)) for l in range(3)]
    ref = [rng.normal(size=(2**l, 2)) for l in range(3)]
    from toy_lm.engines.tree import per_position_kl

    np.testing.assert_allclose(
        exact_per_position_kl(tables, ref), per_position_kl(tables, ref), rtol=0, atol=1e-14
    )
