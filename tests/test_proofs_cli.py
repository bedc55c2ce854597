"""Tests of ``harm-horizon check``: held-out settings, JSON records, exit statuses."""

import dataclasses
import json

import pytest

from experiments.cli.main import main
from proofs_check import registry
from proofs_check.results import Part

HELD_OUT = ["--vocab", "4", "--length", "2", "--horizon", "1", "--seeds", "2", "--first-seed", "8"]


def test_held_out_settings_pass_every_check_on_every_parameterization(tmp_path, capsys):
    """Other V, T, horizon and seeds than the built-in suite; binary, soft and automaton harms."""
    path = tmp_path / "results.json"
    assert main(["check", *HELD_OUT, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "all good" in out and "theorem checks" in out
    records = json.loads(path.read_text())
    assert {r["instance"].split()[0] for r in records} == {
        "tabular",
        "positional",
        "markov",
        "transformer",
        "mlp",
    }
    assert {r["instance"].rsplit("[", 1)[-1] for r in records if "[" in r["instance"]} >= {
        "xla]",
        "markov]",
    }
    assert {r["check"] for r in records} == {c.id for c in registry.all_checks()}
    for r in records:
        assert r["passed"] is True and r["plant"] is None
        for field in (
            "statement",
            "lhs",
            "rhs",
            "lhs_summary",
            "rhs_summary",
            "max_abs_error",
            "max_rel_error",
            "tolerance",
            "tolerance_derivation",
            "dtype",
        ):
            assert field in r
        assert r["dtype"] == "float64"
        for part in r["parts"]:
            if part["kind"] == "exact" and part["tolerance"] > 0:
                assert part["tolerance_derivation"].startswith("eps(float64)")


def test_negative_controls_detects_planted_errors(capsys):
    assert (
        main(
            [
                "check",
                "--negative-controls",
                "--theorem",
                "T4",
                "T10",
                *HELD_OUT,
                "--policy",
                "tabular",
                "transformer",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "DETECTED" in out and "MISSED" not in out


def test_a_failing_check_gives_exit_status_1(monkeypatch, capsys):
    broken = registry.REGISTRY["T4"]

    def wrong(inst, plant):
        return [Part("planted", "a", "b", [], [], 1.0, 1.0, 0.0, "none", "float64", False)]

    monkeypatch.setitem(registry.REGISTRY, "T4", dataclasses.replace(broken, fn=wrong))
    assert main(["check", "--theorem", "T4", *HELD_OUT, "--policy", "tabular"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_an_undetected_planted_error_gives_exit_status_1(monkeypatch, capsys):
    broken = registry.REGISTRY["T4"]

    def blind(inst, plant):  # a check that cannot fail
        return [Part("blind", "a", "b", [], [], 0.0, 0.0, 1.0, "none", "float64", True)]

    monkeypatch.setitem(registry.REGISTRY, "T4", dataclasses.replace(broken, fn=blind))
    assert (
        main(["check", "--negative-controls", "--theorem", "T4", *HELD_OUT, "--policy", "tabular"])
        == 1
    )
    assert "MISSED" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--length", "3", "--horizon", "5"], "horizon 5"),
        (["--theorem", "T99"], "T99"),
        (["--vocab", "5", "--length", "5"], "V**T"),
        (["--json", "/nonexistent-dir/x.json", "--theorem", "T4"], "does not exist"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_list_names_checks_and_planted_errors(capsys):
    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    assert "T7c" in out and "shifted-H" in out
