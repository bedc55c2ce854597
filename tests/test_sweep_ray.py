"""experiments.sweep_ray: a Ray sweep writes the local backend's tables cell for cell, survives a
killed worker and a killed driver with one row per run, and refuses bad input in one line.

One local Ray instance (2 CPUs) serves the module: a Ray sweep started inside a running session
uses it (starting Ray costs about 10 s here). The tests without Ray need none.
"""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from small_runs import SMALL

from experiments import sweep
from experiments.cli.main import main
from experiments.config import with_overrides
from experiments.presets import preset
from experiments.results import TABLES


def small_grid(alone: bool = True, **overrides) -> list:
    """Four runs of one vectorized program (two batches on 2 CPUs) and, with ``alone``, one run
    alone in its program (the per-run tasks)."""
    base = with_overrides(preset("tiny"), {**SMALL, **overrides})
    grid = sweep.expand(base, {"seed": [0, 1], "align.lam": [0.1, 1.0]})
    lone = with_overrides(base, {"name": "alone", "align.objective": "augmentation"})
    return grid + [lone] if alone else grid


def _table(out, name):
    with open(os.path.join(out, f"{name}.csv")) as fh:
        return list(csv.DictReader(fh))


def check_one_row_per_run(out, configs):
    keys = [(r["run_id"], r["position"]) for r in _table(out, "results")]
    assert len(keys) == len(set(keys)), "a row is duplicated"
    expected = {(sweep.run_id(c), str(t)) for c in configs for t in range(1, c.world.length + 1)}
    assert set(keys) == expected, "a row is missing"
    assert not glob.glob(os.path.join(out, "**", ".partial-*"), recursive=True)


@pytest.fixture(scope="module")
def ray_instance(compile_cache):
    """A local Ray instance opened as a sweep opens one; the workers inherit the test cache."""
    ray = pytest.importorskip("ray")
    from experiments import sweep_ray

    with sweep_ray.ray_session(ray, None, 2):
        yield ray


def test_a_ray_sweep_writes_the_local_backends_tables_cell_for_cell(tmp_path, ray_instance):
    configs = small_grid()
    local, on_ray = str(tmp_path / "local"), str(tmp_path / "ray")
    lines = []
    sweep.run_sweep(configs, local, jobs=2, log=lines.append)
    lines.clear()
    sweep.run_sweep(configs, on_ray, jobs=2, log=lines.append, backend="ray")
    text = "\n".join(lines)
    assert "vectorized: 4 runs in 1 program(s), 2 batch(es)" in text, text
    assert "not vectorized: 1 run(s) alone" in text and "ETA" in text
    assert sorted(os.listdir(os.path.join(local, "runs"))) == sorted(
        os.listdir(os.path.join(on_ray, "runs"))
    )
    compared = 0
    for name in TABLES:
        rows_local, rows_ray = _table(local, name), _table(on_ray, name)
        assert len(rows_local) == len(rows_ray), name
        for a, b in zip(rows_local, rows_ray):
            assert a.keys() == b.keys(), name
            for column in a:
                if column != "seconds":  # a timing, not a result
                    assert a[column] == b[column], (name, column, a[column], b[column])
                    compared += 1
    assert compared > 1000
    check_one_row_per_run(on_ray, configs)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    found, stack = [], [root]
    while stack:
        kids = children.get(stack.pop(), [])
        found += kids
        stack += kids
    return found


def worker_running(task_name: str) -> int | None:
    """The pid of a Ray worker of this test process running a task named ``task_name`` (Ray sets
    a worker's process title to ``ray::<task name>`` while it runs one)."""
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                title = fh.read()
        except OSError:
            continue
        if title.startswith(f"ray::{task_name}".encode()):
            return pid
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers through /proc")
@pytest.mark.parametrize("ray_retries", [3, 0], ids=["ray-retries", "driver-resubmits"])
def test_a_killed_worker_is_rerun_and_every_run_has_one_row(
    tmp_path, ray_instance, monkeypatch, ray_retries
):
    from experiments import sweep_ray

    # with 0, Ray gives up on the task at once and the driver's re-submission has to do it
    monkeypatch.setattr(sweep_ray, "MAX_RETRIES", ray_retries)
    # a program of its own (align.steps), so that no worker has it compiled already and the
    # batch runs long enough to be caught; no per-run task (its program would compile too)
    configs = small_grid(alone=False, **{"align.steps": 7 + ray_retries})
    out, lines, errors = str(tmp_path / "out"), [], []

    def run():
        try:
            sweep.run_sweep(configs, out, jobs=2, log=lines.append, backend="ray")
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    killed, deadline = None, time.time() + 300
    while killed is None and thread.is_alive() and time.time() < deadline:
        killed = worker_running("harm-horizon-batch")
        time.sleep(0.01)
    assert killed is not None, "no batch task was seen running"
    os.kill(killed, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and not errors, (errors, lines)
    check_one_row_per_run(out, configs)
    resubmitted = [line for line in lines if "re-submitted" in line]
    if ray_retries == 0:
        assert resubmitted and "WorkerCrashedError" in resubmitted[0], lines
    else:
        assert not resubmitted, "Ray's own retry should have rerun the batch"


def test_an_interrupted_ray_sweep_resumes_with_the_missing_runs_only(tmp_path, ray_instance):
    configs = small_grid()  # the programs of the first test: compiled, in the disk cache
    out, lines = str(tmp_path / "out"), []

    def interrupt_after_first_batch(line):
        lines.append(line)
        if line.startswith("[1/"):
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(configs, out, jobs=2, log=interrupt_after_first_batch, backend="ray")
    done = len(glob.glob(os.path.join(out, "runs", "*.json")))
    assert 1 <= done < len(configs)
    lines.clear()
    sweep.run_sweep(configs, out, jobs=2, log=lines.append, backend="ray")
    assert f"{done} already done, {len(configs) - done} to run" in "\n".join(lines)
    check_one_row_per_run(out, configs)


def _sweep_file(tmp_path) -> str:
    spec = tmp_path / "sweep.toml"
    spec.write_text('preset = "tiny"\n[sweep]\ngrid = { "seed" = [0, 1] }\n')
    return str(spec)


@pytest.mark.parametrize(
    "address, message",
    [("127.0.0.1:1", "cannot reach a Ray cluster"), ("no-port-here", "is not host:port")],
)
def test_a_bad_address_is_one_line_and_status_2(tmp_path, capsys, address, message):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    status = main(
        [
            "sweep",
            _sweep_file(tmp_path),
            "--out",
            str(out),
            "--backend",
            "ray",
            "--address",
            address,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert not out.exists() or not os.listdir(out), "nothing is written before the cluster answers"


def test_address_without_the_ray_backend_is_refused(tmp_path, capsys):
    status = main(
        [
            "sweep",
            _sweep_file(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--address",
            "127.0.0.1:6379",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and "needs --backend ray" in err and len(err.splitlines()) == 1


WITHOUT_RAY = r"""
import importlib.abc, io, contextlib, json, sys

class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)",
                                      name=name)   # what a missing package raises
        return None

sys.meta_path.insert(0, NoRay())
import experiments.cli.experiment, experiments.sweep   # the local backend imports no Ray
from experiments.cli.main import main
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    status = main(["sweep", sys.argv[1], "--out", sys.argv[2], "--backend", "ray"])
print(json.dumps({"status": status, "err": err.getvalue()}))
"""


def test_the_ray_backend_without_ray_names_the_extra(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, _sweep_file(tmp_path), str(out)],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    err = result["err"].strip()
    assert result["status"] == 2 and 'pip install "harm-horizon[ray]"' in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not os.listdir(out)


def test_scratch_folders_of_dead_processes_are_removed(tmp_path):
    from experiments import sweep_ray_tasks

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f"harm-horizon-task-{dead.stdout.strip()}-abc"
    live = tmp_path / f"harm-horizon-task-{os.getpid()}-def"
    stale.mkdir()
    live.mkdir()
    new = sweep_ray_tasks.fresh_folder("harm-horizon-task-", str(tmp_path))
    assert not stale.exists() and live.exists()
    assert os.path.basename(new).startswith(f"harm-horizon-task-{os.getpid()}-")
