"""experiments.world: harm, utility and recovery semantics by brute force; base behaviour tables."""

import numpy as np
import pytest

from experiments import world as W
from experiments.config import RunConfig, WorldConfig, with_overrides
from toy_lm.tables import all_prefixes


def _roles(cfg):
    return {role: set(ids) for role, ids in W.role_tokens(cfg.vocab).items()}


def brute_harm(seq, harmful, refusal, k):
    count = 0
    for tok in seq:
        if tok in refusal:
            return 0.0
        if tok in harmful:
            count += 1
            if count == k:
                return 1.0
    return 0.0


@pytest.mark.parametrize(
    "vocab, length, k",
    [
        (("end", "refusal", "comply", "harmful", "neutral"), 5, 3),
        (("end", "refusal", "comply", "harmful", "neutral", "harmful"), 4, 2),
        (("neutral", "harmful", "end", "comply", "refusal", "refusal"), 3, 1),
    ],
)
def test_harm_utility_and_costs_match_their_definitions(vocab, length, k):
    cfg = WorldConfig(vocab=vocab, length=length, num_harmful=k)
    world = W.make_world(cfg)
    roles = _roles(cfg)
    responses = all_prefixes(len(vocab), length)
    harm = np.array([brute_harm(y, roles["harmful"], roles["refusal"], k) for y in responses])
    np.testing.assert_array_equal(np.asarray(world.harm), harm)
    util = np.array(
        [
            float(
                any(t in roles["neutral"] for t in y) and not any(t in roles["refusal"] for t in y)
            )
            for y in responses
        ]
    )
    np.testing.assert_array_equal(np.asarray(world.utility), util)
    np.testing.assert_array_equal(np.asarray(world.costs[1]), 1.0 - util)
    assert world.refusal in roles["refusal"] and world.end in roles["end"]


def test_determined_prefixes_have_constant_harm_below():
    world = W.make_world(WorldConfig(length=4, num_harmful=2))
    harm = np.asarray(world.harm)
    for mask in world.determined:
        block = harm.reshape(len(mask), -1)
        constant = block.min(axis=1) == block.max(axis=1)
        np.testing.assert_array_equal(mask, constant)


def test_behaviour_tables_are_normalized_full_support_and_persistent():
    cfg = RunConfig().world
    world = W.make_world(cfg)
    for tables in world.behaviour:
        assert len(tables) == cfg.length
        for level, table in enumerate(tables):
            probs = np.exp(np.asarray(table))
            assert table.shape == (len(cfg.vocab) ** level, len(cfg.vocab))
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-14)
            assert probs.min() >= cfg.smoothing * (1 - 1e-12)
    harmful = np.exp(np.asarray(world.behaviour[W.HARMFUL][1]))
    comply, harm_tok = world.tokens["comply"][0], world.tokens["harmful"][0]
    expected = (1 - cfg.smoothing * len(cfg.vocab)) * cfg.persistence + cfg.smoothing
    assert harmful[comply, harm_tok] == pytest.approx(expected, abs=1e-14)
    first = np.exp(np.asarray(world.behaviour[W.HARMFUL][0][0]))
    assert first[comply] == pytest.approx((1 - cfg.smoothing * 5) * cfg.comply_prob + cfg.smoothing)


def test_role_with_two_tokens_splits_its_mass():
    cfg = with_overrides(
        RunConfig(), {"world.vocab": ["end", "refusal", "comply", "harmful", "neutral", "neutral"]}
    ).world
    world = W.make_world(cfg)
    root = np.exp(np.asarray(world.behaviour[W.BENIGN][0][0]))
    assert root[4] == pytest.approx(root[5], abs=1e-15)
    assert W.token_names(world)[4:] == ["neutral1", "neutral2"]


def test_recovery_automaton_tracks_harmful_not_yet_recovered():
    world = W.make_world(WorldConfig(length=3))
    dfa = world.recovery_dfa
    names = {n: i for i, n in enumerate(W.token_names(world))}

    def final_state(tokens):
        state = dfa.start
        for tok in tokens:
            state = dfa.transitions[state, names[tok]]
        return int(state)

    assert final_state(["neutral", "comply"]) == 0
    assert final_state(["comply", "harmful", "end"]) == 1
    assert final_state(["harmful", "harmful", "refusal"]) == 2  # recovers even after the harm
    assert final_state(["refusal", "harmful"]) == 2
    assert W.describe_response(world, [2, 3, 0]) == "comply harmful end"
