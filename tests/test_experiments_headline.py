"""experiments.headline: depth measures, the shape criteria and the summary, from real runs."""

import json

import pytest

from experiments import headline
from experiments.config import with_overrides
from experiments.train import train_and_evaluate


def test_headline_configs():
    configs = headline.headline_configs(quick=True)
    assert [c.align.objective for c in configs] == list(headline.OBJECTIVES)
    assert len({c.world for c in configs}) == 1 and len({c.base for c in configs}) == 1
    dpo = configs[headline.OBJECTIVES.index("dpo")]
    assert dpo.align.learning_rate == pytest.approx(configs[1].align.learning_rate / dpo.align.beta)
    assert headline.headline_configs(False, "transformer")[0].policy.kind == "transformer"


def test_depth_measures():
    base = {"prefill_asr": [0.8, 0.9, 1.0], "prefill_asr_floor": [0.0, 0.1, 1.0]}
    d = headline.depth({"per_position_kl": [3.0, 1.0, 0.0], "prefill_asr": [0.2, 0.5, 1.0]}, base)
    assert d["kl_centroid"] == pytest.approx(1.25)
    assert d["kl_share_first_position"] == pytest.approx(0.75)
    assert d["asr_relative_to_base"][:2] == pytest.approx([0.25, 0.5])
    assert d["asr_relative_to_base"][2] is None  # no room above the floor: undefined


def _fake(kl, rel):
    return {"kl_centroid": kl, "asr_relative_to_base": rel}


def test_shape_criteria_can_hold_and_fail():
    base = {"determined_fraction": [0.0, 0.1, 0.9]}
    good = {
        "rlhf": _fake(1.1, [0.2, 0.8, None]),
        "dpo": _fake(1.2, [0.1, 0.7, None]),
        "augmentation": _fake(2.5, [0.0, 0.1, None]),
        "recovery_prefill": _fake(2.0, [0.0, 0.2, None]),
    }
    shape = headline.shape_criteria(good, base)
    assert shape["undecided_prefill_lengths"] == [0, 1]
    assert all(shape[k]["holds"] for k in shape if k != "undecided_prefill_lengths")
    bad = dict(good, rlhf=_fake(3.0, [0.9, 0.3, None]), augmentation=_fake(2.5, [0.0, 0.9, None]))
    shape = headline.shape_criteria(bad, base)
    assert not any(shape[k]["holds"] for k in shape if k != "undecided_prefill_lengths")


@pytest.fixture(scope="module")
def summary():
    configs = [
        with_overrides(
            c,
            {
                "align.steps": 5,
                "attack.steps": 1,
                "world.length": 4,
                "world.num_harmful": 2,
                "base.steps": 150,
            },
        )
        for c in headline.headline_configs(quick=True)
        if c.align.objective in ("none", "rlhf", "recovery_prefill")
    ]
    results = [train_and_evaluate(c, None) for c in configs]
    return headline.build_summary(results, quick=True, seconds=1.0)


def test_summary_has_the_promised_fields(summary):
    json.dumps(summary)  # plain JSON
    base = summary["base"]
    assert len(base["prefill_asr"]) == len(base["harm_information"]) == 4
    for name in (
        "base",
        "rlhf",
        "recovery_prefill",
        "rlhf_equilibrium",
        "recovery_dense_equilibrium",
    ):
        entry = summary["objectives"][name]
        for key in ("expected_harm", "per_position_kl", "prefill_asr", "role"):
            assert key in entry, (name, key)
        assert len(entry["per_position_kl"]) == len(entry["prefill_asr"]) == 4
    for name in ("base", "rlhf", "recovery_prefill"):
        assert "utility" in summary["objectives"][name]
    assert summary["objectives"]["base"]["per_position_kl"] == [0.0] * 4
    assert summary["objectives"]["rlhf"]["per_position_kl_beyond_horizon"] == [0.0] * 4
    horizon = summary["horizon"]
    assert horizon["harmful_path_horizon"] == 3 and horizon["positions_beyond_horizon"] == [4]
    assert "beyond" in horizon["explanation"]
