"""From a configuration to a trainable objective with per-position features.

Every objective is split as ``loss(features(params, batch), batch, data)`` where ``features``
returns a tuple with one entry per position ``t = 1 ... T``: the level-``(t-1)`` tables of both
prompts for the exact objectives, the teacher-forced logits at position ``t`` of the sampled
responses for the sampled ones. The gradient of the loss with respect to the entry of position
``t``, pulled back to the parameters, is the per-position gradient ``g_t`` (only the conditionals
at position ``t`` differentiated, THEORY.md section 2), and ``Σ_t g_t`` is the full gradient;
:mod:`experiments.train` records ``‖g_t‖`` at every step (the position x step map).

``data`` holds every array an objective needs (base tables, costs, supervision weights) and its
scalar settings (:func:`objective_settings`: ``λ``, ``β``, ``μ``, the prompt weights, the
baseline): it is passed to the compiled step as an argument rather than baked in as constants, so
runs that differ only in data share one compiled program - and :mod:`experiments.vectorized`
maps one program over many runs' data with ``jax.vmap``.

Prompts are weighted ``p(harmful) = 1 - w``, ``p(benign) = w`` with ``w = align.utility_weight``;
the cost of the harmful prompt is the harm ``h``, that of the benign prompt ``1 - u``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import data as datasets
from experiments import objectives as sampled
from experiments.config import RunConfig
from experiments.world import HARMFUL, PROMPTS, RefusalWorld
from toy_lm.engines import objectives as exact
from toy_lm.engines import tree
from toy_lm.models.policies import Policy
from toy_lm.tables import prefix_index

__all__ = [
    "BASELINE_CODES",
    "Objective",
    "exact_objective",
    "harmful_attack_weights",
    "make_objective",
    "objective_settings",
    "prompt_weights",
    "reinforce_objective",
    "sampled_dpo_objective",
]


class Objective(NamedTuple):
    """``prepare(params, key, data) -> batch`` (no gradient), ``features(params, batch)`` (a tuple
    over positions) and ``loss(features, batch, data) -> scalar``; ``data`` is a pytree of arrays."""

    name: str
    data: Any
    prepare: Callable[[Any, jax.Array, Any], Any]
    features: Callable[[Any, Any], tuple]
    loss: Callable[[tuple, Any, Any], jax.Array]


def prompt_weights(cfg: RunConfig) -> tuple[float, float]:
    return 1.0 - cfg.align.utility_weight, cfg.align.utility_weight


#: ``align.baseline`` as data: the code of each REINFORCE baseline.
BASELINE_CODES = {"none": 0, "value": 1, "mean": 2}


def objective_settings(cfg: RunConfig) -> dict:
    """The scalar settings of every objective, as data (float64 / int arrays of shape ``()``):
    ``lam`` (``λ``), ``beta`` (``β``), ``mu`` (``μ``), ``prompt_weights`` ``(p(harmful),
    p(benign))`` and ``baseline`` (:data:`BASELINE_CODES`)."""
    a = cfg.align
    w_harm, w_benign = prompt_weights(cfg)
    return {
        "lam": np.float64(a.lam),
        "beta": np.float64(a.beta),
        "mu": np.float64(a.mu),
        "prompt_weights": (np.float64(w_harm), np.float64(w_benign)),
        "baseline": np.int32(BASELINE_CODES[a.baseline]),
    }


def _no_batch(params, key, data):
    return None


# -- exact objectives on level tables -------------------------------------------------------------
def _table_features(policy: Policy):
    def features(params, batch):
        per_prompt = [policy.level_tables(params, x) for x in range(len(PROMPTS))]
        return tuple(tuple(t[level] for t in per_prompt) for level in range(policy.length))

    return features


def _tables(feats) -> tuple[tuple, tuple]:
    return tuple(tuple(level[x] for level in feats) for x in range(len(PROMPTS)))


def _kl(tables, ref, lam):
    return lam * jnp.sum(tree.per_position_kl(tables, ref))


def _harmful_prompt_loss(cfg: RunConfig, world: RefusalWorld, base_h):
    """``(loss(tables, data), extra data)`` of the harmful prompt for the exact objectives."""
    a = cfg.align
    if a.objective == "rlhf":
        return (lambda t, d: exact.kl_regularized_loss(t, d["base"][0], d["harm"], d["lam"])), {}
    if a.objective == "recovery_prefill":
        extra = {
            "q": [jnp.asarray(q) for q in datasets.harmful_prefix_dists(base_h, world.harm)[1:]]
        }
        return (
            lambda t, d: (
                exact.recovery_prefill_loss(
                    t, d["harm"], d["q"], jnp.full(world.length - 1, d["mu"])
                )
                + _kl(t, d["base"][0], d["lam"])
            )
        ), extra
    if a.objective == "recovery_dense":
        extra = {"c": exact.automaton_costs(world.recovery_dfa, world.length, [1])}
        return (
            lambda t, d: (
                exact.dense_recovery_loss(t, d["harm"], d["c"], jnp.full(world.length, d["mu"]))
                + _kl(t, d["base"][0], d["lam"])
            )
        ), extra
    if a.objective == "dpo":
        extra = {"pairs": sampled.dpo_pair_blocks(world.harm)}
        return (lambda t, d: sampled.dpo_loss_blocks(t, d["base"][0], d["pairs"], d["beta"])), extra
    key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
    examples = (
        datasets.refusal_examples(world)
        if a.objective == "sft_refusal"
        else datasets.augmentation_examples(base_h, world)
    )
    extra = {
        "w": datasets.level_weights(
            datasets.sample_examples(key, examples, a.num_examples), world.vocab_size, world.length
        )
    }
    return (lambda t, d: sampled.supervised_loss(t, d["w"])), extra


def _benign_prompt_loss(cfg: RunConfig, world: RefusalWorld, base_b):
    """The benign prompt's part: the same family of objective, with utility as the reward."""
    a = cfg.align
    if a.objective in ("rlhf", "recovery_prefill", "recovery_dense"):
        return (
            lambda t, d: exact.kl_regularized_loss(t, d["base"][1], d["unhelpful"], d["lam"])
        ), {}
    if a.objective == "dpo":
        extra = {"pairs_benign": sampled.dpo_pair_blocks(world.costs[1])}
        return (
            lambda t, d: sampled.dpo_loss_blocks(t, d["base"][1], d["pairs_benign"], d["beta"])
        ), extra
    key = jax.random.fold_in(jax.random.key(cfg.seed), 8)
    helpful = datasets.response_examples(
        datasets.helpful_response_probs(base_b, world), world.vocab_size, world.length
    )
    extra = {
        "w_benign": datasets.level_weights(
            datasets.sample_examples(key, helpful, a.num_examples), world.vocab_size, world.length
        )
    }
    return (lambda t, d: sampled.supervised_loss(t, d["w_benign"])), extra


def exact_objective(cfg: RunConfig, policy: Policy, world: RefusalWorld, base_tables) -> Objective:
    """The exact-expectation objectives: rlhf, dpo, recovery_*, sft_refusal, augmentation."""
    harm_loss, harm_data = _harmful_prompt_loss(cfg, world, base_tables[HARMFUL])
    benign_loss, benign_data = _benign_prompt_loss(cfg, world, base_tables[1])
    data = {
        "base": tuple(tuple(jnp.asarray(t) for t in b) for b in base_tables),
        "harm": world.harm,
        "unhelpful": world.costs[1],
        **harm_data,
        **benign_data,
        **objective_settings(cfg),
    }

    def loss(feats, batch, d):
        tables_h, tables_b = _tables(feats)
        w_harm, w_benign = d["prompt_weights"]
        return w_harm * harm_loss(tables_h, d) + w_benign * benign_loss(tables_b, d)

    return Objective(cfg.align.objective, data, _no_batch, _table_features(policy), loss)


# -- sampled objectives ---------------------------------------------------------------------------
def _sample_features(policy: Policy, keys: tuple[str, ...]):
    """Per-position teacher-forced logits of the batch's responses ``batch[k][x]`` ``(B, T)``."""

    def features(params, batch):
        logits = [
            [policy.teacher_forced_logits(params, batch[k][x], x) for x in range(len(PROMPTS))]
            for k in keys
        ]
        return tuple(
            tuple(tuple(lx[:, t] for lx in lk) for lk in logits) for t in range(policy.length)
        )

    return features


def _token_logp(feats, responses, which, prompt):
    """``log π(y_t | y_<t)`` ``(B, T)`` from the per-position features."""
    logp = jnp.stack([jax.nn.log_softmax(f[which][prompt], axis=-1) for f in feats], axis=1)
    return jnp.take_along_axis(logp, responses[..., None], axis=-1)[..., 0]


def _sample_data(cfg: RunConfig, world: RefusalWorld, base_params) -> dict:
    return {"base_params": base_params, "costs": tuple(world.costs), **objective_settings(cfg)}


def _baseline(code, returns, values, responses, vocab_size: int) -> jax.Array:
    """The baseline selected by ``code`` (:data:`BASELINE_CODES`), ``(B, T)``; data, not a branch,
    so that runs with different baselines share one program (``returns - 0`` is ``returns``)."""
    value = sampled.value_baseline(values, responses, vocab_size)
    mean = sampled.mean_baseline(returns)
    return jnp.where(
        code == BASELINE_CODES["value"], value, jnp.where(code == BASELINE_CODES["mean"], mean, 0.0)
    )


def reinforce_objective(cfg, policy, world, base_params) -> Objective:
    """REINFORCE for ``Σ_x p(x) (E_π[c_x] + λ KL_x)`` with baseline none, ``H_{t-1}`` or mean."""
    a = cfg.align
    vocab_size = world.vocab_size

    def prepare(params, key, d):
        responses, advantages = [], []
        for x in range(len(PROMPTS)):
            y = policy.sample(jax.random.fold_in(key, x), params, a.batch_size, x)
            log_ratio = policy.token_log_probs(params, y, x) - policy.token_log_probs(
                d["base_params"], y, x
            )
            cost = d["costs"][x][prefix_index(y, vocab_size)]
            returns = sampled.returns_to_go(cost, log_ratio, d["lam"])
            values = tree.cond_harm(policy.level_tables(params, x), d["costs"][x])
            returns = returns - _baseline(d["baseline"], returns, values, y, vocab_size)
            responses.append(y)
            advantages.append(jax.lax.stop_gradient(returns))
        return {"y": tuple(responses), "advantage": tuple(advantages)}

    def loss(feats, batch, d):
        return sum(
            d["prompt_weights"][x]
            * sampled.reinforce_surrogate(
                _token_logp(feats, batch["y"][x], 0, x), batch["advantage"][x]
            )
            for x in range(len(PROMPTS))
        )

    return Objective(
        "reinforce",
        _sample_data(cfg, world, base_params),
        prepare,
        _sample_features(policy, ("y",)),
        loss,
    )


def sampled_dpo_objective(cfg, policy, world, base_params) -> Objective:
    """DPO on fresh pairs from ``π_ref = π0`` at every step, labelled by the prompt's cost."""
    a = cfg.align

    def prepare(params, key, d):
        out = {"a": [], "b": [], "ref_a": [], "ref_b": [], "pref": []}
        for x in range(len(PROMPTS)):
            ka, kb = jax.random.split(jax.random.fold_in(key, x))
            ya = policy.sample(ka, d["base_params"], a.batch_size, x)
            yb = policy.sample(kb, d["base_params"], a.batch_size, x)
            out["a"].append(ya)
            out["b"].append(yb)
            out["ref_a"].append(policy.log_prob(d["base_params"], ya, x))
            out["ref_b"].append(policy.log_prob(d["base_params"], yb, x))
            cost = d["costs"][x]
            out["pref"].append(
                sampled.dpo_preferences(
                    cost[prefix_index(ya, world.vocab_size)],
                    cost[prefix_index(yb, world.vocab_size)],
                )
            )
        return {k: tuple(v) for k, v in out.items()}

    def loss(feats, batch, d):
        total = 0.0
        for x in range(len(PROMPTS)):
            lp_a = _token_logp(feats, batch["a"][x], 0, x).sum(axis=1)
            lp_b = _token_logp(feats, batch["b"][x], 1, x).sum(axis=1)
            total = total + d["prompt_weights"][x] * sampled.sampled_dpo_loss(
                lp_a, lp_b, batch["ref_a"][x], batch["ref_b"][x], batch["pref"][x], d["beta"]
            )
        return total

    return Objective(
        "dpo_sampled",
        _sample_data(cfg, world, base_params),
        prepare,
        _sample_features(policy, ("a", "b")),
        loss,
    )


def make_objective(
    cfg: RunConfig, policy: Policy, world: RefusalWorld, base_params, base_tables
) -> Objective:
    """The :class:`Objective` named by ``cfg.align.objective``."""
    name = cfg.align.objective
    if name == "reinforce":
        return reinforce_objective(cfg, policy, world, base_params)
    if name == "dpo_sampled":
        return sampled_dpo_objective(cfg, policy, world, base_params)
    return exact_objective(cfg, policy, world, base_tables)


def harmful_attack_weights(cfg: RunConfig, world: RefusalWorld, base_tables, key) -> tuple:
    """Level weights of the fine-tuning attack's data: base harmful completions, harmful prompt."""
    examples = datasets.response_examples(
        datasets.harmful_response_probs(base_tables[HARMFUL], world), world.vocab_size, world.length
    )
    return datasets.level_weights(
        datasets.sample_examples(key, examples, cfg.attack.num_examples),
        world.vocab_size,
        world.length,
    )
