"""What a Ray sweep's tasks run on the workers (:mod:`experiments.sweep_ray` submits them).

Each task works in a scratch folder of its own node (:func:`fresh_folder`), holding the base
models the driver shipped, and returns what it made (result dicts, base model files) instead of
writing the sweep's output folder: only the driver writes there. The computations are the local
backend's: :func:`experiments.batch_runs.train_bases` and :func:`~experiments.batch_runs.run_batch`
for the vectorized path, :func:`experiments.sweep.cache_base` and
:func:`experiments.train.train_and_evaluate` for the runs that do not vectorize; every task first
sets up its process as a local worker is (:func:`experiments.workers.init_worker`: one XLA
thread, float64, the compilation cache).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time

from experiments import batch_runs, batch_sweep
from experiments.config import config_from_dict
from experiments.sweep import cache_base
from experiments.train import train_and_evaluate
from experiments.workers import init_worker
from toy_lm.errors import HarmHorizonError

__all__ = ["base_task", "bases_task", "batch_task", "fresh_folder", "run_task"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def fresh_folder(prefix: str, root: str) -> str:
    """A new folder ``root/<prefix><pid>-XXXXXXXX`` of this process, after removing the folders
    of processes that died (a SIGKILLed worker or driver cannot remove its own)."""
    for path in glob.glob(os.path.join(root, f"{prefix}*-*")):
        pid = os.path.basename(path)[len(prefix) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root)


@contextlib.contextmanager
def _scratch(bases: dict[str, bytes]):
    """A scratch output folder holding the base models ``bases`` (file name -> bytes)."""
    init_worker()
    folder = fresh_folder("harm-horizon-task-", tempfile.gettempdir())
    try:
        os.makedirs(os.path.join(folder, "bases"))
        for name, data in bases.items():
            with open(os.path.join(folder, "bases", name), "wb") as fh:
                fh.write(data)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _new_bases(folder: str, shipped: dict[str, bytes]) -> dict[str, bytes]:
    found = {}
    for name in sorted(os.listdir(os.path.join(folder, "bases"))):
        if name.endswith(".npz") and name not in shipped:
            with open(os.path.join(folder, "bases", name), "rb") as fh:
                found[name] = fh.read()
    return found


def bases_task(configs: list[dict]):
    """Train the base models of one SFT program; returns ``(report, {file name: bytes})``."""
    with _scratch({}) as folder:
        report = batch_runs.train_bases([config_from_dict(c) for c in configs], folder)
        return report, _new_bases(folder, {})


def batch_task(batch: batch_sweep.Batch, budget: int, bases: dict[str, bytes]):
    """Run one vectorized batch; returns ``(report, result dicts)``."""
    with _scratch(bases) as folder:
        report = batch_runs.run_batch(
            [config_from_dict(c) for c in batch.configs], batch.size, folder, budget
        )
        runs = os.path.join(folder, "runs")
        results = []
        for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
            if name.endswith(".json") and not name.startswith("."):
                with open(os.path.join(runs, name)) as fh:
                    results.append(json.load(fh))
        return report, results


def base_task(config: dict) -> dict[str, bytes]:
    """Train one base model of the per-run path; returns ``{file name: bytes}``."""
    with _scratch({}) as folder:
        cache_base((config, folder))
        return _new_bases(folder, {})


def run_task(config: dict, bases: dict[str, bytes]):
    """One run of the per-run path; returns ``(seconds, error or None, result or None)``."""
    start = time.perf_counter()
    with _scratch(bases) as folder:
        try:
            result = train_and_evaluate(config_from_dict(config), folder)
        except HarmHorizonError as err:
            return time.perf_counter() - start, str(err), None
        return time.perf_counter() - start, None, result
