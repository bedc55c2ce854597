"""Vectorized sweeps: the runs of a grid in batches, each batch one call of a compiled program.

:func:`execute` is what ``harm-horizon sweep`` does by default (``--per-run`` keeps the one
process per run path of :mod:`experiments.sweep`, the reference):

1. the runs are grouped by program (:func:`experiments.vectorized.group_key`); a run that cannot
   be vectorized, or that is alone in its group, goes through the per-run path, and the log
   says so and why;
2. the missing base models are trained, one mapped SFT program per base group, and cached where
   the per-run path caches them; the workers that train none compile the run programs meanwhile
   (:func:`experiments.batch_runs.prepare_program`: a program's shapes do not depend on the base
   models, which are its inputs), into the persistent compilation cache where the other workers
   find them (the README's 1000-run grid, first run: 48-50 s against 52-54 s before, alternated
   on the 2-core CPU);
3. each group is cut into batches of equal size (the last padded with copies of its last run,
   whose results are dropped, so one program serves the group) sized from an estimate of the
   memory a run needs against :func:`toy_lm.tables.memory_budget`; after compiling, XLA's own
   memory analysis is checked too, and a batch that would not fit is halved;
4. batches go to ``jobs`` worker processes; a batch writes its runs' result files together when
   it is done (each through a temporary file and a rename, all renamed after all are written), so
   a kill loses at most the batches in flight, and a rerun completes the missing runs only.

The result files are those of :func:`experiments.train.train_and_evaluate` (same fields, same
numbers to rounding: ``tests/test_experiments_batch_sweep.py``), ``seconds`` being each run's
share of its batch's time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import NamedTuple

from experiments import batch_runs
from experiments.config import RunConfig, config_from_dict, config_to_dict
from experiments.train import base_cache_path
from experiments.vectorized import base_group_key, group_key, not_vectorizable
from experiments.workers import worker_pool
from toy_lm.tables import memory_budget

__all__ = [
    "Batch",
    "DEFAULT_BATCH",
    "MIN_GROUP_RUNS",
    "estimated_run_bytes",
    "execute",
    "missing_base_groups",
    "plan_batches",
    "split_vectorizable",
]

#: Most runs in one batch by default. Inside a batch the runs go through the program in small
#: ``vmap``-ed chunks (:data:`experiments.vectorized.RUN_CHUNK`), so a larger batch costs no cache
#: misses; it only means more work lost to a kill and fewer result-file writes.
DEFAULT_BATCH = 256
#: A group of fewer runs goes through the per-run path (one run gains nothing from ``vmap``).
MIN_GROUP_RUNS = 2


class Batch(NamedTuple):
    """One call of a group's program: ``configs`` (dicts), padded to ``size`` runs."""

    group: int
    configs: list
    size: int


def estimated_run_bytes(cfg: RunConfig) -> int:
    """An upper estimate of the memory one run of a batch needs, in bytes (float64).

    Parameters, gradients, optimizer state and per-position pull-backs, ``(8 + 2 T)`` copies of
    the ``2 Σ_l V**l · V`` table entries; the exact losses and measurements, about 48 arrays of
    the ``2 V**T`` responses; the recorded history, ``steps × (T + 3)`` numbers.
    """
    v, t = len(cfg.world.vocab), cfg.world.length
    entries = 2 * sum(v**level * v for level in range(t))
    history = cfg.align.steps * (t + 3) + 2 * (cfg.attack.steps + 1)
    return 8 * ((8 + 2 * t) * entries + 48 * 2 * v**t + history)


def plan_batches(
    groups: list[list[RunConfig]],
    jobs: int,
    batch_size: int | None = None,
    budget: int | None = None,
) -> list[Batch]:
    """Cut each group into batches of equal size that fit ``budget`` bytes (per worker).

    A group gets at least ``min(jobs, runs)`` batches so that every worker has work.
    """
    budget = memory_budget() // max(jobs, 1) if budget is None else budget
    cap = batch_size or DEFAULT_BATCH
    batches = []
    for index, configs in enumerate(groups):
        fit = max(1, budget // estimated_run_bytes(configs[0]))
        count = max(math.ceil(len(configs) / min(cap, fit)), min(jobs, len(configs)))
        size = math.ceil(len(configs) / count)
        for start in range(0, len(configs), size):
            part = configs[start : start + size]
            batches.append(Batch(index, [config_to_dict(c) for c in part], size))
    return batches


def split_vectorizable(configs: list[RunConfig]) -> tuple[list[list[RunConfig]], list, list[str]]:
    """``(groups, per-run configurations, reasons)``: the vectorizable runs grouped by program."""
    groups: dict[str, list] = {}
    single, reasons = [], []
    for cfg in configs:
        reason = not_vectorizable(cfg)
        if reason:
            single.append(cfg)
            if reason not in reasons:
                reasons.append(reason)
        else:
            groups.setdefault(group_key(cfg), []).append(cfg)
    lone = [g[0] for g in groups.values() if len(g) < MIN_GROUP_RUNS]
    if lone:
        single += lone
        reasons.append(
            f"{len(lone)} run(s) alone in their program: nothing to map over, "
            "so they go one by one (small programs compile quicker)"
        )
    return [g for g in groups.values() if len(g) >= MIN_GROUP_RUNS], single, reasons


def missing_base_groups(configs: list[RunConfig], out: str) -> list[list[dict]]:
    """One configuration per missing base model, grouped by SFT program."""
    seen, groups = set(), {}
    for cfg in configs:
        path = base_cache_path(out, cfg)
        if path not in seen and not os.path.exists(path):
            seen.add(path)
            groups.setdefault(base_group_key(cfg), []).append(config_to_dict(cfg))
    return list(groups.values())


def _bases_task(args):
    configs, out = args
    return batch_runs.train_bases([config_from_dict(c) for c in configs], out)


def _prepare_task(args):
    batch, budget = args
    try:
        return batch_runs.prepare_program(
            [config_from_dict(c) for c in batch.configs], batch.size, budget
        )
    except Exception as err:  # only time is at stake: the group's first batch compiles it
        return f"{type(err).__name__}: {err}"


def _batch_task(args):
    batch, out, budget = args
    return batch_runs.run_batch(
        [config_from_dict(c) for c in batch.configs], batch.size, out, budget
    )


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def execute(
    todo: list[RunConfig],
    out: str,
    jobs: int,
    log: Callable[[str], None],
    flags: str,
    per_run: Callable[[list[RunConfig]], list[str]],
    batch_size: int | None = None,
) -> list[str]:
    """Run ``todo`` vectorized into ``out``; returns the failures (``"run id: message"``).

    ``per_run(configs)`` runs the configurations that do not vectorize (and returns their
    failures); ``flags`` are the workers' XLA flags.
    """
    groups, single, reasons = split_vectorizable(todo)
    for reason in reasons:
        log(f"not vectorized: {reason}")
    failures = []
    if groups:
        vectorized = [c for g in groups for c in g]
        budget = memory_budget() // max(jobs, 1)
        batches = plan_batches(groups, jobs, batch_size, budget)
        base_groups = missing_base_groups(vectorized, out)
        log(
            f"vectorized: {len(vectorized)} runs in {len(groups)} program(s), {len(batches)} "
            f"batch(es) of up to {max(b.size for b in batches)} runs"
        )
        pool = worker_pool(min(jobs, len(batches)), flags)
        try:
            early = []
            if base_groups:
                # the workers that no base-model program needs compile the run programs meanwhile
                first_of = {}
                for b in batches:
                    first_of.setdefault(b.group, b)  # each group's first batch
                firsts = list(first_of.values())
                idle = max(0, min(jobs, len(batches)) - len(base_groups))
                early = [pool.apply_async(_prepare_task, ((b, budget),)) for b in firsts[:idle]]
                log(
                    f"training {sum(map(len, base_groups))} base model(s) in "
                    f"{len(base_groups)} program(s)"
                    + (f"; compiling {len(early)} run program(s) meanwhile" if early else "")
                )
                for report in pool.imap_unordered(_bases_task, [(g, out) for g in base_groups]):
                    log(
                        f"{report.runs} base model(s) ready in {report.seconds:.1f} s (compile "
                        f"{report.compile_seconds:.1f} s)"
                    )

            def report_early():
                for result in [r for r in early if r.ready()]:
                    early.remove(result)
                    try:
                        report = result.get()
                    except Exception as err:  # only time was at stake
                        report = f"{type(err).__name__}: {err}"
                    if isinstance(report, batch_runs.BatchReport) and report.runs:
                        log(f"run program ready in {report.compile_seconds:.1f} s")
                    else:
                        why = report if isinstance(report, str) else "; ".join(report.failures)
                        log(f"run program not compiled early ({why}); its batches compile it")

            report_early()
            start = time.perf_counter()
            done = 0
            tasks = [(b, out, budget) for b in batches]
            for index, report in enumerate(pool.imap_unordered(_batch_task, tasks), 1):
                done += report.runs
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (len(vectorized) - done)
                log(
                    f"[{index}/{len(batches)}] batch of {report.runs} runs done in "
                    f"{_format_seconds(report.seconds)} (compile {report.compile_seconds:.1f} s)"
                    f"; {done}/{len(vectorized)} runs; elapsed {_format_seconds(elapsed)}, ETA "
                    f"{_format_seconds(eta)}"
                )
                failures += report.failures
                report_early()
            if early:
                # still compiling (or its worker died) when the batches are done: the work is
                # of no use any more, and waiting for a dead worker's task would never end
                log(f"ending {len(early)} early compile(s) still running: the batches are done")
                pool.terminate()
            else:
                pool.close()
        except BaseException:
            pool.terminate()  # finished batches are on disk; nothing partial is kept
            raise
        finally:
            pool.join()
    if single:
        failures += per_run(single)
    return failures
