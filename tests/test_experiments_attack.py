"""experiments.attack: survival curves, and the constrained objective's exact first step."""

import jax
import numpy as np
import pytest

from experiments import attack, base_model, train
from experiments.config import with_overrides
from experiments.presets import preset
from experiments.world import make_world


@pytest.fixture(scope="module")
def base():
    cfg = with_overrides(preset("tiny"), {"attack.steps": 3})
    world = make_world(cfg.world)
    policy = base_model.policy_from_config(cfg.policy, world)
    return cfg, world, policy, train.get_base(cfg, world, policy, None)


def test_curves_start_at_the_model_and_the_sft_attack_raises_harm(base):
    cfg, world, policy, b = base
    curves = attack.fine_tuning_attacks(cfg, policy, world, b.params, b.tables, jax.random.key(0))
    assert set(curves) == {"sft", "constrained"}
    from toy_lm.engines import tree

    start = float(tree.expected_harm(b.tables[0], world.harm))
    for curve in curves.values():
        assert curve["steps"] == [0, 1, 2, 3]
        assert curve["expected_harm"][0] == pytest.approx(start, abs=1e-14)
    assert curves["sft"]["expected_harm"][-1] > start
    # at π = π_ref every token weight of the constrained loss is 2(1 - σ(0)) = 1: the first
    # step is exactly the SFT step; afterwards the constraint slows the attack down
    assert curves["constrained"]["expected_harm"][1] == pytest.approx(
        curves["sft"]["expected_harm"][1], abs=1e-14
    )
    assert curves["constrained"]["expected_harm"][-1] < curves["sft"]["expected_harm"][-1]


def test_attack_selection_and_betas(base):
    cfg, world, policy, b = base
    only = with_overrides(cfg, {"attack.objective": "sft", "attack.steps": 1})
    assert set(
        attack.fine_tuning_attacks(only, policy, world, b.params, b.tables, jax.random.key(0))
    ) == {"sft"}
    np.testing.assert_array_equal(attack.attack_betas(cfg), [0.5, 2.0, 2.0, 2.0])
