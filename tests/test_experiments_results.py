"""experiments.results: tidy tables with the configuration and version in every row."""

import csv
import json
import os

import pyarrow.parquet as pq
import pytest

from experiments import results
from experiments.config import config_hash, with_overrides
from experiments.presets import preset
from experiments.train import package_version, train_and_evaluate


@pytest.fixture(scope="module")
def runs():
    cfgs = [
        with_overrides(preset("tiny"), {"align.objective": o, "align.steps": 5, "attack.steps": 2})
        for o in ("rlhf", "augmentation")
    ]
    return cfgs, [train_and_evaluate(c, None) for c in cfgs]


def test_tables_have_one_row_per_run_and_position_with_full_config(tmp_path, runs):
    cfgs, found = runs
    paths = results.write_tables(found, str(tmp_path))
    assert {os.path.basename(p) for p in paths} == {
        f"{t}.{e}" for t in results.TABLES for e in ("csv", "parquet")
    }
    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    length = cfgs[0].world.length
    assert len(rows) == 2 * length
    assert [(r["run_id"], int(r["position"])) for r in rows] == [
        (config_hash(c), t) for c in cfgs for t in range(1, length + 1)
    ]
    for row in rows:
        assert row["version"] == package_version()
        for key in (
            "world.length",
            "world.vocab",
            "policy.kind",
            "align.objective",
            "align.lam",
            "attack.beta_first",
            "measure.equilibrium_lams",
            "seed",
        ):
            assert row[key] != "", key
        assert int(row["prefix_length"]) == int(row["position"]) - 1
    assert json.loads(rows[0]["world.vocab"])[0] == "end"
    parquet = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert len(parquet) == len(rows)
    assert parquet[3]["per_position_kl"] == pytest.approx(
        float(rows[3]["per_position_kl"]), rel=1e-15
    )
    assert parquet[0]["align.objective"] == "rlhf"


def test_training_and_attack_tables(tmp_path, runs):
    cfgs, found = runs
    results.write_tables(found, str(tmp_path))
    training = pq.read_table(tmp_path / "training.parquet").to_pylist()
    assert len(training) == 2 * 5 * cfgs[0].world.length
    assert all(r["grad_norm"] >= 0 for r in training)
    assert {r["step"] for r in training} == set(range(5))
    attack = pq.read_table(tmp_path / "attack.parquet").to_pylist()
    assert len(attack) == 2 * 2 * 3  # runs x (sft, constrained) x (steps + 1)
    assert {r["attack_objective"] for r in attack} == {"sft", "constrained"}


def test_load_results_in_sweep_order_and_errors(tmp_path, runs):
    _, found = runs
    os.makedirs(tmp_path / "runs")
    for r in found:
        (tmp_path / "runs" / f"{r['run_id']}.json").write_text(json.dumps(r))
    (tmp_path / "runs" / ".partial-x.json").write_text("{")
    loaded = results.load_results(str(tmp_path))
    assert sorted(r["run_id"] for r in loaded) == sorted(r["run_id"] for r in found)
    (tmp_path / "sweep.json").write_text(
        json.dumps({"runs": [{"run_id": found[1]["run_id"]}, {"run_id": found[0]["run_id"]}]})
    )
    assert [r["run_id"] for r in results.load_results(str(tmp_path))] == [
        found[1]["run_id"],
        found[0]["run_id"],
    ]
    with pytest.raises(ValueError, match="no finished runs"):
        results.load_results(str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="not a folder"):
        results.load_results(str(tmp_path / "nothing"))
