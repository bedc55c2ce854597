"""experiments.figures: every figure is written as PNG and SVG; the fitted slope is right."""

import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import figures, labels
from experiments.config import with_overrides
from experiments.presets import preset
from experiments.train import train_and_evaluate


@pytest.fixture(scope="module")
def tiny_results():
    cfgs = [
        with_overrides(preset("tiny"), {"align.objective": o, "align.steps": 5, "attack.steps": 2})
        for o in ("none", "rlhf", "augmentation")
    ]
    return [train_and_evaluate(c, None) for c in cfgs]


def test_all_figures_are_written(tmp_path, tiny_results):
    paths = figures.make_figures(str(tmp_path), tiny_results)
    stems = {os.path.splitext(os.path.basename(p))[0] for p in paths}
    assert stems == {
        "kl_per_position",
        "prefill_asr",
        "grad_norm_map",
        "information_vs_kl",
        "martingale_paths",
        "attack_survival",
    }
    for path in paths:
        assert os.path.getsize(path) > 1000
    assert sum(p.endswith(".svg") for p in paths) == sum(p.endswith(".png") for p in paths)
    with open(os.path.join(tmp_path, "figures", "kl_per_position.svg")) as fh:
        assert "<svg" in fh.read(2000)


def test_a_single_run_draws_without_warnings(tmp_path, tiny_results):
    # warnings are errors in this suite: an empty panel must not make matplotlib warn
    assert len(figures.make_figures(str(tmp_path), tiny_results[1:2])) == 12


def test_labels_name_objectives_and_varying_settings(tiny_results):
    # the tables of train and sweep use the labels: their module stays free of matplotlib
    code = "import sys, experiments.labels; print('matplotlib' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
    assert labels.labels(tiny_results) == ["base", "KL-regularized RLHF", "recovery augmentation"]
    twice = [
        tiny_results[1],
        dict(tiny_results[1], config={**tiny_results[1]["config"], "seed": 1}),
    ]
    assert labels.labels(twice) == ["KL-regularized RLHF (seed=0)", "KL-regularized RLHF (seed=1)"]


def test_fitted_slope_recovers_a_power_law():
    x = np.geomspace(1e-4, 1e-1, 7)
    assert figures.fitted_slope(x, 3.0 * x**1.5) == pytest.approx(1.5, abs=1e-12)
    assert figures.fitted_slope([0.0, 1e-3, 1e-2], [0.0, 2e-3, 2e-2]) == pytest.approx(1.0)
    assert np.isnan(figures.fitted_slope([0.0, 1.0], [1.0, 0.0]))
