"""experiments.results: tidy tables with the configuration and version in every row."""

import csv
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import results
from experiments.config import config_hash, with_overrides
from experiments.presets import preset
from experiments.train import package_version, train_and_evaluate
from toy_lm.errors import InputError


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


def _reference_table(rows):
    """The rows as ``csv.DictWriter`` writes them (columns in order of first appearance, a missing
    cell empty) and a Parquet table of complete columns (a missing cell null)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode(), pa.Table.from_pydict(
        {c: [row.get(c) for row in rows] for c in columns}
    )


#: One type per column (Parquet's), nulls anywhere; text that CSV must quote.
_CELLS = {
    "run_id": st.sampled_from(["", "a,b", 'say "hi"', "two\nlines", "plain"]),
    "seed": st.integers(-3, 3),
    "x": st.floats(allow_nan=False, width=64),
    "cfg": st.booleans(),
    "step": st.integers(0, 5),
    "v": st.sampled_from(["", ",", "sft"]),
    "w": st.floats(allow_nan=False, width=64),
}


@st.composite
def _blocks(draw):
    """Runs as (identity, columns): keys shared, missing and repeated between the two parts."""

    def cell(key):
        return st.one_of(st.none(), _CELLS[key])

    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        keys = draw(st.lists(st.sampled_from(["run_id", "seed", "x", "cfg"]), unique=True))
        ident = {k: draw(cell(k)) for k in keys}
        n = draw(st.integers(0, 3))
        keys = draw(st.lists(st.sampled_from(["x", "step", "v", "w"]), unique=True))
        own = {k: draw(st.lists(cell(k), min_size=n, max_size=n)) for k in keys}
        blocks.append((ident, own))
    return blocks


@settings(max_examples=200, deadline=None)
@given(_blocks())
def test_tables_by_run_are_the_rows_that_csv_dictwriter_and_parquet_write(tmp_path_factory, blocks):
    # write_tables formats a run's identity once per run; the files must be those of its rows
    folder = tmp_path_factory.mktemp("blocks")
    rows = [
        row
        for ident, own in blocks
        for row in (
            [{**ident, **dict(zip(own, v))} for v in zip(*own.values())] if own else [ident]
        )
    ]
    csv_bytes, table = _reference_table(rows)
    results.write_runs_table(blocks, str(folder / "t"))
    assert (folder / "t.csv").read_bytes() == csv_bytes
    written = pq.read_table(folder / "t.parquet")
    assert written.column_names == table.column_names
    assert written.to_pylist() == table.to_pylist()


def test_tables_of_real_runs_are_their_rows(tmp_path, runs):
    _, found = runs
    results.write_tables(found, str(tmp_path))
    builders = (results.results_rows, results.training_rows, results.attack_rows)
    for name, rows_of in zip(results.TABLES, builders):
        csv_bytes, table = _reference_table([row for r in found for row in rows_of(r)])
        assert (tmp_path / f"{name}.csv").read_bytes() == csv_bytes
        assert pq.read_table(tmp_path / f"{name}.parquet").to_pylist() == table.to_pylist()


def test_a_damaged_result_is_one_clear_error_and_writes_no_table(tmp_path, runs):
    _, found = runs
    damaged = json.loads(json.dumps(found[1]))
    damaged["aligned"]["prefill_asr"] = damaged["aligned"]["prefill_asr"][:-1]
    with pytest.raises(InputError, match=r"aligned\.prefill_asr has \d+ values for \d+ positions"):
        results.write_tables([found[0], damaged], str(tmp_path))
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="columns differ in length"):
        results.write_runs_table([({"run": 1}, {"a": [1, 2], "b": [3]})], str(tmp_path / "t"))
    assert not os.listdir(tmp_path)
