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
* ``transcendentals_per_run``: the same sum of the *compiled* programs' counts of ``exp``,
  ``log``... (XLA's cost analysis after its optimizations, so repeated ``exp`` s are counted
  once); ``exp_ns`` (with the project's compile options, :func:`toy_lm.compile_options.compiler_options`)
  and ``exp_ns_xla_defaults``: nanoseconds per float64 ``exp`` of a jitted elementwise loop,
  measured in the same run (:func:`exp_seconds`); ``transcendental_floor_seconds`` =
  transcendentals per run x the faster of the two (a lower bound: on this CPU a ``log`` costs
  more than the faster ``exp``), ``ratio_to_transcendental_floor`` = vectorized seconds per run (warm) / it, and
  ``speedup_at_transcendental_floor`` = per-run path's warm seconds per run / it (the speedup a
  vectorized program doing nothing but its ``exp`` s and ``log`` s at that rate would have). The
  matrix-product floor counts an ``exp`` as one operation, where a float64 ``exp`` costs as much
  as tens of them; the alignment step evaluates about 3.4 per table entry, and this floor is the
  larger of the two (5x on the ``quick`` grid).
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
from experiments.bench import best_seconds
from experiments.config import RunConfig, config_from_dict, with_overrides
from experiments.presets import preset
from experiments.recipes import make_objective
from experiments.sweep import expand
from experiments.train import step_function, train_and_evaluate
from experiments.world import make_world
from toy_lm.compile_options import compiler_options
from toy_lm.models.policy_factory import init_params
from toy_lm.precision import check_x64

__all__ = [
    "bench_grid",
    "costs_per_run",
    "exp_seconds",
    "flops_per_run",
    "matmul_flop_rate",
    "suite_sweep",
]


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
    return 2 * size**3 / best_seconds(lambda: a @ a, repeats)


def exp_seconds(options: dict | None, size: int = 2**16, repeats: int = 5) -> float:
    """Seconds per float64 ``exp`` in a jitted elementwise loop compiled with ``options`` (best
    of ``repeats``; 100 passes over ``size`` elements, arguments in ``[-1, 0]`` as a
    log-softmax's are mostly, each pass moved back into that range by subtracting 1)."""
    x = jnp.asarray(-np.random.default_rng(0).random(size))

    def passes(x):
        return jax.lax.scan(lambda c, _: (jnp.exp(c) - 1.0, None), x, None, length=100)[0]

    program = jax.jit(passes).lower(x).compile(options)
    jax.block_until_ready(program(x))
    return best_seconds(lambda: jax.block_until_ready(program(x)), repeats) / (100 * size)


def _costs(fn, *args) -> np.ndarray:
    """``[flops of the unoptimized program, transcendentals of the compiled one]``."""
    lowered = jax.jit(fn).lower(*args)
    out = []
    for cost, key in (
        (lowered.cost_analysis(), "flops"),
        (lowered.compile().cost_analysis(), "transcendentals"),
    ):
        cost = cost[0] if isinstance(cost, list) else cost
        out.append(float(cost[key]) if cost and key in cost else float("nan"))
    return np.array(out)


def flops_per_run(cfg: RunConfig, runs_per_base: float) -> float:
    """Estimated floating-point operations of one run of ``cfg`` (see the module docstring)."""
    return costs_per_run(cfg, runs_per_base)["flops"]


def costs_per_run(cfg: RunConfig, runs_per_base: float) -> dict[str, float]:
    """Estimated ``flops`` (unoptimized programs) and ``transcendentals`` (compiled programs) of
    one run of ``cfg`` (see the module docstring)."""
    world = make_world(cfg.world)
    policy = policy_from_config(cfg.policy, world)
    params = init_params(policy, jax.random.key(0), scale=cfg.policy.init_scale)
    tables = tuple(tuple(np.asarray(t) for t in policy.level_tables(params, x)) for x in (0, 1))
    objective = make_objective(cfg, policy, world, params, tables)
    opt = make_optimizer(cfg.align.optimizer, cfg.align.learning_rate)
    step = _costs(
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
    attack = _costs(
        attack_step_function(policy, attack_opt, True), params, attack_opt.init(params), d
    )
    det = tuple(jnp.asarray(m) for m in world.determined[:-1])
    measured = 3 * _costs(measure.model_arrays, *tables, *tables, world.harm, world.utility, det)
    sft_opt = make_optimizer(cfg.base.optimizer, cfg.base.learning_rate)
    sft = _costs(
        sft_step_function(policy, sft_opt),
        params,
        sft_opt.init(params),
        behaviour_weights(world, jax.random.key(0), 0),
    )
    total = (
        cfg.align.steps * step
        + cfg.attack.steps * len(attack_names(cfg)) * attack
        + measured
        + cfg.base.steps * sft / runs_per_base
    )
    return {"flops": float(total[0]), "transcendentals": float(total[1])}


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
    costs = costs_per_run(configs[0], len(configs) / bases)
    flops = costs["flops"]
    rate = matmul_flop_rate()
    floor = flops / rate
    exp_ns = 1e9 * exp_seconds(compiler_options(jax.default_backend()))
    exp_ns_defaults = 1e9 * exp_seconds(None)
    transcendental_floor = costs["transcendentals"] * min(exp_ns, exp_ns_defaults) * 1e-9
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
            "transcendentals_per_run": costs["transcendentals"],
            "exp_ns": exp_ns,
            "exp_ns_xla_defaults": exp_ns_defaults,
            "transcendental_floor_seconds": transcendental_floor,
            "ratio_to_transcendental_floor": warm_per_run / transcendental_floor,
            "speedup_at_transcendental_floor": per_run["per_run_warm_seconds"]
            / transcendental_floor,
        }
    ]
