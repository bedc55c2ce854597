"""Sweeps: many runs, in parallel processes, resumable, with progress and an estimated time left.

A sweep is a list of :class:`~experiments.config.RunConfig`: a base configuration, optionally a
list of ``runs`` (dotted overrides each), crossed with a ``grid`` (``{"align.objective": [...],
"seed": [0, 1]}``). In a ``.toml`` file::

    preset = "quick"
    [align]
    steps = 100
    [sweep]
    grid = { "align.objective" = ["rlhf", "dpo"], "seed" = [0, 1] }

Resuming. Each run writes its result to ``OUT/runs/<run id>.json`` (the hash of its configuration)
through a temporary file and a rename, so a file exists only when the run finished. Started again
with the same command after a Ctrl-C or a kill, a sweep runs only the configurations without a
result file, then assembles the tables from the files: no row lost, none duplicated. Runs are
deterministic in their seed, so a rerun gives the same numbers. A result file that does not
read back as this run's result (truncated, emptied, replaced) counts as missing and is run again.

Safety. One sweep at a time per folder: ``OUT/.sweep.lock`` (an ``flock``, released by the kernel
when the process ends, however it ends) makes a second sweep in the same folder refuse at once.
Workers die with their parent (``PR_SET_PDEATHSIG`` on Linux, and a parent-pid watchdog
everywhere), so a killed sweep leaves no worker behind to write late results.

Backends. ``backend="local"`` (the default) runs the batches in a pool of worker processes of this
machine; ``backend="ray"`` runs them as Ray tasks (:mod:`experiments.sweep_ray`) whose results
come back to this process, which writes them: the same files, tables, resuming and progress lines.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import time
from collections.abc import Callable

from experiments import results as results_mod
from experiments.config import (
    OBJECTIVES,
    RunConfig,
    check_run_memory,
    config_from_dict,
    config_to_dict,
    with_overrides,
)
from experiments.presets import PRESETS, config_from_source, read_config_file
from experiments.train import (
    base_cache_path,
    get_base,
    result_path,
    run_id,
    train_and_evaluate,
    write_json_atomic,
)
from experiments.workers import WORKER_XLA_FLAGS, worker_pool
from toy_lm.cli_output import say
from toy_lm.errors import ConfigError, HarmHorizonError, InputError
from toy_lm.outputs import check_output_folder

__all__ = [
    "SWEEPS",
    "cache_base",
    "clean_partial_files",
    "expand",
    "finished",
    "folder_lock",
    "format_seconds",
    "load_sweep",
    "missing_bases",
    "pending",
    "run_sweep",
]

#: Built-in sweeps: name -> (preset, grid).
SWEEPS = {
    "quick": ("quick", {"align.objective": ["rlhf", "dpo", "augmentation", "recovery_prefill"]}),
    "objectives": ("default", {"align.objective": [o for o in OBJECTIVES if o != "none"]}),
    "lambda": ("default", {"align.lam": [0.1, 0.3, 1.0, 3.0]}),
    "baselines": (
        "quick",
        {"align.objective": ["reinforce"], "align.baseline": ["none", "value", "mean"]},
    ),
}


def expand(base: RunConfig, grid: dict | None = None, runs: list | None = None) -> list[RunConfig]:
    """The configurations of a sweep: each of ``runs`` (or the base alone) crossed with ``grid``.

    Names are ``<base name>-<i>`` followed by the overridden values; duplicates (same hash) are
    kept once.
    """
    grid = grid or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid[{key!r}] must be a non-empty list of values")
    starts = [(with_overrides(base, r), r) for r in runs] if runs else [(base, {})]
    configs, seen = [], set()
    keys = list(grid)
    for start, run_overrides in starts:
        for values in itertools.product(*(grid[k] for k in keys)):
            overrides = dict(zip(keys, values))
            label = ",".join(
                f"{k.split('.')[-1]}={v}" for k, v in {**run_overrides, **overrides}.items()
            )
            cfg = with_overrides(
                start,
                {
                    **overrides,
                    "name": f"{base.name}-{len(configs):03d}" + (f"[{label}]" if label else ""),
                },
            )
            if run_id(cfg) not in seen:
                seen.add(run_id(cfg))
                configs.append(cfg)
    return configs


def load_sweep(spec: str) -> list[RunConfig]:
    """A sweep from a built-in name (:data:`SWEEPS`), a preset name (one run) or a file."""
    if spec in SWEEPS:
        start, grid = SWEEPS[spec]
        return expand(with_overrides(PRESETS[start], {"name": f"sweep-{spec}"}), grid)
    if spec in PRESETS:
        return [PRESETS[spec]]
    if not os.path.exists(spec):
        raise ConfigError(
            f"cannot read sweep {spec}: no such file, and not a built-in sweep "
            f"({', '.join(SWEEPS)}) or a preset name ({', '.join(PRESETS)})"
        )
    data = read_config_file(spec)
    sweep = data.pop("sweep", {})
    if not isinstance(sweep, dict):
        raise ConfigError(f"{spec}: [sweep] must be a table with 'grid' and/or 'runs'")
    unknown = sorted(set(sweep) - {"grid", "runs"})
    if unknown:
        raise ConfigError(f"{spec}: unknown sweep setting {unknown[0]!r}; use grid and/or runs")
    runs = sweep.get("runs")
    if runs is not None and (
        not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs)
    ):
        raise ConfigError(f"{spec}: sweep.runs must be a list of tables of dotted overrides")
    grid = sweep.get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError(f"{spec}: sweep.grid must be a table of lists")
    return expand(config_from_source(data), grid, runs)


def format_seconds(seconds: float) -> str:
    """``42s`` or ``3m05s``: the progress lines' elapsed times and ETAs."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _run_one(args) -> tuple[str, float, str | None]:
    """Worker: run one configuration (given as a dict) into ``out``; never raises a user error."""
    config_dict, out = args
    start = time.perf_counter()
    cfg = config_from_dict(config_dict)
    try:
        train_and_evaluate(cfg, out)
        return run_id(cfg), time.perf_counter() - start, None
    except HarmHorizonError as err:
        return run_id(cfg), time.perf_counter() - start, str(err)


def cache_base(args) -> str:
    """Worker: train and cache the base model of one configuration, given as ``(config dict,
    output folder)``; returns the cache file's name."""
    from experiments.base_model import policy_from_config
    from experiments.world import make_world

    config_dict, out = args
    cfg = config_from_dict(config_dict)
    world = make_world(cfg.world)
    get_base(cfg, world, policy_from_config(cfg.policy, world), out)
    return os.path.basename(base_cache_path(out, cfg))


def clean_partial_files(out: str) -> int:
    """Remove temporary files left by an interrupted run; returns how many."""
    stale = glob.glob(os.path.join(out, "**", ".partial-*"), recursive=True)
    for path in stale:
        os.unlink(path)
    return len(stale)


def _finished_result(cfg: RunConfig, out: str) -> dict | None:
    """The readable result of ``cfg`` in ``out`` (a JSON object with its run id), or None."""
    path = result_path(out, cfg)
    if not os.path.exists(path):
        return None
    try:
        result = results_mod.read_result(path)
    except InputError:
        return None
    if (
        isinstance(result, dict)
        and result.get("run_id") == run_id(cfg)
        and all(k in result for k in ("config", "base", "aligned", "training"))
    ):
        return result
    return None


def finished(cfg: RunConfig, out: str) -> bool:
    """Whether ``out`` holds a readable result of ``cfg`` (a JSON object with its run id)."""
    return _finished_result(cfg, out) is not None


def pending(configs: list[RunConfig], out: str) -> list[RunConfig]:
    """The configurations without a readable result file in ``out`` (damaged ones run again)."""
    return [c for c in configs if not finished(c, out)]


@contextlib.contextmanager
def folder_lock(out: str):
    """Hold ``out/.sweep.lock`` for one sweep; a second sweep in ``out`` refuses at once."""
    import fcntl

    path = os.path.join(out, ".sweep.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"another sweep (pid {holder}) is running in {out}; wait for it to "
                "finish (then rerun to complete any missing runs) or use another "
                "--out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def missing_bases(configs: list[RunConfig], out: str) -> list[RunConfig]:
    """One configuration per base model that the runs need and the cache lacks."""
    found = {}
    for cfg in configs:
        path = base_cache_path(out, cfg)
        if path not in found and not os.path.exists(path):
            found[path] = cfg
    return list(found.values())


#: Where a sweep's runs happen: worker processes of this machine, or Ray tasks
#: (:mod:`experiments.sweep_ray`).
BACKENDS = ("local", "ray")


def run_sweep(
    configs: list[RunConfig],
    out: str,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    per_run: bool = False,
    batch_size: int | None = None,
    backend: str = "local",
    address: str | None = None,
) -> list[dict]:
    """Run every configuration without a result in ``out``; then write the tidy tables.

    Args:
      configs: the sweep's configurations.
      out: output folder (created); results in ``out/runs``, tables in ``out``.
      jobs: parallel worker processes (every run happens in a worker, see
        :data:`experiments.workers.WORKER_XLA_FLAGS`).
      log: progress sink (default: stderr).
      per_run: one run at a time (the reference path) instead of the vectorized batches of
        :mod:`experiments.batch_sweep`, which run whole groups of runs as one compiled program.
      batch_size: most runs per vectorized batch (default
        :data:`experiments.batch_sweep.DEFAULT_BATCH`).
      backend: ``"local"`` (a pool of ``jobs`` processes) or ``"ray"`` (Ray tasks: a local
        instance of ``jobs`` CPUs, or the cluster at ``address``); same runs, files and tables.
      address: the Ray cluster to join (``host:port`` or ``auto``; ``backend="ray"`` only).

    Returns:
      The result dicts of all ``configs``, in order.
    """
    log = log or (lambda line: say(line))
    if not configs:
        raise ConfigError("the sweep has no runs")
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be at least 1")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise ConfigError("--address joins a Ray cluster: it needs --backend ray")
    if backend == "ray":  # refused before anything is written: Ray missing, cluster unreachable
        from experiments import sweep_ray

        sweep_ray.import_ray()
        if address is not None:
            sweep_ray.check_address(address)
    check_output_folder(out, flag="--out")
    for cfg in configs:
        check_run_memory(cfg)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    with folder_lock(out):
        return _locked_sweep(configs, out, jobs, log, per_run, batch_size, backend, address)


def _locked_sweep(
    configs,
    out,
    jobs,
    log,
    per_run: bool,
    batch_size: int | None,
    backend: str,
    address: str | None,
) -> list[dict]:
    if clean_partial_files(out):
        log("removed partial files of an interrupted run")
    write_json_atomic(
        os.path.join(out, "sweep.json"),
        {"runs": [{"run_id": run_id(c), "config": config_to_dict(c)} for c in configs]},
    )
    todo = pending(configs, out)
    damaged = [c for c in todo if os.path.exists(result_path(out, c))]
    if damaged:
        log(
            f"{len(damaged)} damaged result file(s) (e.g. {result_path(out, damaged[0])}) will be "
            "run again"
        )
    where = (
        f"{jobs} parallel"
        if backend == "local"
        else f"Ray, {'cluster ' + address if address else f'local instance of {jobs} CPUs'}"
    )
    log(
        f"sweep: {len(configs)} runs, {len(configs) - len(todo)} already done, {len(todo)} to run"
        f" ({where})"
    )
    if not todo:
        failures = []
    elif backend == "ray":
        from experiments import sweep_ray

        failures = sweep_ray.execute(todo, out, jobs, log, per_run, batch_size, address)
    else:
        failures = _dispatch(todo, out, jobs, log, per_run, batch_size)
    # each result read once (reading it to check it and again for the tables took 1.1 s of
    # JSON decoding per 1000 quick runs)
    results = [r for r in (_finished_result(c, out) for c in configs) if r is not None]
    if results:
        paths = results_mod.write_tables(results, out)
        log(f"tables: {', '.join(os.path.relpath(p, out) for p in paths)}")
    if failures:
        raise InputError(
            f"{len(failures)} of {len(todo)} runs failed (rerun the same command to "
            f"retry them); first: {failures[0]}"
        )
    return results


def _dispatch(todo, out, jobs, log, per_run: bool, batch_size: int | None) -> list[str]:
    """The per-run path, or the vectorized one with the per-run path for what does not vectorize."""
    if per_run:
        return _execute(todo, out, jobs, log)
    from experiments import batch_sweep

    return batch_sweep.execute(
        todo,
        out,
        jobs,
        log,
        WORKER_XLA_FLAGS,
        lambda single: _execute(single, out, jobs, log),
        batch_size,
    )


def _execute(todo, out, jobs, log) -> list[str]:
    """Train the missing base models, then run ``todo``, in a pool of worker processes."""
    failures = []
    bases = missing_bases(todo, out)
    pool = worker_pool(min(jobs, len(todo)))
    try:
        if bases:
            log(f"training {len(bases)} base model(s)")
            for name in pool.imap_unordered(cache_base, [(config_to_dict(c), out) for c in bases]):
                log(f"base model {name} ready")
        start = time.perf_counter()
        tasks = [(config_to_dict(c), out) for c in todo]
        for index, (rid, seconds, error) in enumerate(pool.imap_unordered(_run_one, tasks), 1):
            elapsed = time.perf_counter() - start
            eta = elapsed / index * (len(tasks) - index)
            status = f"FAILED: {error}" if error else f"done in {format_seconds(seconds)}"
            log(
                f"[{index}/{len(tasks)}] {rid} {status}; elapsed {format_seconds(elapsed)}, "
                f"ETA {format_seconds(eta)}"
            )
            if error:
                failures.append(f"{rid}: {error}")
        pool.close()
    except BaseException:
        pool.terminate()  # Ctrl-C or a kill: finished runs are on disk, nothing partial is kept
        raise
    finally:
        pool.join()
    return failures
