"""Engine mutants: the catalogue is well formed, a sample is killed by failed comparisons, and an
exception is never counted as a kill. (The whole catalogue runs with ``harm-horizon check --mutants``;
CI runs this sample.)"""

import json

import pytest

from experiments.cli.main import main
from proofs_check import registry
from proofs_check.mutants import MUTANTS, Mutant, mutant_suite, run_mutant
from toy_lm.mutation import POINTS

#: A sample that touches the tree engine, the XLA chunk combine and the Markov DP, chosen because
#: their checks compile few programs.
SAMPLE = ("I-parent-probability", "xla-last-chunk-dropped", "markov-child-state-slip")


def test_catalogue_is_well_formed():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names)) >= 25
    ids = {c.id for c in registry.all_checks()}
    for m in MUTANTS:
        assert set(m.rewrites) <= set(POINTS), m.name
        assert m.rewrites or m.stateful, m.name
        assert set(m.checks) <= ids, (m.name, set(m.checks) - ids)
    covered = {p for m in MUTANTS for p in m.rewrites} | {"analysis.numba.level_sums"}
    assert covered == set(POINTS), set(POINTS) - covered


@pytest.fixture(scope="module")
def suite():
    return mutant_suite()


@pytest.mark.parametrize("name", SAMPLE)
def test_sample_mutants_are_killed_by_a_failed_comparison(suite, name):
    mutant = next(m for m in MUTANTS if m.name == name)
    report = run_mutant(mutant, suite)
    assert report.status == "KILLED", report.to_json()
    assert not report.errors


def test_a_mutant_that_raises_is_an_error_not_a_kill(suite):
    def boom(value, **_):
        raise FloatingPointError("the mutant broke the engine")

    mutant = Mutant("raises", "raises inside the engine", {"tree.tilt": boom}, ("T7e",))
    report = run_mutant(mutant, suite[:1])
    assert report.status == "ERROR" and report.killed_by == []
    assert "FloatingPointError" in report.errors[0]


def test_cli_mutants_json_and_unknown_name(tmp_path, capsys):
    path = tmp_path / "mutants.json"
    assert main(["check", "--mutants", "I-parent-probability", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mutation score 1/1" in out
    record = json.loads(path.read_text())[0]
    assert record["status"] == "KILLED" and "T1-var" in record["killed_by"]
    assert main(["check", "--mutants", "no-such-mutant"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such mutant" in err
