"""experiments.sweep: expansion, and resuming after a kill or a Ctrl-C with no row lost or doubled."""

import csv
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import sweep
from experiments.config import ConfigError
from experiments.presets import preset

SWEEP_TOML = """preset = "tiny"
[align]
steps = 8
[attack]
steps = 2
objective = "sft"
[sweep]
grid = { "align.objective" = ["rlhf", "augmentation", "recovery_prefill"] }
"""


def test_expand_grid_and_runs():
    base = preset("tiny")
    configs = sweep.expand(base, {"align.objective": ["rlhf", "dpo"], "seed": [0, 1]})
    assert len(configs) == 4 and len({sweep.run_id(c) for c in configs}) == 4
    assert configs[3].align.objective == "dpo" and configs[3].seed == 1
    assert "objective=dpo,seed=1" in configs[3].name
    runs = sweep.expand(base, {"seed": [0, 0]}, [{"align.lam": 1.0}, {"align.lam": 2.0}])
    assert [c.align.lam for c in runs] == [1.0, 2.0]  # the duplicate seed is kept once
    with pytest.raises(ConfigError, match="non-empty list"):
        sweep.expand(base, {"seed": []})


def test_load_sweep_from_names_and_files(tmp_path):
    assert len(sweep.load_sweep("quick")) == 4
    assert len(sweep.load_sweep("tiny")) == 1
    path = tmp_path / "s.toml"
    path.write_text(SWEEP_TOML)
    configs = sweep.load_sweep(str(path))
    assert [c.align.objective for c in configs] == ["rlhf", "augmentation", "recovery_prefill"]
    assert all(c.align.steps == 8 for c in configs)
    path.write_text('preset = "tiny"\n[sweep]\nlist = 3\n')
    with pytest.raises(ConfigError, match="unknown sweep setting 'list'"):
        sweep.load_sweep(str(path))
    path.write_text('preset = "tiny"\n[sweep]\ngrid = { "align.objective" = ["nope"] }\n')
    with pytest.raises(ConfigError, match="unknown align.objective 'nope'"):
        sweep.load_sweep(str(path))


def _rows(out):
    with open(os.path.join(out, "results.csv")) as fh:
        return list(csv.DictReader(fh))


def _check_complete(out, configs):
    rows = _rows(out)
    keys = [(r["run_id"], r["position"]) for r in rows]
    assert len(keys) == len(set(keys)), "a row is duplicated"
    expected = {(sweep.run_id(c), str(t)) for c in configs for t in range(1, c.world.length + 1)}
    assert set(keys) == expected, "a row is missing"
    assert not glob.glob(os.path.join(out, "**", ".partial-*"), recursive=True)


def test_sweep_killed_mid_way_and_restarted_ends_with_one_row_per_run(tmp_path, compile_cache):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SWEEP_TOML)
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
    ]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    runs = os.path.join(out, "runs", "*.json")
    while not glob.glob(runs) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, like a kill -9 or power cut
    proc.wait()
    done_before = len(glob.glob(runs))
    assert 1 <= done_before < 3, "the kill should land after the first run and before the last"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"{done_before} already done, {3 - done_before} to run" in again.stderr
    assert "ETA" in again.stderr
    configs = sweep.load_sweep(str(spec))
    _check_complete(str(out), configs)
    # a third start has nothing left to do and leaves the tables as they were
    before = _rows(str(out))
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "3 already done, 0 to run" in third.stderr
    assert _rows(str(out)) == before


def test_ctrl_c_then_restart(tmp_path, compile_cache):
    configs = sweep.expand(
        preset("tiny"),
        {"align.objective": ["rlhf", "augmentation"], "align.steps": [8], "attack.steps": [0]},
    )
    out = str(tmp_path / "out")
    lines = []

    def interrupt_after_first_run(line):
        lines.append(line)
        if line.startswith("[1/"):
            raise KeyboardInterrupt  # what Ctrl-C raises in the coordinating process

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(configs, out, jobs=1, log=interrupt_after_first_run)
    assert len(glob.glob(os.path.join(out, "runs", "*.json"))) == 1
    results = sweep.run_sweep(configs, out, jobs=2, log=lines.append)
    assert "1 already done, 1 to run" in " ".join(lines)
    assert [r["run_id"] for r in results] == [sweep.run_id(c) for c in configs]
    _check_complete(out, configs)


def test_bad_jobs_and_empty_sweeps(tmp_path):
    with pytest.raises(ConfigError, match="at least 1"):
        sweep.run_sweep([preset("tiny")], str(tmp_path), jobs=0)
    with pytest.raises(ConfigError, match="no runs"):
        sweep.run_sweep([], str(tmp_path))
