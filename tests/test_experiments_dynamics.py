"""experiments.dynamics (``optimum-vs-dynamics``): the split, the summary, the figures, and the
CLI's one-line errors. Fast: the ``tiny`` world, two optimizers, one budget, no transformer. Slow
(``-m slow``): every optimizer and the transformer on the tiny world, and the ``--quick`` CLI run."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import dynamics
from experiments.cli.main import main
from experiments.config import with_overrides
from experiments.presets import preset


def small_setting() -> dynamics.Setting:
    """The ``tiny`` world (T = 4, K = 2), two budgets, and a 5-step SFT transformer base."""
    tiny = preset("tiny")
    transformer = with_overrides(
        tiny,
        {
            "policy.kind": "transformer",
            "policy.d_model": 8,
            "policy.num_heads": 1,
            "base.steps": 5,
            "base.optimizer": "adam",
            "base.learning_rate": 0.01,
        },
    )
    return dynamics.Setting(
        tiny, transformer, (10, 20), (10,), {"gd": 1.0, "natural": 1.0, "adam": 0.01}
    )


def test_fast_small_run(tmp_path):
    setting = dataclasses.replace(
        small_setting(), budgets=(20,), transformer_budgets=(), optimizers=("gd", "natural")
    )
    s = dynamics.run_dynamics(str(tmp_path), setting=setting, log=lambda msg: None)
    dec = np.asarray(s["split"]["decided_mass"])
    np.testing.assert_allclose(dec + np.asarray(s["split"]["undecided_mass"]), 1.0, atol=1e-12)
    for parts in (*s["models"].values(), *s["final"].values()):
        np.testing.assert_allclose(parts["decided_part"], dec, atol=1e-12)
    assert set(s["trained"]) == {"gd", "natural"}
    assert s["recovery"]["natural"]["recovered"] >= s["recovery"]["gd"]["recovered"]
    assert (
        json.loads((tmp_path / "summary.json").read_text())["experiment"] == "optimum-vs-dynamics"
    )
    assert all((tmp_path / rel).stat().st_size > 1000 for rel in s["figures"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ovd")
    return out, dynamics.run_dynamics(str(out), setting=small_setting(), log=lambda msg: None)


@pytest.mark.slow
def test_summary_splits_the_attack_into_decided_and_undecided(run):
    out, s = run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == "optimum-vs-dynamics" and on_disk["split"] == s["split"]
    dec, und = np.asarray(s["split"]["decided_mass"]), np.asarray(s["split"]["undecided_mass"])
    np.testing.assert_allclose(dec + und, 1.0, atol=1e-12)  # q_k is a distribution
    for name, parts in {**s["models"], **s["final"]}.items():
        total = np.asarray(parts["decided_part"]) + np.asarray(parts["undecided_part"])
        np.testing.assert_allclose(parts["asr"], total, atol=1e-12)
        if not name.startswith("transformer"):
            # At decided forced prefixes H = 1 for every policy: the decided part is the mass.
            np.testing.assert_allclose(parts["decided_part"], dec, atol=1e-12)
    # The optimum moves undecided prefixes (T7b): its undecided ASR is below the base's.
    base = np.mean(s["models"]["base"]["undecided_conditional"])
    assert np.mean(s["models"]["optimum"]["undecided_conditional"]) < base
    assert set(s["trained"]) == {"gd", "natural", "adam", "transformer_adam"}
    assert list(s["trained"]["gd"]) == ["10", "20"] and list(s["trained"]["transformer_adam"]) == [
        "10"
    ]


@pytest.mark.slow
def test_recovery_records_and_fit(run):
    _, s = run
    for fit in s["recovery"].values():
        assert fit["recovered"] + fit["censored"] == len(fit["points"]) > 0
        for p, steps, mean_p in fit["points"]:
            assert 0 < p <= 1
            assert steps is None or (1 <= steps <= fit["budget"] and 0 < mean_p <= 1)
    # Natural gradient is not slowed by P(u): it recovers at least as many prefixes as plain GD.
    assert s["recovery"]["natural"]["recovered"] >= s["recovery"]["gd"]["recovered"]
    assert s["findings"] and all(isinstance(line, str) for line in s["findings"])


@pytest.mark.slow
def test_figures_are_written(run):
    out, s = run
    assert len(s["figures"]) == 6
    for rel in s["figures"]:
        assert (out / rel).stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["experiment", "optimum-vs-dynamics", "--out", "FILE"], "is not a folder"),
        (["experiment", "optimum-vs-dynamics", "--out", "OUT", "--policy", "markov"], "--policy"),
    ],
)
def test_bad_arguments_give_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a in ("OUT", "FILE") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "OUT").exists()


@pytest.mark.slow
def test_quick_cli_run(tmp_path, capsys):
    assert main(["experiment", "optimum-vs-dynamics", "--quick", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["quick"] and max(s["budgets"]) == 10000 and "transformer_adam" in s["recovery"]
    assert "slope" in capsys.readouterr().out
