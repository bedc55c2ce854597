"""T3-prompts: the prompt-mixture check passes, fails on its planted errors, and is the only check
that runs on a mixture instance."""

import numpy as np
import pytest

from proofs_check.instances import make_instance, make_mixture_instance
from proofs_check.registry import REGISTRY, all_checks
from toy_lm.errors import InputError


@pytest.fixture(scope="module")
def mixture():
    return make_mixture_instance("tabular", 2, 3, seed=1, taus=(1, 2), weights=(0.7, 0.3))


def test_mixture_check_passes_and_each_planted_error_fails_a_comparison(mixture):
    check = REGISTRY["T3-prompts"]
    result = check.run(mixture)
    assert [p.status for p in result.parts] == ["pass", "pass"]
    assert all(p.compared > 0 for p in result.parts)
    assert result.measurements["horizons"] == [1, 2]
    planted = [p.name for p in check.plants_for(mixture)]
    assert planted == ["prompt-weights-ignored", "horizon-min-over-prompts"]
    for plant in planted:
        parts = check.run(mixture, plant).parts
        assert any(p.status == "fail" for p in parts), plant
        assert not any(p.status == "error" for p in parts), plant


def test_only_mixture_checks_run_on_a_mixture_and_never_elsewhere(mixture):
    single = make_instance("tabular", 2, 3, seed=0, tau=1)
    on_mixture = {c.id for c in all_checks() if c.applies(mixture)}
    assert on_mixture == {"T3-prompts"}
    assert not REGISTRY["T3-prompts"].applies(single)


def test_mixture_weights_are_validated():
    with pytest.raises(InputError, match="sum to 1"):
        make_mixture_instance("tabular", 2, 3, seed=0, taus=(1, 2), weights=(0.5, 0.6))
    with pytest.raises(InputError, match="one horizon per prompt"):
        make_mixture_instance("tabular", 2, 3, seed=0, taus=(1,), weights=(0.5, 0.5))


def test_uniform_weights_make_the_weights_plant_inapplicable():
    inst = make_mixture_instance("tabular", 2, 3, seed=0, taus=(1, 1), weights=(0.5, 0.5))
    assert [p.name for p in REGISTRY["T3-prompts"].plants_for(inst)] == []
    assert np.allclose(inst.prompts.weights, 0.5)
