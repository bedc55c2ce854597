"""Whole training runs as one pure function, ``jax.vmap``-ed over a grid and compiled once.

A run of :func:`experiments.train.train_and_evaluate` is, once its base model ``π0`` is known, a
pure function of a few numbers - the seed, ``λ``, ``β``, ``μ``, the prompt weights, the
REINFORCE baseline, the learning rates, the attack's ``β_t`` - and of arrays that depend only on
``π0`` (the objective's data, the attack's dataset). :func:`run_stages` writes it so:
``lax.scan`` runs the alignment steps and each attack's steps, the exact measurements follow,
and ``jax.vmap`` maps the whole over a batch of runs; the SFT of the base models is mapped the same
way by :func:`base_program`. The run is cut into :func:`run_stages` (alignment, measurements,
each attack), each its own compiled program, because separate programs compile in parallel.
Every step is the per-run path's own step function (:func:`experiments.train.step_function`, :func:`experiments.base_model.sft_step_function`,
:func:`experiments.attack.attack_step_function`), so both paths compute the same quantities.

Runs whose programs differ in shape or structure (``V``, ``T``, policy kind, objective, step
counts, optimizer kinds, sample sizes...) fall in different *groups* (:func:`group_key`): one
program (one set of stages) per group. The fields that may vary inside a group are
:data:`VECTOR_FIELDS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import measure
from experiments.attack import attack_names, attack_step_function, harmful_expected_harm
from experiments.base_model import make_optimizer, prompt_tables, sft_step_function
from experiments.config import RunConfig, config_to_dict
from experiments.recipes import Objective
from experiments.train import ALIGN_TAG, BASE_TAG, MEASURE_TAG, step_function
from experiments.world import HARMFUL, RefusalWorld
from toy_lm.models.policies import Policy
from toy_lm.models.policy_factory import init_params

__all__ = [
    "BASE_VECTOR_FIELDS",
    "BaseInputs",
    "RUN_CHUNK",
    "RunInputs",
    "Stage",
    "VECTOR_FIELDS",
    "VECTOR_POLICIES",
    "base_group_key",
    "base_program",
    "call_stages",
    "chunk_size",
    "chunked_size",
    "group_key",
    "lower_stages",
    "not_vectorizable",
    "params_shapes",
    "run_stages",
]

#: Settings that may differ between the runs of one compiled program (they are data).
VECTOR_FIELDS = (
    "name",
    "seed",
    "policy.init_scale",
    "base.learning_rate",
    "align.lam",
    "align.beta",
    "align.mu",
    "align.learning_rate",
    "align.utility_weight",
    "align.baseline",
    "attack.learning_rate",
    "attack.beta_first",
    "attack.beta_early",
    "attack.early_until",
    "attack.beta_late",
    "measure.equilibrium_lams",
)
#: Settings that may differ between the base models trained by one compiled SFT program.
BASE_VECTOR_FIELDS = ("seed", "policy.init_scale", "base.learning_rate")
#: Policy kinds whose runs vectorize (the transformer's Flax modules run per run).
VECTOR_POLICIES = ("tabular", "markov")
#: Runs ``jax.vmap``-ed together inside a batch's program, which ``lax.map``-s over such chunks:
#: a run's arrays are a few tens of kB, and mapping hundreds at once makes every elementwise pass
#: stream megabytes through memory instead of the CPU's caches (a batch of 256 in one chunk took
#: about 1.5x the CPU per run of chunks of 4). Measured on the 2-core CPU, one thread as in a sweep's
#: workers, quick preset, a batch of 64 compiled with :func:`toy_lm.compile_options.compiler_options`
#: (YNNPACK fusions off): 23-28 ms per run in chunks of 4, 23 in chunks of 8, 21-22 in chunks of 16,
#: 23 in chunks of 32 (compiling 7.6-8.0 s with 4, 8.3-8.7 s with 16); ``harm-horizon bench
#: --suite sweep`` measures the whole.
RUN_CHUNK = 16


def chunk_size(batch: int) -> int:
    """Runs per ``vmap`` chunk in a batch of ``batch`` runs (:data:`RUN_CHUNK` at most)."""
    return max(1, min(RUN_CHUNK, batch))


def chunked_size(batch: int) -> int:
    """``batch`` rounded up to a multiple of :func:`chunk_size` (a batch is padded to it, so that
    its program is one ``lax.map`` with no remainder)."""
    chunk = chunk_size(batch)
    return -(-batch // chunk) * chunk


def _key_without(cfg: RunConfig, fields, sections) -> str:
    data = config_to_dict(cfg)
    out = {}
    for section in sections:
        value = data[section]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{section}.{k}" not in fields}
        elif section in fields:
            continue
        out[section] = value
    return json.dumps(out, sort_keys=True)


def group_key(cfg: RunConfig) -> str:
    """The identity of a run's compiled program: every setting but :data:`VECTOR_FIELDS`."""
    return _key_without(cfg, VECTOR_FIELDS, list(config_to_dict(cfg)))


def base_group_key(cfg: RunConfig) -> str:
    """The identity of a base model's compiled SFT program (world, policy, base settings)."""
    return _key_without(cfg, BASE_VECTOR_FIELDS, ("world", "policy", "base"))


def not_vectorizable(cfg: RunConfig) -> str | None:
    """Why a run cannot join a vectorized group (``None`` when it can)."""
    if cfg.policy.kind not in VECTOR_POLICIES:
        return (
            f"policy.kind={cfg.policy.kind!r} is not vectorized (Flax modules); its runs go "
            "one by one"
        )
    return None


def base_program(cfg: RunConfig, policy: Policy):
    """``jit(vmap(sft))``: ``(seeds (B,), init_scales (B,), learning_rates (B,), weights) ->
    params``, every argument and result with a leading batch axis; ``weights`` are the
    behaviour's level weights per prompt (:func:`experiments.base_model.behaviour_weights`)."""
    b = cfg.base

    def one(seed, init_scale, learning_rate, weights):
        init_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(seed), BASE_TAG))
        params = init_params(policy, init_key, scale=init_scale)
        opt = make_optimizer(b.optimizer, learning_rate)
        step = sft_step_function(policy, opt)

        def body(carry, _):
            return step(*carry, weights), None

        (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=b.steps)
        return params

    return jax.jit(jax.vmap(one))


class RunInputs(NamedTuple):
    """The mapped inputs of :func:`run_stages`, each with a leading batch axis ``(B, ...)``.

    ``base_index`` picks the run's base model among the group's unique ones; ``settings`` is
    :func:`experiments.recipes.objective_settings` of each run; ``betas`` ``(B, T)`` the
    constrained attack's ``β_t``.
    """

    seed: np.ndarray
    base_index: np.ndarray
    align_learning_rate: np.ndarray
    attack_learning_rate: np.ndarray
    settings: dict
    betas: np.ndarray


class BaseInputs(NamedTuple):
    """The group's unique base models (leading axis ``U``): parameters, the objective's data
    without its settings, and the fine-tuning attack's level weights."""

    params: object
    objective_data: dict
    attack_weights: tuple


def _attack_curve(policy, opt, steps, params, d, constrained: bool):
    step = attack_step_function(policy, opt, constrained)

    def body(carry, _):
        p, state, before = step(*carry, d)
        return (p, state), before

    (params, _), before = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    final = harmful_expected_harm(policy, params, d["harm"])
    return jnp.concatenate([before, final[None]])


def _measurements(world, det, costs, tables, base_tables, mu, lam):
    """:func:`experiments.measure.model_arrays` of the aligned model and of the two optima of
    :func:`experiments.measure.equilibria_arrays`, as one mapped program over the three."""
    base_h, base_b = base_tables
    optima = measure.equilibrium_optima(base_h, world.harm, costs, jnp.full(world.length, mu), lam)
    names = list(optima)
    harmful = [tables[HARMFUL]] + [optima[n] for n in names]
    benign = [tables[1]] + [base_b] * len(names)
    stack = lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    arrays = jax.vmap(measure.model_arrays, in_axes=(0, 0, None, None, None, None, None))(
        stack(harmful), stack(benign), base_h, base_b, world.harm, world.utility, det
    )
    part = lambda i: jax.tree_util.tree_map(lambda x: x[i], arrays)  # noqa: E731
    return part(0), {n: part(i + 1) for i, n in enumerate(names)}


class Stage(NamedTuple):
    """One compiled part of a run program (:func:`run_stages`).

    ``program`` is ``jit(map(vmap(...)))`` over a batch: ``(RunInputs, BaseInputs) -> (params,
    outputs)`` for the first stage (``"align"``, which returns the aligned parameters), ``(RunInputs,
    BaseInputs, params) -> outputs`` for the others (``"measure"`` and one ``"attack:<name>"`` per
    attack)."""

    name: str
    program: Callable
    attack: str | None = None  #: the attack whose curve this stage computes (``out["attack"]``)


def _batched(one):
    """``jit`` of ``lax.map`` of ``one`` over ``vmap``-ed chunks of a batch's runs (and of the
    mapped arguments after ``bases``); the batch size must be a multiple of its chunk size
    (:func:`chunked_size`)."""

    def batch(runs: RunInputs, bases: BaseInputs, *mapped):
        size = runs.seed.shape[0]
        if size != chunked_size(size):
            raise ValueError(
                f"a batch of {size} runs is not a multiple of its chunk size "
                f"{chunk_size(size)}; pad it to chunked_size({size})"
            )
        return jax.lax.map(
            lambda xs: one(xs[0], bases, *xs[1:]), (runs, *mapped), batch_size=chunk_size(size)
        )

    return jax.jit(batch)


def _pick(run: RunInputs, tree):
    """The run's own base model's entry of a tree with a leading base axis."""
    return jax.tree_util.tree_map(lambda x: x[run.base_index], tree)


def run_stages(
    cfg: RunConfig, policy: Policy, world: RefusalWorld, objective: Objective
) -> tuple[Stage, ...]:
    """The run program of a group as :class:`Stage` s compiled separately: the alignment, the
    exact measurements, and each fine-tuning attack. Separate programs compile in parallel
    (:func:`experiments.batch_runs.compile_stages`: on every core a process has, and the workers
    of a sweep start on different stages); one program took about as long to compile as its
    parts one after another. :func:`call_stages` runs them and lists the outputs."""
    a, k = cfg.align, cfg.attack
    det = tuple(jnp.asarray(d) for d in world.determined[:-1])
    costs = measure.recovery_costs(world)

    def align(run: RunInputs, bases: BaseInputs):
        params, out = _pick(run, bases.params), {}
        if a.objective == "none":
            return params, out
        data = {**_pick(run, bases.objective_data), **run.settings}
        opt = make_optimizer(a.optimizer, run.align_learning_rate)
        step_map = step_function(objective, opt, policy, True)
        step_plain = step_function(objective, opt, policy, False)
        align_key = jax.random.fold_in(jax.random.key(run.seed), ALIGN_TAG)

        def steps(step):
            def body(carry, i):
                args = (*carry, jax.random.fold_in(align_key, i), data, world.harm)
                p, state, *rest = step(*args, world.utility)
                return (p, state), tuple(rest)

            return body

        def group(carry, first, size):
            # one recorded step (the gradient map), then size - 1 plain ones: nested scans,
            # not a lax.cond per step, which cost 30% more (15.8 against 12.1 ms per run for
            # the quick preset with grad_map_every = 20, one thread)
            carry, head = steps(step_map)(carry, first)
            head = tuple(h[None] for h in head)
            if size == 1:
                return carry, head
            carry, tail = jax.lax.scan(steps(step_plain), carry, first + jnp.arange(1, size))
            return carry, tuple(jnp.concatenate(pair) for pair in zip(head, tail))

        every, carry = a.grad_map_every, (params, opt.init(params))
        full, extra = divmod(a.steps, every)
        parts = []
        if every == 1 or policy.separable_levels:
            # with separable levels the map step is the plain step's one pull-back plus T
            # norms: every step records it (one step body to compile, not two), and the
            # steps the per-run path does not record are NaN, as there
            carry, hist = jax.lax.scan(steps(step_map), carry, jnp.arange(a.steps))
            if every > 1:
                loss, norms, *rest = hist
                recorded = (jnp.arange(a.steps) % every == 0)[:, None]
                hist = (loss, jnp.where(recorded, norms, jnp.nan), *rest)
            parts.append(hist)
        else:
            if full:
                carry, hist = jax.lax.scan(
                    lambda c, f: group(c, f, every), carry, every * jnp.arange(full)
                )
                parts.append(tuple(h.reshape((full * every,) + h.shape[2:]) for h in hist))
            if extra:  # a last, shorter group
                carry, hist = group(carry, jnp.asarray(full * every), extra)
                parts.append(hist)
        (params, _) = carry
        hist = tuple(jnp.concatenate(h) for h in zip(*parts))
        out.update(zip(("loss", "grad_norms", "expected_harm", "utility"), hist))
        return params, out

    def measurements(run: RunInputs, bases: BaseInputs, params):
        tables = prompt_tables(policy, params)
        out = {"tables": tables[HARMFUL]}
        out["aligned"], out["equilibria"] = _measurements(
            world,
            det,
            costs,
            tables,
            prompt_tables(policy, _pick(run, bases.params)),
            run.settings["mu"],
            run.settings["lam"],
        )
        out["uniforms"] = jax.random.uniform(
            jax.random.fold_in(jax.random.key(run.seed), MEASURE_TAG),
            (cfg.measure.num_paths, world.length),
        )
        return out

    def attack(name: str):
        def one(run: RunInputs, bases: BaseInputs, params):
            opt = make_optimizer(k.optimizer, run.attack_learning_rate)
            d = {
                "reference": prompt_tables(policy, params)[HARMFUL],
                "weights": _pick(run, bases.attack_weights),
                "betas": run.betas,
                "harm": world.harm,
            }
            return _attack_curve(policy, opt, k.steps, params, d, name == "constrained")

        return one

    stages = [
        Stage("align", _batched(align)),
        Stage("measure", _batched(measurements)),
    ]
    if k.steps > 0:
        stages += [
            Stage(f"attack:{name}", _batched(attack(name)), name) for name in attack_names(cfg)
        ]
    return tuple(stages)


def params_shapes(inputs: RunInputs, bases: BaseInputs):
    """Shapes of the aligned parameters the first stage passes on: the base models' with the
    batch's size as leading axis."""
    size = inputs.seed.shape[0]
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((size,) + tuple(np.shape(x))[1:], x.dtype),
        bases.params,
    )


def lower_stages(stages, inputs: RunInputs, bases: BaseInputs) -> list:
    """Every stage's ``jax.stages.Lowered`` for these inputs (traced here, compiled later)."""
    params = params_shapes(inputs, bases)
    return [
        s.program.lower(inputs, bases) if i == 0 else s.program.lower(inputs, bases, params)
        for i, s in enumerate(stages)
    ]


def call_stages(stages, programs, inputs: RunInputs, bases: BaseInputs) -> dict:
    """Run the compiled (or jitted: ``[s.program for s in stages]``) ``programs`` of ``stages``
    in order: ``dict`` of per-run arrays, batch axis first.

    The outputs: ``loss``, ``expected_harm``, ``utility`` ``(B, steps)`` and ``grad_norms``
    ``(B, steps, T)`` (NaN at unrecorded steps) of the alignment; ``tables`` (the aligned
    harmful prompt's level tables); ``aligned`` (:func:`experiments.measure.model_arrays`);
    ``equilibria`` (:func:`experiments.measure.equilibria_arrays`); ``attack`` ``{name: (B,
    steps + 1)}`` the exact ``E[h]`` before and after every attack step; ``uniforms`` ``(B,
    num_paths, T)`` the draws of the martingale paths (:func:`experiments.measure.martingale_paths`).
    """
    inputs, bases = jax.device_put((inputs, bases))  # once, not once per stage
    params, out = programs[0](inputs, bases)
    out = dict(out)
    for stage, program in zip(stages[1:], programs[1:]):
        result = program(inputs, bases, params)
        if stage.attack is not None:
            out.setdefault("attack", {})[stage.attack] = result
        else:
            out.update(result)
    return out
