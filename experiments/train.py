"""Optax training loops and ``train_and_evaluate(config, workdir)``, one full run.

A run: build the refusal world; train (or load from the work directory's cache) the base model
``π0`` by SFT; align it with the configured objective for ``align.steps`` optax steps, recording at
every step the loss, the exact ``E[h]`` and utility, and the per-position gradient norms ``‖g_t‖``
(the position x step map); measure the aligned model exactly (:mod:`experiments.measure`); run
the fine-tuning attacks; write one JSON result, atomically, to ``workdir/runs/<run id>.json``.

Randomness: everything derives from ``jax.random.key(config.seed)`` through ``fold_in`` with a
fixed tag per stage, so the same configuration gives the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from importlib import metadata
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import attack, base_model, measure
from experiments.config import AlignConfig, RunConfig, check_run_memory, config_hash, config_to_dict
from experiments.recipes import Objective, make_objective
from experiments.world import BENIGN, HARMFUL, RefusalWorld, make_world
from toy_lm.engines import tree
from toy_lm.errors import InputError
from toy_lm.models.policies import Policy
from toy_lm.outputs import write_text
from toy_lm.precision import check_x64

__all__ = [
    "ALIGN_TAG",
    "ATTACK_TAG",
    "BASE_TAG",
    "History",
    "MEASURE_TAG",
    "align",
    "base_cache_path",
    "compiled_step",
    "divergence_message",
    "get_base",
    "make_step",
    "package_version",
    "result_path",
    "run_id",
    "step_function",
    "train_and_evaluate",
    "write_json_atomic",
]

#: ``fold_in`` tags of the stages of a run (base model, alignment, attack, measurement).
BASE_TAG, ALIGN_TAG, ATTACK_TAG, MEASURE_TAG = 1, 2, 3, 4


@functools.cache
def package_version() -> str:
    """The installed harm-horizon version (recorded in every result row); read once per process
    (``importlib.metadata`` parses the package's metadata file on every call, about 2 ms: a
    tenth of a vectorized run's time)."""
    try:
        return metadata.version("harm-horizon")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        import toy_lm

        return toy_lm.__version__


class History(NamedTuple):
    """Per-step training record: ``loss``, exact ``expected_harm`` and ``utility`` of the
    parameters each step started from (the values after the last step are the run's measured
    ones), and ``grad_norms`` ``(recorded steps, T)`` at ``grad_steps``."""

    loss: list
    expected_harm: list
    utility: list
    grad_steps: list
    grad_norms: list


def _only_position(cotangent: tuple, position: int) -> tuple:
    """The features' cotangent with every position but ``position`` zeroed."""
    return tuple(
        c if t == position else jax.tree_util.tree_map(jnp.zeros_like, c)
        for t, c in enumerate(cotangent)
    )


def make_step(
    objective: Objective, optimizer: optax.GradientTransformation, policy: Policy, with_map: bool
):
    """:func:`step_function`, jitted."""
    return jax.jit(step_function(objective, optimizer, policy, with_map))


def step_function(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    policy: Policy,
    with_map: bool,
    by_level: bool | None = None,
):
    """A pure optax step ``(params, state, key, data, harm, utility) -> (params, state, loss,
    norms (T,), E[h], E[u])`` where ``E[h]`` (harmful prompt) and ``E[u]`` (benign prompt) are
    exact and belong to the parameters *before* the update.

    With ``with_map`` the gradient is assembled as ``Σ_t g_t`` from the ``T`` per-position
    pull-backs (so the recorded norms are of exactly what was applied); without it, one pull-back.
    ``by_level`` (default: ``policy.separable_levels``): the policy's parameter leaf ``t`` alone
    makes the features of position ``t``, so ``g_t`` is the gradient's leaf ``t``: one pull-back
    gives the same gradient and norms.
    """
    length = policy.length
    by_level = policy.separable_levels if by_level is None else by_level

    def step(params, state, key, data, harm, utility):
        before = (
            tree.expected_harm(policy.level_tables(params, HARMFUL), harm),
            tree.expected_harm(policy.level_tables(params, BENIGN), utility),
        )
        batch = objective.prepare(params, key, data)
        feats, pullback = jax.vjp(lambda p: objective.features(p, batch), params)
        loss, cotangent = jax.value_and_grad(objective.loss)(feats, batch, data)
        if with_map and by_level:
            # g_t is the t-th leaf of the gradient and zeros elsewhere: one pull-back, and the
            # same numbers as T of them (tests/test_experiments_train.py compares the two)
            (grads,) = pullback(cotangent)
            if not (isinstance(grads, tuple) and len(grads) == length):
                raise TypeError(
                    f"{type(policy).__name__}.separable_levels needs parameters with one leaf "
                    f"per level ({length}), got {jax.tree_util.tree_structure(grads)}"
                )
            norms = jnp.stack([optax.tree.norm(g) for g in grads])
        elif with_map:
            per_position = [pullback(_only_position(cotangent, t))[0] for t in range(length)]
            grads = jax.tree_util.tree_map(lambda *g: sum(g), *per_position)
            norms = jnp.stack([optax.tree.norm(g) for g in per_position])
        else:
            (grads,) = pullback(cotangent)
            norms = jnp.full((length,), jnp.nan)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state, loss, norms) + before

    return step


_STEPS: dict = {}

#: Alignment settings that are data of the compiled step, not part of its program: the
#: objective's scalar settings (:func:`experiments.recipes.objective_settings`, in
#: ``objective.data``) and the learning rate (an argument of the step).
STEP_DATA_FIELDS = ("lam", "beta", "mu", "utility_weight", "baseline", "learning_rate")


def compiled_step(cfg: RunConfig, policy: Policy, objective: Objective, with_map: bool):
    """The jitted step of ``cfg``'s alignment, ``(learning_rate, params, state, key, data, harm,
    utility) -> ...`` (:func:`step_function` with the learning rate as data), shared by every run
    whose step is the same program.

    An objective's functions depend only on the policy, the world and the alignment settings
    outside :data:`STEP_DATA_FIELDS` (its arrays and settings travel in ``objective.data``), so
    those - not the seed, ``λ``, the learning rate or the step count - are the key: a grid over
    ``λ`` and learning rates compiles the step once.
    """
    fixed = dataclasses.replace(
        cfg.align,
        steps=0,
        grad_map_every=1,
        **{f: getattr(AlignConfig(), f) for f in STEP_DATA_FIELDS},
    )
    key = (policy, cfg.world, fixed, with_map)
    if key not in _STEPS:
        name = cfg.align.optimizer

        def step(learning_rate, *args):
            optimizer = base_model.make_optimizer(name, learning_rate)
            return step_function(objective, optimizer, policy, with_map)(*args)

        _STEPS[key] = jax.jit(step)
    return _STEPS[key]


def align(
    cfg: RunConfig,
    policy: Policy,
    objective: Objective,
    world: RefusalWorld,
    params,
    key: jax.Array,
):
    """``align.steps`` optax steps of ``objective`` from ``params``; returns ``(params, History)``."""
    a = cfg.align
    optimizer = base_model.make_optimizer(a.optimizer, a.learning_rate)
    step_map = compiled_step(cfg, policy, objective, True)
    step_plain = compiled_step(cfg, policy, objective, False) if a.grad_map_every > 1 else None
    state = optimizer.init(params)
    hist = History([], [], [], [], [])
    for i in range(a.steps):
        recorded = i % a.grad_map_every == 0
        step = step_map if recorded else step_plain
        params, state, loss, norms, harm, util = step(
            a.learning_rate,
            params,
            state,
            jax.random.fold_in(key, i),
            objective.data,
            world.harm,
            world.utility,
        )
        if not np.isfinite(float(loss)):
            raise InputError(divergence_message(cfg, i, float(loss)))
        hist.loss.append(float(loss))
        hist.expected_harm.append(float(harm))
        hist.utility.append(float(util))
        if recorded:
            hist.grad_steps.append(i)
            hist.grad_norms.append(np.asarray(norms).tolist())
    return params, hist


def divergence_message(cfg: RunConfig, step: int, loss: float) -> str:
    """The error of a run whose loss became non-finite at ``step``."""
    return (
        f"training diverged at step {step} (loss {loss}); lower "
        f"align.learning_rate={cfg.align.learning_rate}"
    )


def base_cache_path(workdir: str, cfg: RunConfig) -> str:
    """Where the base model of ``cfg`` is cached: keyed by (world, policy, base, seed)."""
    keyed = {
        k: v for k, v in config_to_dict(cfg).items() if k in ("world", "policy", "base", "seed")
    }
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(workdir, "bases", f"base-{digest}.npz")


def get_base(cfg: RunConfig, world: RefusalWorld, policy: Policy, workdir: str | None):
    """The base model of ``cfg``: from the cache in ``workdir`` or trained (and cached)."""
    path = base_cache_path(workdir, cfg) if workdir else None
    if path:
        cached = base_model.load_base(path, policy, cfg.policy)
        if cached is not None:
            return cached
    base = base_model.train_base(
        cfg, world, policy, jax.random.fold_in(jax.random.key(cfg.seed), BASE_TAG)
    )
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        base_model.save_base(path, base)
    return base


def run_id(cfg: RunConfig) -> str:
    """The identity of a run: the hash of its configuration."""
    return config_hash(cfg)


def result_path(workdir: str, cfg: RunConfig) -> str:
    return os.path.join(workdir, "runs", f"{run_id(cfg)}.json")


def write_json_atomic(path: str, payload: dict) -> None:
    """Write JSON to ``path`` whole or not at all (:func:`toy_lm.outputs.write_text`)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, json.dumps(payload), tag="run")


def train_and_evaluate(cfg: RunConfig, workdir: str | None = None) -> dict:
    """One run of ``cfg``; returns the result dict and, with ``workdir``, writes it there.

    Returns:
      ``{"run_id", "version", "config", "seconds", "base", "aligned", "training", "attack"}``
      (see :mod:`experiments.measure` for the measured fields).
    """
    check_x64("train_and_evaluate")
    check_run_memory(cfg)
    start = time.perf_counter()
    world = make_world(cfg.world)
    policy = base_model.policy_from_config(cfg.policy, world)
    key = jax.random.key(cfg.seed)
    base = get_base(cfg, world, policy, workdir)
    base_seconds = time.perf_counter() - start

    params = base.params
    hist = History([], [], [], [], [])
    if cfg.align.objective != "none":
        objective = make_objective(cfg, policy, world, base.params, base.tables)
        params, hist = align(
            cfg, policy, objective, world, params, jax.random.fold_in(key, ALIGN_TAG)
        )
    align_seconds = time.perf_counter() - start - base_seconds
    tables = base_model.all_tables(policy, params)
    aligned = measure.model_measurements(
        world, tables, base.tables, jax.random.fold_in(key, MEASURE_TAG), cfg.measure.num_paths
    )
    if cfg.align.objective != "none":  # the history ends with the trained model's values
        hist.expected_harm.append(aligned["expected_harm"])
        hist.utility.append(aligned["utility"])
    result = {
        "run_id": run_id(cfg),
        "version": package_version(),
        "config": config_to_dict(cfg),
        "base": {
            **measure.base_measurements(world, base.tables, cfg.measure.equilibrium_lams),
            "sft_gap": base.sft_gap,
        },
        "aligned": aligned,
        "equilibria": measure.equilibrium_measurements(
            world, base.tables, cfg.align.lam, cfg.align.mu
        ),
        "training": hist._asdict(),
        "attack": attack.fine_tuning_attacks(
            cfg, policy, world, params, base.tables, jax.random.fold_in(key, ATTACK_TAG)
        )
        if cfg.attack.steps > 0
        else {},
    }
    result["seconds"] = {
        "base": base_seconds,
        "align": align_seconds,
        "total": time.perf_counter() - start,
    }
    if workdir is not None:
        write_json_atomic(result_path(workdir, cfg), result)
    return result
