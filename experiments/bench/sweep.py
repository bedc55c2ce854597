"""``harm-horizon bench --suite sweep``: runs per minute, per-run path and vectorized, one grid.

The grid: the ``quick`` preset (tabular refusal world, ``V = 5``, ``T = 5``) crossed with seeds,
``λ`` and learning rates, 256 runs (``--quick``: the ``tiny`` preset, 32 runs). Both paths run in
this process, on the default JAX backend:

* ``per_run``: :func:`experiments.train.train_and_evaluate` on a sample of the grid's runs
  sharing one base model (cached, as a sweep caches it; every run of that path is the same
  program, so a sample gives its rate), first run (compiles, trains the base) and the median of
  the others (warm);
* ``vectorized``: the missing base models (one mapped SFT program), then the grid in batches
  (:func:`experiments.batch_runs.run_batch`), result files written; ``compile_seconds`` apart;
* ``runs_per_minute`` with and without compiling; ``speedup`` = vectorized runs/min including
  compile / per-run warm runs/min;
* ``flops_per_run``: an estimate from XLA's cost analysis of the unoptimized programs (an
  alignment step x steps, an attack step x steps x attacks, the measurements, the base model's
  SFT step x steps shared by its runs); ``floor_seconds`` = that / the float64 matrix-product
  rate measured in the same run; ``ratio_to_floor`` = vectorized seconds per run (warm) / it.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import batch_runs, batch_sweep, measure
from experiments.attack import attack_names, attack_step_function
from experiments.base_model import (
    behaviour_weights,
    make_optimizer,
    policy_from_config,
    sft_step_function,
)
from experiments.config import RunConfig, config_from_dict, with_overrides
from experiments.presets import preset
from experiments.recipes import make_objective
from experiments.sweep import expand
from experiments.train import step_function, train_and_evaluate
from experiments.world import make_world
from toy_lm.models.policy_factory import init_params
from toy_lm.precision import check_x64

__all__ = ["bench_grid", "flops_per_run", "matmul_flop_rate", "suite_sweep"]


def bench_grid(quick: bool) -> list[RunConfig]:
    """The benchmark's grid (see the module docstring)."""
    if quick:
        return expand(
            with_overrides(preset("tiny"), {"name": "bench"}),
            {
                "seed": [0, 1],
                "align.lam": [0.1, 0.3, 1.0, 3.0],
                "align.learning_rate": [0.5, 1.0, 1.5, 2.0],
            },
        )
    return expand(
        with_overrides(preset("quick"), {"name": "bench"}),
        {
            "seed": [0, 1, 2, 3],
            "align.lam": [0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0],
            "align.learning_rate": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0],
        },
    )


def matmul_flop_rate(size: int = 512, repeats: int = 5) -> float:
    """Float64 floating-point operations per second of a numpy matrix product (best of runs)."""
    a = np.random.default_rng(0).normal(size=(size, size))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        _ = a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) if cost and "flops" in cost else float("nan")


def flops_per_run(cfg: RunConfig, runs_per_base: float) -> float:
    """Estimated floating-point operations of one run of ``cfg`` (see the module docstring)."""
    world = make_world(cfg.world)
    policy = policy_from_config(cfg.policy, world)
    params = init_params(policy, jax.random.key(0), scale=cfg.policy.init_scale)
    tables = tuple(tuple(np.asarray(t) for t in policy.level_tables(params, x)) for x in (0, 1))
    objective = make_objective(cfg, policy, world, params, tables)
    opt = make_optimizer(cfg.align.optimizer, cfg.align.learning_rate)
    step = _flops(
        step_function(objective, opt, policy, True),
        params,
        opt.init(params),
        jax.random.key(0),
        objective.data,
        world.harm,
        world.utility,
    )
    attack_opt = make_optimizer(cfg.attack.optimizer, cfg.attack.learning_rate)
    d = {
        "reference": tables[0],
        "weights": tuple(np.zeros(np.shape(t)) for t in tables[0]),
        "betas": np.ones(cfg.world.length),
        "harm": world.harm,
        "constrained": jnp.asarray(1.0),
    }
    attack = _flops(
        attack_step_function(policy, attack_opt, True), params, attack_opt.init(params), d
    )
    det = tuple(jnp.asarray(m) for m in world.determined[:-1])
    measured = 3 * _flops(measure.model_arrays, *tables, *tables, world.harm, world.utility, det)
    sft_opt = make_optimizer(cfg.base.optimizer, cfg.base.learning_rate)
    sft = _flops(
        sft_step_function(policy, sft_opt),
        params,
        sft_opt.init(params),
        behaviour_weights(world, jax.random.key(0), 0),
    )
    return (
        cfg.align.steps * step
        + cfg.attack.steps * len(attack_names(cfg)) * attack
        + measured
        + cfg.base.steps * sft / runs_per_base
    )


def _per_run(configs, sample: int, progress) -> dict:
    times = []
    with tempfile.TemporaryDirectory() as out:  # the base model is cached, as in a sweep
        for index, cfg in enumerate(configs[:sample]):
            start = time.perf_counter()
            train_and_evaluate(cfg, out)
            times.append(time.perf_counter() - start)
            progress(f"per-run {index + 1}/{sample}: {times[-1]:.2f} s")
    warm = statistics.median(times[1:])
    return {
        "per_run_sample": sample,
        "per_run_first_seconds": times[0],
        "per_run_warm_seconds": warm,
        "per_run_runs_per_minute": 60.0 / warm,
    }


def _vectorized(configs, batch_size: int | None, progress) -> dict:
    from toy_lm.tables import memory_budget

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        groups, _, _ = batch_sweep.split_vectorizable(configs)
        compile_seconds = 0.0
        for bases in batch_sweep.missing_base_groups(configs, out):
            compile_seconds += batch_runs.train_bases(
                [config_from_dict(c) for c in bases], out
            ).compile_seconds
        base_seconds = time.perf_counter() - start
        progress(
            f"vectorized: base models in {base_seconds:.1f} s (compile {compile_seconds:.1f} s)"
        )
        for batch in batch_sweep.plan_batches(groups, 1, batch_size):
            report = batch_runs.run_batch(
                [config_from_dict(c) for c in batch.configs], batch.size, out, memory_budget()
            )
            compile_seconds += report.compile_seconds
            if report.failures:
                raise RuntimeError(report.failures[0])
            progress(
                f"vectorized batch of {report.runs}: {report.seconds:.2f} s "
                f"(compile {report.compile_seconds:.1f} s)"
            )
        seconds = time.perf_counter() - start
        written = len(os.listdir(os.path.join(out, "runs")))
    if written != len(configs):
        raise RuntimeError(f"the vectorized path wrote {written} of {len(configs)} runs")
    return {
        "vectorized_seconds": seconds,
        "compile_seconds": compile_seconds,
        "base_seconds": base_seconds,
        "vectorized_runs_per_minute": 60.0 * len(configs) / seconds,
        "vectorized_runs_per_minute_warm": 60.0 * len(configs) / (seconds - compile_seconds),
    }


def suite_sweep(repeats: int, quick: bool, progress) -> list[dict]:
    """The ``sweep`` suite's rows (one per grid; ``repeats`` = per-run sample size + 1)."""
    check_x64("the sweep benchmark")
    configs = bench_grid(quick)
    per_run = _per_run(configs, max(repeats, 2) + 1, progress)
    vectorized = _vectorized(configs, None, progress)
    bases = len({(c.seed, c.policy.init_scale, c.base.learning_rate) for c in configs})
    flops = flops_per_run(configs[0], len(configs) / bases)
    rate = matmul_flop_rate()
    floor = flops / rate
    warm_per_run = (vectorized["vectorized_seconds"] - vectorized["compile_seconds"]) / len(configs)
    return [
        {
            "name": f"sweep {configs[0].name.split('-')[0]} T={configs[0].world.length}",
            "backend": jax.default_backend(),
            "runs": len(configs),
            **per_run,
            **vectorized,
            "speedup": vectorized["vectorized_runs_per_minute"]
            / per_run["per_run_runs_per_minute"],
            "flops_per_run": flops,
            "matmul_flops_per_second": rate,
            "floor_seconds": floor,
            "ratio_to_floor": warm_per_run / floor,
        }
    ]
