"""Tests of toy_lm.cli_output: the one table look and the strict --json output of every command."""

import ast
import json
import math
import pathlib

import pytest
from rich.console import Console

from toy_lm.cli_output import Column, format_value, make_table, print_json, print_table

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_format_value_covers_none_numbers_lists_and_numpy():
    import numpy as np

    assert format_value(None) == "-" and format_value(True) == "True" and format_value(7) == "7"
    assert format_value(0.123456, "{:.3f}") == "0.123"
    assert format_value([1.0, 0.5], "{:.1f}") == "[1.0 0.5]"
    assert format_value(np.float64(2.5), "{:.2f}") == "2.50"
    assert format_value(np.array([1.0, 2.0]), "{:.0f}") == "[1 2]"


def test_print_table_shows_every_row_and_a_dash_for_missing_keys():
    out = Console(width=100, record=True)
    print_table(
        "t [x]",
        [Column("name", "name", justify="left"), Column("x", "x [1]", "{:.2f}")],
        [{"name": "a", "x": 1.0}, {"name": "b"}],
        caption="caption line",
        out=out,
    )
    text = out.export_text()
    assert "t [x]" in text and "x [1]" in text and "caption line" in text
    assert "1.00" in text and "-" in text.split("b", 1)[1]


def test_print_json_is_strict(capsys):
    print_json({"a": [1, 2.5], "b": None})
    assert json.loads(capsys.readouterr().out) == {"a": [1, 2.5], "b": None}
    with pytest.raises(ValueError):
        print_json({"a": math.nan})


def test_make_table_has_the_one_style():
    table = make_table("t", [Column("k", "h")])
    assert table.title_justify == "left" and table.columns[0].justify == "right"


def test_result_tables_are_made_in_one_place():
    """No command builds its own rich Table or stdout Console: toy_lm.cli_output does."""
    found = []
    for package in ("toy_lm", "proofs_check", "experiments"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name in ("cli_output.py", "progress.py"):  # progress: the stderr spinner
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module in (
                    "rich.table",
                    "rich.console",
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found


def test_experiment_commands_print_runs_through_the_helper(capsys):
    """train/sweep's rows and --json payload (no training: a result record is enough)."""
    from experiments.cli.experiment import RUN_COLUMNS, run_rows, show
    from experiments.config import config_to_dict
    from experiments.presets import preset

    measured = {
        "expected_harm": 0.5,
        "utility": 0.25,
        "prefill_asr": [0.5, 1.0],
        "per_position_kl": [0.1, 0.0],
        "harm_information": [0.2, 0.3],
    }
    result = {
        "run_id": "r1",
        "base": measured,
        "aligned": measured,
        "config": config_to_dict(preset("tiny")),
    }
    rows = run_rows([result])
    assert [r["name"] for r in rows][0] == "base" and rows[1]["run_id"] == "r1"
    show("train tiny", rows, {"runs": rows}, as_json=True, caption="c")
    assert json.loads(capsys.readouterr().out)["runs"][1]["expected_harm"] == 0.5
    show("train tiny", rows, {"runs": rows}, as_json=False, caption="result: x")
    printed = capsys.readouterr().out
    assert "E[h]" in printed and "0.500" in printed and "result: x" in printed
    assert [c.header for c in RUN_COLUMNS][:2] == ["policy", "E[h]"]
