"""``harm-horizon analyze-markov``: outputs, and one-line errors (exit 2, no partial output)."""

import json
import re

import numpy as np
import pytest
from markov_cases import CASES, make_case

from experiments.cli.main import main
from toy_lm.engines.markov_analysis import analyze_markov


def write_model(path, case, **override):
    arrays = dict(
        markov_logits=case.logits,
        dfa_transitions=case.dfa.transitions,
        dfa_verdict=case.dfa.verdict,
        dfa_start=np.int64(case.dfa.start),
    )
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def case():
    return make_case(**CASES["k2-V3-T5-random"])


def test_json_and_out(tmp_path, case, capsys):
    model = write_model(tmp_path / "m.npz", case)
    out = tmp_path / "out.npz"
    assert main(["analyze-markov", model, "--lam", "0.5", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = analyze_markov(case.logits, case.dfa, lam=0.5)
    assert info["order"] == 2 and info["length"] == case.length
    assert info["horizon"] == expected.horizon
    assert info["expected_harm"] == expected.expected_harm
    assert [p["harm_information"] for p in info["positions"]] == list(expected.harm_information)
    with np.load(out) as data:
        assert set(data.files) == {
            "expected_harm",
            "harm_information",
            "horizon",
            "cond_harm",
            "determined",
            "equilibrium_kl",
            "equilibrium_harm",
            "log_partition",
        }
        assert data["harm_information"].shape == (case.length,)
        assert data["equilibrium_kl"].shape == (case.length,)
        np.testing.assert_array_equal(data["equilibrium_kl"], expected.equilibrium_kl)
        assert int(data["horizon"]) == expected.horizon


def test_table_and_order_zero(tmp_path, capsys):
    case = make_case(**CASES["k0-V3-T5-random"])
    model = write_model(tmp_path / "m.npz", case)
    assert main(["analyze-markov", model]) == 0
    text = capsys.readouterr().out
    assert "order=0" in text and "horizon" in text


BAD = {
    "missing key": (dict(dfa_start=None), "lacks dfa_start"),
    "contexts": (dict(markov_logits=np.zeros((5, 4, 3))), "not a power of V=3"),
    "logits rank": (dict(markov_logits=np.zeros((5, 3))), "markov_logits has shape"),
    "transitions V": (dict(dfa_transitions=np.zeros((4, 2), int)), "dfa_transitions has shape"),
    "transitions dtype": (dict(dfa_transitions=np.zeros((4, 3))), "integer states"),
    "transitions range": (dict(dfa_transitions=np.full((4, 3), 7)), "states outside"),
    "verdict shape": (dict(dfa_verdict=np.zeros(3)), "dfa_verdict has shape"),
    "verdict range": (dict(dfa_verdict=np.array([0, 2.0, 0, 1])), r"\[0, 1\]"),
    "start range": (dict(dfa_start=np.int64(9)), "dfa_start=9 is not a state"),
    "start shape": (dict(dfa_start=np.array([0, 1])), "one integer state"),
    "nan logits": (dict(markov_logits=np.full((5, 9, 3), np.nan)), "non-finite"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_no_output(tmp_path, case, capsys, name):
    override, match = BAD[name]
    model = write_model(tmp_path / "m.npz", case, **override)
    out = tmp_path / "out.npz"
    assert main(["analyze-markov", model, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("harm-horizon analyze-markov: error:")
    assert re.search(match, err), err
    assert not out.exists()
    assert not list(tmp_path.glob(".partial-*"))


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--lam", "-1"], "must be a positive finite number"),
        (["--lam", "nan"], "must be a positive finite number"),
        (["--out", "/nonexistent-folder/out.npz"], "does not exist"),
    ],
)
def test_bad_options(tmp_path, case, capsys, argv, match):
    model = write_model(tmp_path / "m.npz", case)
    assert main(["analyze-markov", model] + argv) == 2
    assert match in capsys.readouterr().err


def test_missing_and_unreadable_files(tmp_path, capsys):
    assert main(["analyze-markov", str(tmp_path / "none.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    assert main(["analyze-markov", str(junk)]) == 2
    assert "not a valid .npz" in capsys.readouterr().err


def test_missing_keys_are_named_once(tmp_path, capsys):
    path = tmp_path / "empty.npz"
    np.savez(path, other=np.zeros(1))
    assert main(["analyze-markov", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for key in ("markov_logits", "dfa_transitions", "dfa_verdict", "dfa_start"):
        assert err.count(key) == 1, err
    assert "--save-model" in err


def test_random_model_saved_and_reread_gives_the_same_analysis(tmp_path, capsys):
    saved, out = tmp_path / "model.npz", tmp_path / "out.npz"
    argv = ["analyze-markov", "--random", "3", "40", "2", "--seed", "3", "--lam", "0.5", "--json"]
    assert main(argv + ["--save-model", str(saved), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"wrote {saved}", f"wrote {out}"]
    first = json.loads(captured.out)
    assert (first["vocab_size"], first["length"], first["order"]) == (3, 40, 2)
    assert main(["analyze-markov", str(saved), "--lam", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--random", "3", "5", "1", "MODEL"], "exactly one of MODEL.npz or --random"),
        ([], "exactly one of MODEL.npz or --random"),
        (["MODEL", "--save-model", "x.npz"], "--save-model only applies to --random"),
        (["--random", "2", "5", "1"], "needs V >= 3"),
        (["--random", "3", "0", "1"], "T >= 1"),
        (["--random", "3", "5", "-1"], "must be >= 0"),
    ],
)
def test_random_option_errors_are_one_line(tmp_path, case, capsys, argv, match):
    model = write_model(tmp_path / "m.npz", case)
    argv = [model if a == "MODEL" else a for a in argv]
    assert main(["analyze-markov"] + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
