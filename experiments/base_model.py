"""Base models: each policy kind trained by supervised fine-tuning on the synthetic base behaviour.

A pretrained model is imitated, not hand-set: the policy (tabular, Markov or transformer, with two
prompts) starts from a small random initialization and minimizes the cross-entropy to the
synthetic base behaviour of :mod:`experiments.world` with optax,

``L_SFT(θ) = Σ_x p(x) Σ_l Σ_{u,v} W_l^x[u, v] (-log π_θ(v | u, x))``,

where ``W^x`` are the level weights of the behaviour (exact: ``P_data(u) π_data(v|u)``; or a
sampled dataset of ``num_examples`` responses per prompt). The result is the reference ``π0`` of
every alignment run; :func:`sft_gap` reports how far it is from the behaviour it imitates.
"""

from __future__ import annotations

import functools
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import data
from experiments.config import PolicyConfig, RunConfig
from experiments.objectives import supervised_loss
from experiments.world import PROMPTS, RefusalWorld
from toy_lm.errors import ConfigError, InputError
from toy_lm.io import load_npz, npz_shapes
from toy_lm.models.policies import Policy
from toy_lm.models.policy_factory import init_params, make_policy
from toy_lm.outputs import save_npz

__all__ = [
    "BaseModel",
    "all_tables",
    "behaviour_weights",
    "load_base",
    "make_optimizer",
    "policy_from_config",
    "prompt_tables",
    "save_base",
    "sft_gap",
    "sft_step_function",
    "tables_program",
    "train_base",
]


def policy_from_config(cfg: PolicyConfig, world: RefusalWorld) -> Policy:
    """The policy of a configuration (two prompts: harmful and benign).

    A thin adapter: it translates ``cfg`` into the options of the one policy factory,
    :func:`toy_lm.models.policy_factory.make_policy` (``cfg.kind`` is one of its kind names).
    """
    options = {
        "markov": dict(order=cfg.markov_order),
        "transformer": dict(
            d_model=cfg.d_model, num_heads=cfg.num_heads, num_layers=cfg.num_layers
        ),
    }.get(cfg.kind, {})
    try:
        return make_policy(
            cfg.kind, world.vocab_size, world.length, num_prompts=len(PROMPTS), **options
        )
    except InputError as err:  # pragma: no cover - validated by experiments.config
        raise ConfigError(f"policy.kind: {err}") from None


def prompt_tables(policy: Policy, params) -> tuple[tuple, ...]:
    """Level tables of every prompt: ``(tables_harmful, tables_benign)``."""
    return tuple(policy.level_tables(params, prompt) for prompt in range(len(PROMPTS)))


@functools.cache
def tables_program(policy: Policy):
    """Compiled ``params -> prompt_tables`` (one program per policy, shared by every run)."""
    return jax.jit(lambda p: prompt_tables(policy, p))


def all_tables(policy: Policy, params) -> tuple[tuple, ...]:
    """:func:`prompt_tables` as numpy arrays, computed in one compiled call."""
    return jax.tree_util.tree_map(np.asarray, tables_program(policy)(params))


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``optax.sgd`` (plain gradient descent, the theory's gradient flow) or ``optax.adam``."""
    return optax.sgd(learning_rate) if name == "sgd" else optax.adam(learning_rate)


def behaviour_weights(world: RefusalWorld, key: jax.Array, num_examples: int):
    """Level weights of the synthetic behaviour per prompt (exact, or ``num_examples`` samples)."""
    out = []
    for prompt, tables in enumerate(world.behaviour):
        if num_examples == 0:
            out.append(data.policy_weights(tables))
        else:
            examples = data.response_examples(
                data.response_probs(tables), world.vocab_size, world.length
            )
            sampled = data.sample_examples(jax.random.fold_in(key, prompt), examples, num_examples)
            out.append(data.level_weights(sampled, world.vocab_size, world.length))
    return tuple(out)


class BaseModel(NamedTuple):
    """A trained base model ``π0``: parameters, its level tables per prompt, and diagnostics."""

    params: object
    tables: tuple
    sft_gap: list
    seconds: float


def sft_gap(tables, world: RefusalWorld) -> list[float]:
    """``KL(behaviour ‖ π0)`` per prompt (sequence level, nats): how well SFT imitated.

    ``Σ_l Σ_{u,v} P_b(u) π_b(v|u) (log π_b(v|u) - log π0(v|u))`` (chain rule), in numpy.
    """
    out = []
    for x in range(len(PROMPTS)):
        weights = data.policy_weights(world.behaviour[x])
        gap = 0.0
        for w, zb, z in zip(weights, world.behaviour[x], tables[x]):
            gap += float(np.sum(w * (_log_softmax(zb) - _log_softmax(z))))
        out.append(gap)
    return out


def _log_softmax(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@functools.cache
def _sft_step(policy: Policy, optimizer: str, learning_rate: float):
    return jax.jit(sft_step_function(policy, make_optimizer(optimizer, learning_rate)))


def sft_step_function(policy: Policy, opt: optax.GradientTransformation):
    """A pure SFT step ``(params, state, weights) -> (params, state)`` of ``L_SFT`` (weights per
    prompt, :func:`behaviour_weights`)."""

    def loss_fn(p, w):
        tables = prompt_tables(policy, p)
        return sum(supervised_loss(tables[x], w[x]) for x in range(len(PROMPTS))) / 2

    def step(p, state, w):
        grads = jax.grad(loss_fn)(p, w)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    return step


def train_base(cfg: RunConfig, world: RefusalWorld, policy: Policy, key: jax.Array) -> BaseModel:
    """SFT of ``policy`` on the synthetic base behaviour (``cfg.base``), from ``key``."""
    start = time.perf_counter()
    init_key, data_key = jax.random.split(key)
    params = init_params(policy, init_key, scale=cfg.policy.init_scale)
    weights = behaviour_weights(world, data_key, cfg.base.num_examples)
    opt = make_optimizer(cfg.base.optimizer, cfg.base.learning_rate)
    step = _sft_step(policy, cfg.base.optimizer, cfg.base.learning_rate)
    state = opt.init(params)
    for _ in range(cfg.base.steps):
        params, state = step(params, state, weights)
    tables = all_tables(policy, params)
    return BaseModel(params, tables, sft_gap(tables, world), time.perf_counter() - start)


# -- a cache, so that the runs of one sweep share their base model ------------------------------
def save_base(path: str, base: BaseModel) -> None:
    """Write a base model's parameter leaves (and diagnostics) to ``path`` atomically."""
    leaves = jax.tree_util.tree_leaves(base.params)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["sft_gap"] = np.asarray(base.sft_gap)
    arrays["seconds"] = np.asarray(base.seconds)
    save_npz(path, arrays, tag="base")


def load_base(path: str, policy: Policy, cfg: PolicyConfig) -> BaseModel | None:
    """The cached base model at ``path`` (None when absent or unreadable)."""
    if not os.path.exists(path):
        return None
    template = jax.eval_shape(lambda: init_params(policy, jax.random.key(0)))
    treedef = jax.tree_util.tree_structure(template)
    keys = [f"leaf_{i}" for i in range(treedef.num_leaves)] + ["sft_gap", "seconds"]
    try:  # a damaged cache (truncated, rewritten, wrong shapes) is retrained, not fatal
        if set(keys) - set(npz_shapes(path)):
            return None
        npz = load_npz(path, keys)
        leaves = [jnp.asarray(npz[f"leaf_{i}"]) for i in range(treedef.num_leaves)]
        gap, seconds = [float(v) for v in npz["sft_gap"]], float(npz["seconds"])
        if [np.shape(x) for x in leaves] != [
            np.shape(x) for x in jax.tree_util.tree_leaves(template)
        ]:
            return None
    except (InputError, TypeError, ValueError):
        return None
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    tables = all_tables(policy, params)
    return BaseModel(params, tables, gap, seconds)
