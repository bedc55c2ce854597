"""One batch of a vectorized sweep, inside a worker: inputs, the compiled call, result files.

:func:`train_bases` trains base models with :func:`experiments.vectorized.base_program` and caches
them where :func:`experiments.train.get_base` looks; :func:`run_batch` gathers a batch's inputs,
compiles (or reuses) its group's stages (:func:`experiments.vectorized.run_stages`), runs
them and turns their arrays into the result dicts of :func:`experiments.train.train_and_evaluate`.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np

from experiments import measure
from experiments.attack import attack_betas, attack_names
from experiments.base_model import (
    BaseModel,
    all_tables,
    behaviour_weights,
    load_base,
    policy_from_config,
    save_base,
    sft_gap,
)
from experiments.config import RunConfig, config_to_dict
from experiments.recipes import harmful_attack_weights, make_objective, objective_settings
from experiments.train import (
    ATTACK_TAG,
    BASE_TAG,
    base_cache_path,
    divergence_message,
    package_version,
    run_id,
)
from experiments.vectorized import (
    BaseInputs,
    RunInputs,
    base_program,
    call_stages,
    chunked_size,
    group_key,
    lower_stages,
    run_stages,
)
from experiments.workers import usable_cores
from experiments.world import make_world
from toy_lm.compile_options import compiler_options, compiling_in_turn
from toy_lm.errors import HarmHorizonError, InputError
from toy_lm.models.policy_factory import init_params
from toy_lm.outputs import write_atomic_many

__all__ = [
    "BatchReport",
    "assemble",
    "compile_stages",
    "prepare_program",
    "run_batch",
    "train_bases",
    "write_results_atomic",
]


class BatchReport(NamedTuple):
    """What a worker returns: runs written, failures, seconds (all, and compiling)."""

    runs: int
    failures: list
    seconds: float
    compile_seconds: float


def _stack(trees: list):
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _pad(items: list, size: int) -> list:
    return items + [items[-1]] * (size - len(items))


@functools.cache
def _world(world_cfg):
    return make_world(world_cfg)


def train_bases(configs: list[RunConfig], out: str) -> BatchReport:
    """Train the base models of ``configs`` (one per configuration, one SFT program) into the
    cache of ``out``."""
    start = time.perf_counter()
    cfg = configs[0]
    world = _world(cfg.world)
    policy = policy_from_config(cfg.policy, world)
    weights = []
    for c in configs:
        data_key = jax.random.split(jax.random.fold_in(jax.random.key(c.seed), BASE_TAG))[1]
        weights.append(behaviour_weights(world, data_key, c.base.num_examples))
    args = (
        np.asarray([c.seed for c in configs], np.int64),
        np.asarray([c.policy.init_scale for c in configs], np.float64),
        np.asarray([c.base.learning_rate for c in configs], np.float64),
        _stack(weights),
    )
    compile_start = time.perf_counter()
    program = (
        base_program(cfg, policy).lower(*args).compile(compiler_options(jax.default_backend()))
    )
    compile_seconds = time.perf_counter() - compile_start
    params = jax.device_get(program(*args))
    seconds = (time.perf_counter() - start) / len(configs)
    for index, c in enumerate(configs):
        own = jax.tree_util.tree_map(lambda x, i=index: x[i], params)
        tables = all_tables(policy, own)
        path = base_cache_path(out, c)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_base(path, BaseModel(own, tables, sft_gap(tables, world), seconds))
    return BatchReport(len(configs), [], time.perf_counter() - start, compile_seconds)


_SETTINGS = tuple(objective_settings(RunConfig()))
_PROGRAMS: dict = {}


class _Program(NamedTuple):
    """A group's compiled run program: its stages and their compiled programs, in order."""

    stages: tuple
    programs: list


def compile_stages(name: str, stages, lowered: list, options) -> list:
    """Compile every lowered stage, largest first, on :func:`experiments.workers.usable_cores`
    threads (XLA compiles separate programs in parallel), each in its turn
    (:func:`toy_lm.compile_options.compiling_in_turn`, keyed by ``name`` and the stage).

    A first pass compiles the stages nobody else is compiling and skips those another worker of
    the sweep is compiling; a second pass waits for those and loads them from the persistent
    cache. So the workers of a sweep, which start on the same group together, split its stages
    between them instead of one compiling while the others wait. The size of a stage's lowered
    program stands for its compile time (for the quick preset, on one core: measurements 4.5 s,
    alignment 3.8 s, the two attacks 2.0 s and 1.4 s; lowered text 430, 271, 149 and 121 kB).
    """
    order = sorted(range(len(lowered)), key=lambda i: -len(lowered[i].as_text()))
    compiled, claimed, lock, failed = {}, set(), threading.Lock(), threading.Event()

    def work():
        for wait in (False, True):
            for i in order:
                with lock:
                    if failed.is_set():  # another thread's compile raised: claim nothing more
                        return
                    if i in claimed:
                        continue
                    claimed.add(i)
                with compiling_in_turn(f"{name} {stages[i].name}", wait=wait) as mine:
                    if mine:
                        try:
                            compiled[i] = lowered[i].compile(options)
                        except BaseException:
                            failed.set()
                            raise
                        continue
                with lock:
                    claimed.discard(i)

    threads = min(len(lowered), usable_cores())
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(work) for _ in range(threads)]
        try:
            for future in futures:
                future.result()
        except BaseException:  # an error or Ctrl-C: the other threads stop after their compile
            failed.set()
            raise
    return [compiled[i] for i in range(len(lowered))]


def _compiled(cfg: RunConfig, policy, world, objective, inputs, bases, budget: int):
    """The group's program compiled for these input shapes; ``None`` when XLA's memory analysis
    says it would not fit ``budget``. Returns ``(_Program or None, compile seconds)``.

    The stages (:func:`experiments.vectorized.run_stages`) are traced first, outside any turn
    (a sweep's workers trace at the same time), then compiled by :func:`compile_stages`."""
    key = (
        group_key(cfg),
        inputs.seed.shape[0],
        tuple((np.shape(x), np.result_type(x)) for x in jax.tree_util.tree_leaves((inputs, bases))),
    )
    if key in _PROGRAMS:
        return _PROGRAMS[key], 0.0
    start = time.perf_counter()
    stages = run_stages(cfg, policy, world, objective)
    lowered = lower_stages(stages, inputs, bases)
    programs = compile_stages(repr(key), stages, lowered, compiler_options(jax.default_backend()))
    seconds = time.perf_counter() - start
    analyses = [p.memory_analysis() for p in programs]
    if all(m is not None for m in analyses):
        # the outputs of every stage stay until the batch is read back; one stage runs at a time
        need = sum(m.output_size_in_bytes for m in analyses) + max(
            m.temp_size_in_bytes + m.argument_size_in_bytes for m in analyses
        )
        if need > budget:
            return None, seconds
    _PROGRAMS[key] = _Program(stages, programs)
    return _PROGRAMS[key], seconds


class _Batch(NamedTuple):
    configs: list  # those whose objective could be built (none: the rest is None)
    failures: list  # "run id: message" of the others
    world: Any
    policy: Any
    objective: Any  # the objective of the last base model (its program is the group's)
    bases: dict  # base cache path -> BaseModel
    inputs: Any  # RunInputs
    base_inputs: Any  # BaseInputs


def _batch(configs: list[RunConfig], size: int, out: str, load) -> _Batch:
    """The inputs of a batch padded to ``size`` runs; ``load(path, policy, policy_cfg)`` gives
    the base model cached at ``path``."""
    cfg = configs[0]
    world = _world(cfg.world)
    policy = policy_from_config(cfg.policy, world)
    bases, data, attack, failures, broken = {}, [], [], [], set()
    objective = None
    for c in configs:
        path = base_cache_path(out, c)
        if path in bases or path in broken:
            continue
        base = load(path, policy, c.policy)
        try:  # a run whose objective cannot be built fails alone, as on the per-run path
            objective = make_objective(c, policy, world, base.params, base.tables)
        except HarmHorizonError as err:
            broken.add(path)
            failures += [f"{run_id(r)}: {err}" for r in configs if base_cache_path(out, r) == path]
            continue
        bases[path] = base
        data.append({k: v for k, v in objective.data.items() if k not in _SETTINGS})
        attack.append(
            harmful_attack_weights(
                c, world, base.tables, jax.random.fold_in(jax.random.key(c.seed), ATTACK_TAG)
            )
            if c.attack.steps > 0
            else ()
        )
    configs = [c for c in configs if base_cache_path(out, c) not in broken]
    if not configs:
        return _Batch([], failures, world, policy, None, {}, None, None)
    paths = list(bases)
    padded = _pad(configs, size)
    inputs = RunInputs(
        seed=np.asarray([c.seed for c in padded], np.int64),
        base_index=np.asarray([paths.index(base_cache_path(out, c)) for c in padded], np.int32),
        align_learning_rate=np.asarray([c.align.learning_rate for c in padded], np.float64),
        attack_learning_rate=np.asarray([c.attack.learning_rate for c in padded], np.float64),
        settings=_stack([objective_settings(c) for c in padded]),
        betas=np.stack([attack_betas(c) for c in padded]),
    )
    # padded to one base per run, so that every batch of the group has the same shapes
    base_inputs = BaseInputs(
        _stack(_pad([bases[p].params for p in paths], size)),
        _stack(_pad(data, size)),
        _stack(_pad(attack, size)),
    )
    return _Batch(configs, failures, world, policy, objective, bases, inputs, base_inputs)


def _stand_in_base(path: str, policy, cfg) -> BaseModel:
    """An untrained base model of the right shapes (its values are not part of any program)."""
    params = init_params(policy, jax.random.key(0), scale=cfg.init_scale)
    return BaseModel(params, all_tables(policy, params), [], 0.0)


def prepare_program(configs: list[RunConfig], size: int, budget: int) -> BatchReport:
    """Compile (or load from the persistent cache) the program of a batch of ``configs`` (one
    group) padded to ``size`` runs, before its base models exist, so that a worker left idle
    while another trains them is not: the program's shapes depend on the configuration alone,
    and the base models are inputs. The worker's later batches of the group reuse it, and the
    other workers find it in the persistent cache.

    The report's ``runs`` is 1 when the program is ready, 0 when not (``failures`` says why: the
    stand-in's objective could not be built, or the program would not fit ``budget``)."""
    start = time.perf_counter()
    # one run padded to the batch: the shapes of any batch of the group (one base per run)
    batch = _batch(configs[:1], chunked_size(size), "", _stand_in_base)
    if not batch.configs:
        return BatchReport(0, batch.failures, time.perf_counter() - start, 0.0)
    program, compile_seconds = _compiled(
        batch.configs[0],
        batch.policy,
        batch.world,
        batch.objective,
        batch.inputs,
        batch.base_inputs,
        budget,
    )
    if program is None:
        failures = ["the program would not fit the memory budget; its batches are halved"]
        return BatchReport(0, failures, time.perf_counter() - start, compile_seconds)
    return BatchReport(1, [], time.perf_counter() - start, compile_seconds)


def run_batch(configs: list[RunConfig], size: int, out: str, budget: int) -> BatchReport:
    """Run ``configs`` (one group) as one call padded to ``size`` runs (rounded up to whole
    chunks, :func:`experiments.vectorized.chunked_size`); write their results."""
    start, count = time.perf_counter(), len(configs)
    size = chunked_size(size)
    batch = _batch(configs, size, out, load_base)
    configs, failures = batch.configs, batch.failures
    if not configs:
        return BatchReport(count, failures, time.perf_counter() - start, 0.0)
    cfg, world, policy, objective = configs[0], batch.world, batch.policy, batch.objective
    bases, inputs, base_inputs = batch.bases, batch.inputs, batch.base_inputs
    compiled, compile_seconds = _compiled(
        cfg, policy, world, objective, inputs, base_inputs, budget
    )
    if compiled is None and size > 1:  # XLA says it would not fit: two half batches
        half = (size + 1) // 2
        reports = [
            run_batch(part, half, out, budget) for part in (configs[:half], configs[half:]) if part
        ]
        return BatchReport(
            count,
            failures + sum((r.failures for r in reports), []),
            time.perf_counter() - start,
            compile_seconds + sum(r.compile_seconds for r in reports),
        )
    arrays = jax.device_get(call_stages(compiled.stages, compiled.programs, inputs, base_inputs))
    share = (time.perf_counter() - start) / len(configs)
    results = []
    for index, c in enumerate(configs):
        own = jax.tree_util.tree_map(lambda x, i=index: x[i], arrays)
        base = bases[base_cache_path(out, c)]
        try:
            results.append(assemble(c, world, base, own, share))
        except HarmHorizonError as err:
            failures.append(f"{run_id(c)}: {err}")
    write_results_atomic(out, results)
    return BatchReport(count, failures, time.perf_counter() - start, compile_seconds)


_BASE_MEASURED: dict = {}


def _base_measurements(cfg: RunConfig, world, base: BaseModel) -> dict:
    """:func:`experiments.measure.base_measurements`, once per base model and ``λ`` list."""
    key = (base_cache_path("", cfg), cfg.measure.equilibrium_lams)
    if key not in _BASE_MEASURED:
        _BASE_MEASURED[key] = measure.base_measurements(
            world, base.tables, cfg.measure.equilibrium_lams
        )
    return _BASE_MEASURED[key]


def assemble(cfg: RunConfig, world, base: BaseModel, arrays: dict, seconds: float) -> dict:
    """The result dict of one run from its slice of the program's arrays."""
    history = {"loss": [], "expected_harm": [], "utility": [], "grad_steps": [], "grad_norms": []}
    aligned = measure.model_from_arrays(
        world, arrays["aligned"], arrays["tables"], arrays["uniforms"]
    )
    if cfg.align.objective != "none":
        loss = np.asarray(arrays["loss"])
        bad = np.flatnonzero(~np.isfinite(loss))
        if bad.size:
            raise InputError(divergence_message(cfg, int(bad[0]), float(loss[bad[0]])))
        recorded = list(range(0, cfg.align.steps, cfg.align.grad_map_every))
        history = {
            "loss": loss.tolist(),
            "expected_harm": [
                *np.asarray(arrays["expected_harm"]).tolist(),
                aligned["expected_harm"],
            ],
            "utility": [*np.asarray(arrays["utility"]).tolist(), aligned["utility"]],
            "grad_steps": recorded,
            "grad_norms": np.asarray(arrays["grad_norms"])[recorded].tolist(),
        }
    base_measured = _base_measurements(cfg, world, base)
    attack = (
        {
            name: {
                "steps": list(range(cfg.attack.steps + 1)),
                "expected_harm": np.asarray(arrays["attack"][name]).tolist(),
            }
            for name in attack_names(cfg)
        }
        if cfg.attack.steps > 0
        else {}
    )
    return {
        "run_id": run_id(cfg),
        "version": package_version(),
        "config": config_to_dict(cfg),
        "base": {**base_measured, "sft_gap": base.sft_gap},
        "aligned": aligned,
        "equilibria": measure.equilibria_from_arrays(arrays["equilibria"]),
        "training": history,
        "attack": attack,
        "seconds": {"base": base.seconds, "align": seconds, "total": seconds},
    }


def write_results_atomic(out: str, results: list[dict]) -> None:
    """Write a batch's result files: every file to a temporary name first, then all renamed, so a
    kill leaves each run either finished or absent (:func:`toy_lm.outputs.write_atomic_many`)."""
    folder = os.path.join(out, "runs")
    os.makedirs(folder, exist_ok=True)
    write_atomic_many(
        [
            (os.path.join(folder, f"{result['run_id']}.json"), json.dumps(result).encode())
            for result in results
        ],
        tag="run",
    )
