"""The fine-tuning attack: a few optax steps of SFT on harmful completions of the harmful prompt.

Starting from an aligned model ``π_A``, the attacker minimizes the cross-entropy of a small set of
the base model's harmful responses (``attack.num_examples`` drawn from ``P_{π0}(y | h = 1)``;
0 = the exact distribution). With ``attack.objective = "constrained"`` the fine-tuning goes through
Qi et al.'s token-wise constrained loss with reference ``π_A`` and the ``β_t`` schedule of
:func:`experiments.objectives.qi_betas` - their defence, applied by whoever runs the fine-tuning.
The survival curve is the exact ``E[h]`` before the attack and after every attack step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.base_model import make_optimizer
from experiments.config import RunConfig
from experiments.objectives import constrained_loss, qi_betas, supervised_loss
from experiments.recipes import harmful_attack_weights
from experiments.world import HARMFUL, RefusalWorld
from toy_lm.engines import tree
from toy_lm.models.policies import Policy

__all__ = [
    "attack_betas",
    "attack_names",
    "attack_step_function",
    "fine_tuning_attack",
    "fine_tuning_attacks",
    "harmful_expected_harm",
]


@functools.cache
def _harmful_tables_program(policy: Policy):
    return jax.jit(lambda p: policy.level_tables(p, HARMFUL))


@functools.cache
def _attack_step(policy: Policy, optimizer: str):
    """The jitted attack step with the learning rate as data: ``(learning_rate, params, state,
    data) -> ...``, one program per policy and optimizer kind (the loss selected by data)."""
    return jax.jit(
        lambda learning_rate, *args: attack_step_function(
            policy, make_optimizer(optimizer, learning_rate)
        )(*args)
    )


def harmful_expected_harm(policy: Policy, params, harm) -> jax.Array:
    """The exact ``E[h]`` of the harmful prompt under ``params``: the survival curve's values."""
    return tree.expected_harm(policy.level_tables(params, HARMFUL), harm)


@functools.cache
def _expected_harm_program(policy: Policy):
    """Compiled :func:`harmful_expected_harm` (the end of a curve)."""
    return jax.jit(functools.partial(harmful_expected_harm, policy))


def attack_step_function(
    policy: Policy, opt: optax.GradientTransformation, constrained: bool | None = None
):
    """A pure attack step ``(params, state, data) -> (params, state, E[h] before the step)``.

    ``constrained`` = None: one program serves both attacks, ``data["constrained"]`` (0.0 or 1.0)
    selecting the loss as ``c L_constrained + (1 - c) L_sft`` (the other term enters times an
    exact 0, so the value and the gradient are those of the selected loss); True or False: only
    that loss is computed (what the vectorized program does, which runs both attacks anyway).
    The ``E[h]`` after a step is the next step's "before"; a curve ends with one more
    ``E[h]`` of the final parameters.
    """

    def loss_fn(p, d):
        tables = policy.level_tables(p, HARMFUL)
        if constrained is None:
            c = d["constrained"]
            hard = constrained_loss(tables, d["reference"], d["weights"], d["betas"])
            plain = supervised_loss(tables, d["weights"])
            return c * hard + (1 - c) * plain
        if constrained:
            return constrained_loss(tables, d["reference"], d["weights"], d["betas"])
        return supervised_loss(tables, d["weights"])

    def step(p, state, d):
        before = harmful_expected_harm(policy, p, d["harm"])
        grads = jax.grad(loss_fn)(p, d)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, before

    return step


def attack_betas(cfg: RunConfig) -> np.ndarray:
    """``β_1 ... β_T`` of the constrained attack objective."""
    k = cfg.attack
    return qi_betas(cfg.world.length, k.beta_first, k.beta_early, k.early_until, k.beta_late)


def fine_tuning_attacks(
    cfg: RunConfig, policy: Policy, world: RefusalWorld, params, base_tables, key: jax.Array
) -> dict:
    """The attacks of ``cfg.attack`` (``sft``, ``constrained`` or both): ``{objective: curve}``."""
    return {
        name: fine_tuning_attack(cfg, policy, world, params, base_tables, key, name)
        for name in attack_names(cfg)
    }


def attack_names(cfg: RunConfig) -> tuple[str, ...]:
    """The attacks a run makes: ``("sft",)``, ``("constrained",)`` or both."""
    return ("sft", "constrained") if cfg.attack.objective == "both" else (cfg.attack.objective,)


def fine_tuning_attack(
    cfg: RunConfig,
    policy: Policy,
    world: RefusalWorld,
    params,
    base_tables,
    key: jax.Array,
    objective: str,
) -> dict:
    """Run one attack (``objective`` = ``sft`` or ``constrained``) from ``params``.

    Returns:
      ``{"steps": [0 ... n], "expected_harm": [E[h] before the attack, after each step]}``.
    """
    k = cfg.attack
    weights = harmful_attack_weights(cfg, world, base_tables, key)
    opt = make_optimizer(k.optimizer, k.learning_rate)
    step = _attack_step(policy, k.optimizer)
    d = {
        "reference": _harmful_tables_program(policy)(params),
        "weights": tuple(jnp.asarray(w) for w in weights),
        "betas": jnp.asarray(attack_betas(cfg)),
        "harm": world.harm,
        "constrained": jnp.asarray(float(objective == "constrained")),
    }
    harms = []
    state = opt.init(params)
    for _ in range(k.steps):
        params, state, before = step(k.learning_rate, params, state, d)
        harms.append(float(before))
    harms.append(float(_expected_harm_program(policy)(params, world.harm)))
    return {"steps": list(range(k.steps + 1)), "expected_harm": harms}
