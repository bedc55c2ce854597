"""experiments.vectorized / batch_runs / batch_sweep: a vectorized sweep writes the per-run path's
tables (every column of every table, curves included, to rounding), and resumes after a kill."""

import csv
import glob
import math
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
import pytest
from small_runs import SMALL

from experiments import batch_runs, batch_sweep, sweep
from experiments.config import OBJECTIVES, config_from_dict, with_overrides
from experiments.presets import preset
from experiments.results import TABLES
from experiments.vectorized import RUN_CHUNK, chunk_size, chunked_size, group_key, not_vectorizable


def draw_configs(seed: int, objective: str, count: int) -> list:
    """``count`` configurations of one program, every mapped setting drawn at random."""
    rng = np.random.default_rng(seed)
    start = with_overrides(preset("tiny"), {**SMALL, "align.objective": objective})
    configs = []
    for index in range(count):
        overrides = {
            "name": f"draw-{index}",
            "seed": int(rng.integers(0, 3)),
            "policy.init_scale": float(rng.uniform(0.05, 0.5)),
            "base.learning_rate": float(rng.uniform(0.05, 0.2)),
            "align.lam": float(rng.uniform(0.1, 3.0)),
            "align.beta": float(rng.uniform(0.05, 1)),
            "align.mu": float(rng.uniform(0.0, 2.0)),
            "align.learning_rate": float(rng.uniform(0.2, 1.5)),
            "align.utility_weight": float(rng.uniform(0.0, 0.9)),
            "attack.learning_rate": float(rng.uniform(0.2, 1.5)),
            "attack.beta_first": float(rng.uniform(0.1, 2.0)),
        }
        if objective == "reinforce":
            overrides["align.baseline"] = ("none", "value", "mean")[index % 3]
        configs.append(with_overrides(start, overrides))
    return configs


def test_groups_and_batches():
    configs = draw_configs(0, "rlhf", 5) + draw_configs(0, "dpo", 2)
    groups, single, reasons = batch_sweep.split_vectorizable(configs)
    assert [len(g) for g in groups] == [5, 2] and not single and not reasons
    assert len({group_key(c) for c in groups[0]}) == 1
    batches = batch_sweep.plan_batches(groups, jobs=2, batch_size=2, budget=10**12)
    # 5 runs in batches of at most 2: three batches of 2 (the last padded); 2 runs: two of 1
    assert [(b.group, len(b.configs), b.size) for b in batches] == [
        (0, 2, 2),
        (0, 2, 2),
        (0, 1, 2),
        (1, 1, 1),
        (1, 1, 1),
    ]
    need = batch_sweep.estimated_run_bytes(configs[0])
    small = batch_sweep.plan_batches(groups[:1], jobs=1, budget=2 * need)
    assert max(b.size for b in small) == 2  # memory caps the batch
    transformer = with_overrides(configs[0], {"policy.kind": "transformer"})
    assert "not vectorized" in not_vectorizable(transformer)
    groups, single, reasons = batch_sweep.split_vectorizable([transformer, *configs[:2]])
    assert single == [transformer] and len(groups) == 1 and len(reasons) == 1
    groups, single, reasons = batch_sweep.split_vectorizable(configs[:1])  # alone: per run
    assert single == configs[:1] and not groups and "alone" in reasons[0]


def test_bad_batch_size_is_one_line_and_status_2(tmp_path, capsys):
    from experiments.cli.main import main

    assert main(["sweep", "tiny", "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size=0 must be at least 1" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "o")


def _table(out, name):
    path = os.path.join(out, f"{name}.csv")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def tolerance(configs) -> float:
    """eps(float64) x (every optimizer step of a run: base, alignment, attacks) x the terms of the
    largest exact sum (the ``2 V**T`` responses of both prompts): rounding that differs between
    the batched and the single program, carried along every step."""
    eps = np.finfo(np.float64).eps
    return max(
        eps
        * (c.base.steps + c.align.steps + 2 * c.attack.steps)
        * 2
        * len(c.world.vocab) ** c.world.length
        for c in configs
    )


def assert_same_tables(reference, vectorized, tol):
    compared = 0
    for name in TABLES:
        ref, vec = _table(reference, name), _table(vectorized, name)
        assert len(ref) == len(vec), f"{name}: {len(ref)} rows per run, {len(vec)} vectorized"
        for row_ref, row_vec in zip(ref, vec):
            assert row_ref.keys() == row_vec.keys()
            for column, a in row_ref.items():
                if column == "seconds":  # a timing, not a result
                    continue
                b = row_vec[column]
                if a == b:  # identical text (a run id like "517802e03592" parses as inf)
                    compared += 1
                    continue
                try:
                    x, y = float(a), float(b)
                except ValueError:
                    assert a == b, (name, column)
                    continue
                if math.isnan(x) or math.isnan(y):
                    assert math.isnan(x) and math.isnan(y), (name, column, a, b)
                    continue
                assert abs(x - y) <= tol * max(1.0, abs(x)), (name, column, a, b, tol)
                compared += 1
    assert compared > 0
    return compared


def _both_paths(tmp_path, configs):
    reference, vectorized = str(tmp_path / "per-run"), str(tmp_path / "vectorized")
    lines = []
    sweep.run_sweep(configs, reference, jobs=1, per_run=True, log=lines.append)
    # batches of 2: the second batch is padded, and its runs may need fewer base models
    sweep.run_sweep(configs, vectorized, jobs=1, log=lines.append, batch_size=2)
    assert any(line.startswith("vectorized:") for line in lines)
    return reference, vectorized


def test_vectorized_sweep_equals_the_per_run_path(tmp_path, compile_cache):
    configs = draw_configs(1, "rlhf", 3)
    reference, vectorized = _both_paths(tmp_path, configs)
    assert assert_same_tables(reference, vectorized, tolerance(configs)) > 100


@pytest.mark.parametrize("kind", ["tabular", "markov"])
@pytest.mark.parametrize("steps", [7, 8])
def test_gradient_map_every_few_steps_equals_the_per_run_path(
    tmp_path, compile_cache, monkeypatch, steps, kind
):
    """``grad_map_every = 3``. Markov policy (shared weights): groups of a recorded step and two
    plain ones, then a shorter last group (one recorded step at 7 steps; a recorded and a plain
    one at 8). Tabular policy (separable levels): one step body that records every step, the
    unrecorded ones NaN. A sampled objective, so that every step's key (folded from its index)
    matters."""
    configs = [
        with_overrides(c, {"align.grad_map_every": 3, "align.steps": steps, "policy.kind": kind})
        for c in draw_configs(3, "reinforce", 2)
    ]
    reference, vectorized = _both_paths(tmp_path, configs)
    assert assert_same_tables(reference, vectorized, tolerance(configs)) > 50
    steps_seen = sorted({int(row["step"]) for row in _table(vectorized, "training")})
    assert steps_seen == list(range(0, steps, 3))
    if steps == 8:  # the program's own output: norms at the recorded steps, NaN at the others
        seen = []
        real = batch_runs.assemble

        def spy(cfg, world, base, arrays, seconds):
            seen.append(arrays)
            return real(cfg, world, base, arrays, seconds)

        monkeypatch.setattr(batch_runs, "assemble", spy)
        batch_runs.run_batch(configs, len(configs), vectorized, 10**12)  # bases cached above
        recorded = np.arange(steps) % 3 == 0
        assert len(seen) == len(configs)
        for arrays in seen:
            norms = np.asarray(arrays["grad_norms"])
            assert np.isfinite(norms[recorded]).all() and np.isnan(norms[~recorded]).all()


def test_chunked_batch_sizes():
    sizes = range(1, 3 * RUN_CHUNK + 2)
    for size in sizes:
        chunk, padded = chunk_size(size), chunked_size(size)
        assert 1 <= chunk <= min(size, RUN_CHUNK)
        assert padded % chunk == 0 and size <= padded < size + chunk, (size, chunk, padded)
    assert chunked_size(RUN_CHUNK + 1) == 2 * RUN_CHUNK  # one run past a chunk: a padded one


def test_several_chunks_equal_the_per_run_path(tmp_path, compile_cache):
    """One batch of RUN_CHUNK + 2 runs: two ``lax.map`` chunks, the second padded."""
    configs = draw_configs(5, "rlhf", RUN_CHUNK + 2)
    reference, vectorized = str(tmp_path / "per-run"), str(tmp_path / "vectorized")
    lines = []
    sweep.run_sweep(configs, reference, jobs=1, per_run=True, log=lines.append)
    sweep.run_sweep(configs, vectorized, jobs=1, log=lines.append, batch_size=len(configs))
    assert any(
        line.startswith(f"vectorized: {len(configs)} runs in 1 program(s), 1 batch(es)")
        for line in lines
    ), lines
    assert assert_same_tables(reference, vectorized, tolerance(configs)) > 100


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective",
    [
        "reinforce",
        "dpo",
        "dpo_sampled",
        "sft_refusal",
        "augmentation",
        "recovery_prefill",
        "recovery_dense",
        "none",
    ],
)
def test_every_objective_vectorizes_to_the_same_tables(tmp_path, compile_cache, objective):
    configs = draw_configs(2, objective, 3)
    reference, vectorized = _both_paths(tmp_path, configs)
    assert_same_tables(reference, vectorized, tolerance(configs))


def test_a_planted_difference_is_caught(tmp_path):
    """The comparison can fail: a result changed in its 12th digit is reported."""
    configs = draw_configs(1, "rlhf", 1)
    out = str(tmp_path / "a")
    sweep.run_sweep(configs, out, jobs=1, log=lambda line: None)
    rows = _table(out, "results")
    other = str(tmp_path / "b")
    os.makedirs(other)
    rows[0]["expected_harm"] = str(float(rows[0]["expected_harm"]) * (1 + 1e-11))
    with open(os.path.join(other, "results.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for name in TABLES[1:]:
        for ext in (".csv",):
            src = os.path.join(out, name + ext)
            if os.path.exists(src):
                with open(src) as fh, open(os.path.join(other, name + ext), "w") as dst:
                    dst.write(fh.read())
    with pytest.raises(AssertionError, match="expected_harm"):
        assert_same_tables(out, other, tolerance(configs))


#: Runs in the killed sweep's grid.
RUNS_TO_KILL = 12


def test_vectorized_sweep_killed_and_restarted_completes_the_missing_runs(tmp_path, compile_cache):
    """Killed once its first batch is on disk: a rerun runs only the missing ones. Once compiled,
    a batch of one run takes milliseconds, so the grid has 12 runs: the kill must land after the
    first and before the last (the CI run saw a kill after all 3 runs of a smaller grid)."""
    lams = [0.1 * (i + 1) for i in range(RUNS_TO_KILL)]
    spec = tmp_path / "grid.toml"
    spec.write_text(
        'preset = "tiny"\n[world]\nlength = 2\nnum_harmful = 1\n[base]\nsteps = 30\n'
        "[align]\nsteps = 6\n[attack]\nsteps = 2\n"
        f'[sweep]\ngrid = {{ "align.lam" = {lams}, "seed" = [0] }}\n'
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "experiments.cli.main",
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--jobs",
        "1",
        "--batch-size",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runs = os.path.join(out, "runs", "*.json")
    deadline = time.time() + 600
    while not glob.glob(runs) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker
    proc.wait()
    done_before = len(glob.glob(runs))
    total = RUNS_TO_KILL
    assert 1 <= done_before < total, (
        "the kill should land after the first batch and before the last"
    )
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"{done_before} already done, {total - done_before} to run" in again.stderr
    assert "ETA" in again.stderr
    if total - done_before >= 2:  # the rest is still a vectorized grid: it runs in batches
        assert "batch of 1 runs" in again.stderr
    else:  # a single missing run has nothing to map over: the per-run path takes it
        assert "1 run(s) alone in their program" in again.stderr
    configs = sweep.load_sweep(str(spec))
    rows = _table(str(out), "results")
    keys = [(r["run_id"], r["position"]) for r in rows]
    assert len(keys) == len(set(keys)) == total * 2
    assert {k[0] for k in keys} == {sweep.run_id(c) for c in configs}
    assert not glob.glob(os.path.join(out, "**", ".partial-*"), recursive=True)


def test_two_workers_split_the_stages_of_a_program(tmp_path, monkeypatch):
    """Two callers of :func:`experiments.batch_runs.compile_stages` on one program (two workers
    of a sweep, one core each) start on different stages, largest first, compile every stage
    once between them, take turns at each, and both end with every stage, in stage order."""
    import threading
    import time

    class Stage(NamedTuple):
        name: str

    calls, lock, started = [], threading.Lock(), threading.Event()

    class Lowered:
        def __init__(self, worker, name, size, seconds):
            self.worker, self.name, self.size, self.seconds = worker, name, size, seconds

        def as_text(self):
            return "x" * self.size

        def compile(self, options):
            start = time.monotonic()
            if self.name == "boom":
                raise RuntimeError("planted compile error")
            if (self.worker, self.name) == ("w0", "measure"):
                started.set()  # w1 starts once w0 holds the largest stage
            time.sleep(self.seconds)
            with lock:
                calls.append((self.worker, self.name, start, time.monotonic()))
            return f"compiled {self.name}"

    sizes = {"align": (300, 0.3), "measure": (400, 0.4), "attack:a": (100, 0.1)}
    stages = [Stage(n) for n in sizes]
    monkeypatch.setattr(batch_runs, "usable_cores", lambda: 1)
    previous = getattr(jax.config, "jax_compilation_cache_dir", None)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    results = {}
    try:

        def worker(name):
            lowered = [Lowered(name, s.name, *sizes[s.name]) for s in stages]
            results[name] = batch_runs.compile_stages("program", stages, lowered, None)

        threads = [threading.Thread(target=worker, args=(n,)) for n in ("w0", "w1")]
        threads[0].start()
        assert started.wait(timeout=30)
        threads[1].start()
        for thread in threads:
            thread.join(timeout=30)
        # a compile that fails is raised, and the other stages are left alone
        boom = [Lowered("w2", "boom", 500, 0.0), Lowered("w2", "align", 1, 0.0)]
        with pytest.raises(RuntimeError, match="planted compile error"):
            batch_runs.compile_stages("other", [Stage("boom"), Stage("align")], boom, None)
        assert not [c for c in calls if c[0] == "w2"]
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
    expected = [f"compiled {s.name}" for s in stages]
    assert results == {"w0": expected, "w1": expected}
    first = {w: min((c for c in calls if c[0] == w), key=lambda c: c[2])[1] for w in ("w0", "w1")}
    assert first == {"w0": "measure", "w1": "align"}  # largest first, and not the same one
    for stage in sizes:  # the second compile of a stage (a load) starts after the first ends
        spans = sorted((c[2], c[3]) for c in calls if c[1] == stage)
        assert len(spans) == 2 and spans[1][0] >= spans[0][1], (stage, spans)


def _prepared_then_run(tmp_path, configs):
    """The per-run path's tables, and those of one batch run by the program
    :func:`experiments.batch_runs.prepare_program` compiled before the base models existed."""
    reference, vectorized = str(tmp_path / "per-run"), str(tmp_path / "vectorized")
    sweep.run_sweep(configs, reference, jobs=1, per_run=True, log=lambda line: None)
    prepared = batch_runs.prepare_program(configs, len(configs), 10**12)
    assert prepared.runs == 1 and prepared.compile_seconds > 0 and not prepared.failures
    for group in batch_sweep.missing_base_groups(configs, vectorized):
        batch_runs.train_bases([config_from_dict(c) for c in group], vectorized)
    ran = batch_runs.run_batch(configs, len(configs), vectorized, 10**12)
    assert ran.compile_seconds == 0.0 and not ran.failures  # the prepared program
    sweep.run_sweep(configs, vectorized, jobs=1, log=lambda line: None)  # done: the tables
    return reference, vectorized


def test_a_program_compiled_before_its_base_models_is_the_one_their_batch_runs(
    tmp_path, compile_cache
):
    """A sweep's idle worker compiles a group's program while another trains the base models,
    from untrained stand-ins of the right shapes (:func:`experiments.batch_runs.prepare_program`).
    The batch then runs that very program (no compile) and writes the per-run path's tables: no
    value of a stand-in is part of the program. ``recovery_prefill``: its data come from the base
    model."""
    configs = [
        with_overrides(c, {"align.steps": 5})  # a program of its own (no other test's)
        for c in draw_configs(8, "recovery_prefill", 2)
    ]
    reference, vectorized = _prepared_then_run(tmp_path, configs)
    assert assert_same_tables(reference, vectorized, tolerance(configs)) > 50


@pytest.mark.slow
@pytest.mark.parametrize("objective", [o for o in OBJECTIVES if o != "recovery_prefill"])
def test_every_objective_runs_the_program_prepared_before_its_base_models(
    tmp_path, compile_cache, objective
):
    """As above, for every other objective."""
    configs = [with_overrides(c, {"align.steps": 4}) for c in draw_configs(10, objective, 2)]
    reference, vectorized = _prepared_then_run(tmp_path, configs)
    assert_same_tables(reference, vectorized, tolerance(configs))


def test_a_sweep_compiles_while_its_base_models_train(tmp_path, compile_cache):
    """With two workers and one base-model program, the second worker compiles the run program
    meanwhile, and says so."""
    configs = [with_overrides(c, {"align.steps": 6}) for c in draw_configs(9, "rlhf", 4)]
    lines = []
    sweep.run_sweep(configs, str(tmp_path / "out"), jobs=2, log=lines.append)
    assert any(line.endswith("; compiling 1 run program(s) meanwhile") for line in lines), lines
    assert sum(line.startswith("run program ready in ") for line in lines) == 1, lines
    assert len(_table(str(tmp_path / "out"), "results")) == 4 * configs[0].world.length
