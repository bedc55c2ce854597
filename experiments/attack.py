"""The fine-tuning attack: a few optax steps of SFT on harmful completions of the harmful prompt.

Starting from an aligned model ``π_A``, the attacker minimizes the cross-entropy of a small set of
the base model's harmful responses (``attack.num_examples`` drawn from ``P_{π0}(y | h = 1)``;
0 = the exact distribution). With ``attack.objective = "constrained"`` the fine-tuning goes through
Qi et al.'s token-wise constrained loss with reference ``π_A`` and the ``β_t`` schedule of
:func:`experiments.objectives.qi_betas` - their defence, applied by whoever runs the fine-tuning.
The survival curve is the exact ``E[h]`` after every attack step.
"""

from __future__ import annotations

import jax
import numpy as np
import optax

from experiments.base_model import make_optimizer
from experiments.config import RunConfig
from experiments.objectives import constrained_loss, qi_betas, supervised_loss
from experiments.recipes import harmful_attack_weights
from experiments.world import HARMFUL, RefusalWorld
from toy_lm import tree
from toy_lm.policies import Policy


def _harmful_tables(policy: Policy, params):
    return jax.jit(lambda p: policy.level_tables(p, HARMFUL))(params)


def attack_betas(cfg: RunConfig) -> np.ndarray:
    """``β_1 ... β_T`` of the constrained attack objective."""
    k = cfg.attack
    return qi_betas(cfg.world.length, k.beta_first, k.beta_early, k.early_until, k.beta_late)


def fine_tuning_attacks(cfg: RunConfig, policy: Policy, world: RefusalWorld, params, base_tables,
                        key: jax.Array) -> dict:
    """The attacks of ``cfg.attack`` (``sft``, ``constrained`` or both): ``{objective: curve}``."""
    names = ("sft", "constrained") if cfg.attack.objective == "both" else (cfg.attack.objective,)
    return {name: fine_tuning_attack(cfg, policy, world, params, base_tables, key, name)
            for name in names}


def fine_tuning_attack(cfg: RunConfig, policy: Policy, world: RefusalWorld, params, base_tables,
                       key: jax.Array, objective: str) -> dict:
    """Run one attack (``objective`` = ``sft`` or ``constrained``) from ``params``.

    Returns:
      ``{"steps": [0..n], "expected_harm": [E[h] after each step], "prefill_asr": ASR(k) of the
      attacked model after the last step}``.
    """
    k = cfg.attack
    weights = harmful_attack_weights(cfg, world, base_tables, key)
    reference = _harmful_tables(policy, params)
    betas = attack_betas(cfg)
    opt = make_optimizer(k.optimizer, k.learning_rate)

    def loss_fn(p, d):
        tables = policy.level_tables(p, HARMFUL)
        if objective == "constrained":
            return constrained_loss(tables, d["reference"], d["weights"], d["betas"])
        return supervised_loss(tables, d["weights"])

    @jax.jit
    def step(p, state, d):
        grads = jax.grad(loss_fn)(p, d)
        updates, state = opt.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return p, state, tree.expected_harm(policy.level_tables(p, HARMFUL), d["harm"])

    d = {"reference": reference, "weights": weights, "betas": betas, "harm": world.harm}
    harms = [float(_expected_harm(reference, world.harm))]
    state = opt.init(params)
    for _ in range(k.steps):
        params, state, harm = step(params, state, d)
        harms.append(float(harm))
    final = _harmful_tables(policy, params)
    return {"steps": list(range(k.steps + 1)), "expected_harm": harms,
            "prefill_asr": np.asarray(_asr_curve(final, world.harm, base_tables[HARMFUL])).tolist()}


_expected_harm = jax.jit(tree.expected_harm)
_asr_curve = jax.jit(tree.prefill_asr_curve)
