"""experiments.cli.experiment: the train / sweep / figures / experiment commands, and their one-line errors."""

import json
import os
import subprocess
import sys

import pytest

import experiments
from experiments.cli.main import main


def test_public_api_is_importable():
    for name in experiments.__all__:
        assert getattr(experiments, name) is not None
    assert {"train_and_evaluate", "run_sweep", "make_figures", "run_headline", "RunConfig"} <= set(
        experiments.__all__
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "no-such-preset"], "not a preset name"),
        (["sweep", "nothing.toml", "--out", "x"], "no such file"),
        (
            ["sweep", "nope", "--out", "x"],
            "not a built-in sweep (quick, objectives, lambda, baselines)",
        ),
        (
            ["experiment", "shallow-vs-deep", "--out", "x", "--jobs", "0"],
            "--jobs=0 must be at least 1",
        ),
    ],
)
def test_bad_input_gives_one_line_and_status_2(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "content, words",
    [
        ('preset = "tiny"\n[align]\nobjective = "ppo"\n', "unknown align.objective 'ppo'"),
        ('preset = "tiny"\n[world]\nnum_harmful = 9\n', "exceeds world.length"),
        ('preset = "tiny"\n[align]\nlearning_rate = -1.0\n', "must be a positive number"),
    ],
)
def test_bad_configuration_files(tmp_path, capsys, content, words):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    for argv in (
        ["train", str(path), "--out", str(tmp_path / "o")],
        ["sweep", str(path), "--out", str(tmp_path / "o")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


def test_figures_of_an_empty_folder(tmp_path, capsys):
    assert main(["figures", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_train_a_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARM_HORIZON_JAX_CACHE", "off")
    path = tmp_path / "run.toml"
    path.write_text(
        'preset = "tiny"\nname = "mine"\n[align]\nobjective = "recovery_prefill"\n'
        "steps = 5\n[attack]\nsteps = 1\n"
    )
    out = tmp_path / "out"
    assert main(["train", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recovery penalty (prefill)" in printed and "E[h]" in printed
    runs = os.listdir(out / "runs")
    assert len(runs) == 1
    result = json.loads((out / "runs" / runs[0]).read_text())
    assert result["config"]["name"] == "mine"
    assert (out / "results.csv").exists() and (out / "results.parquet").exists()
    assert main(["train", str(path), "--out", str(out), "--json"]) == 0  # the same, as JSON
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert [r["name"] for r in rows] == ["base", "recovery penalty (prefill)"]


def _opt_in_slow(request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long run: opt in with -m slow")


@pytest.mark.slow
def test_quick_headline_end_to_end(tmp_path, request):
    """The command a reviewer runs: a few minutes on two cores."""
    _opt_in_slow(request)
    out = tmp_path / "hl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.cli.main",
            "experiment",
            "shallow-vs-deep",
            "--quick",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    for name in ("base", "rlhf", "dpo", "augmentation", "recovery_prefill"):
        for key in ("expected_harm", "per_position_kl", "prefill_asr", "utility"):
            assert key in summary["objectives"][name]
    assert summary["base"]["harm_information"] and summary["base"]["prefill_asr"]
    assert len(os.listdir(out / "figures")) == 12
