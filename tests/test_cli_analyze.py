"""Tests of ``harm-horizon analyze`` (experiments.cli.analyze through experiments.cli.main.main): outputs,
formats, and every bad input of issue 2 (one-line error, exit status 2, no traceback, no
partial output file)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments.cli.main import main
from toy_lm.engines.reference import reference_analysis
from toy_lm.tables import MEMORY_LIMIT_ENV

V, T = 2, 3


def instance(seed=0, vocab_size=V, length=T):
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    # A binary harm decided by the first token (horizon 1).
    harm = np.repeat(np.arange(vocab_size) % 2, vocab_size ** (length - 1)).astype(float)
    return logits, harm


def write(path, logits=None, harm=None, ref=None, **extra):
    arrays = {}
    if logits is not None:
        arrays.update({f"logits_{l}": z for l, z in enumerate(logits)})
    if ref is not None:
        arrays.update({f"ref_logits_{l}": z for l, z in enumerate(ref)})
    if harm is not None:
        arrays["harm"] = harm
    arrays.update(extra)
    np.savez(path, **arrays)
    return str(path)


def run(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def expected_keys(length, lam=False, ref=False):
    keys = {"expected_harm", "harm_information", "horizon"}
    keys |= {f"H_{l}" for l in range(length + 1)} | {f"determined_{l}" for l in range(length + 1)}
    keys |= {f"grad_{l}" for l in range(length)}
    if lam:
        keys |= {f"equilibrium_logits_{l}" for l in range(length)} | {"equilibrium_kl"}
    if ref:
        keys |= {"per_position_kl"}
    return keys


# -- successful runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("lam, with_ref", [(None, False), (0.5, True)])
def test_out_keys_and_values(tmp_path, capsys, lam, with_ref):
    logits, harm = instance(1)
    ref = [z[::-1].copy() * 0.5 for z in logits] if with_ref else None
    tables = write(tmp_path / "t.npz", logits, harm, ref)
    out = tmp_path / "out.npz"
    argv = ["analyze", tables, "--out", str(out)] + (["--lam", str(lam)] if lam else [])
    status, stdout, stderr = run(argv, capsys)
    # The CLI says which backend ran (a small tree: the default, XLA), then what it wrote.
    assert status == 0 and stderr.splitlines() == [stderr.splitlines()[0], f"wrote {out}"]
    assert stderr.startswith("[analyze] backend: xla (JAX float64; V**T = ")
    assert "E[h]=" in stdout and "horizon τ*=1" in stdout
    want = reference_analysis(logits, harm, lam=lam, ref_logits=ref)
    with np.load(out) as data:
        assert set(data.files) == expected_keys(T, lam is not None, with_ref)
        assert set(data.files) == set(want)
        assert data["expected_harm"].shape == () and data["expected_harm"].dtype == np.float64
        assert data["horizon"].shape == () and np.issubdtype(data["horizon"].dtype, np.integer)
        assert data["harm_information"].shape == (T,)
        for l in range(T + 1):
            assert data[f"H_{l}"].shape == (V**l,)
            assert data[f"determined_{l}"].dtype == np.bool_
        for l in range(T):
            assert data[f"grad_{l}"].shape == (V**l, V)
        for key in want:
            if data[key].dtype == np.bool_:
                np.testing.assert_array_equal(data[key], want[key], err_msg=key)
            else:
                np.testing.assert_allclose(data[key], want[key], rtol=0, atol=1e-10, err_msg=key)
    assert sorted(os.listdir(tmp_path)) == ["out.npz", "t.npz"]  # no temporary files left


def test_json_shape(tmp_path, capsys):
    logits, harm = instance(2)
    ref = [z + 0.1 for z in logits]
    tables = write(tmp_path / "t.npz", logits, harm, ref)
    status, stdout, _ = run(["analyze", tables, "--lam", "2", "--json", "--mi"], capsys)
    assert status == 0
    info = json.loads(stdout)
    assert set(info) == {"vocab_size", "length", "expected_harm", "horizon", "lambda", "positions"}
    assert (info["vocab_size"], info["length"], info["lambda"], info["horizon"]) == (V, T, 2.0, 1)
    want = reference_analysis(logits, harm, lam=2.0, ref_logits=ref)
    assert abs(info["expected_harm"] - want["expected_harm"]) <= 1e-12
    assert [row["position"] for row in info["positions"]] == [1, 2, 3]
    for t, row in enumerate(info["positions"], start=1):
        assert set(row) == {
            "position",
            "harm_information",
            "harm_information_mi",
            "grad_abs_sum",
            "determined_fraction",
            "equilibrium_kl",
            "per_position_kl",
        }
        assert abs(row["harm_information"] - want["harm_information"][t - 1]) <= 1e-12
        assert abs(row["grad_abs_sum"] - np.abs(want[f"grad_{t - 1}"]).sum()) <= 1e-12
        assert row["determined_fraction"] == want[f"determined_{t - 1}"].mean()
        assert abs(row["equilibrium_kl"] - want["equilibrium_kl"][t - 1]) <= 1e-12
        assert abs(row["per_position_kl"] - want["per_position_kl"][t - 1]) <= 1e-12
    # Without --out the tables are never made (analyze_tree(tables=False)); with it, the same
    # numbers but Σ|G|, summed in another order (8 terms at most here: within 8 eps, relative).
    out = str(tmp_path / "with_tables.npz")
    status, stdout, _ = run(
        ["analyze", tables, "--lam", "2", "--json", "--mi", "--out", out], capsys
    )
    assert status == 0
    for row, other in zip(info["positions"], json.loads(stdout)["positions"], strict=True):
        grad, other_grad = row.pop("grad_abs_sum"), other.pop("grad_abs_sum")
        assert row == other and abs(grad - other_grad) <= 8 * np.finfo(float).eps * grad
    plain = write(tmp_path / "plain.npz", logits, harm)
    status, stdout, _ = run(["analyze", plain, "--json"], capsys)
    assert set(json.loads(stdout)["positions"][0]) == {
        "position",
        "harm_information",
        "grad_abs_sum",
        "determined_fraction",
    }


def test_random_instance_save_tables_round_trip(tmp_path, capsys):
    saved = tmp_path / "inst.npz"
    status, stdout, _ = run(
        [
            "analyze",
            "--random",
            str(V),
            str(T),
            "2",
            "--seed",
            "5",
            "--save-tables",
            str(saved),
            "--json",
        ],
        capsys,
    )
    assert status == 0
    first = json.loads(stdout)
    assert first["horizon"] == 2  # the harm is decided by exactly TAU tokens
    with np.load(saved) as data:
        assert sorted(data.files) == ["harm", "logits_0", "logits_1", "logits_2"]
        logits = [data[f"logits_{l}"] for l in range(T)]
        harm = data["harm"]
    assert abs(first["expected_harm"] - reference_analysis(logits, harm)["expected_harm"]) <= 1e-12
    status, stdout, _ = run(["analyze", str(saved), "--json"], capsys)
    assert json.loads(stdout) == first
    # The seed decides the instance.
    _, again, _ = run(["analyze", "--random", str(V), str(T), "2", "--seed", "5", "--json"], capsys)
    _, other, _ = run(["analyze", "--random", str(V), str(T), "2", "--seed", "6", "--json"], capsys)
    assert json.loads(again) == first and json.loads(other) != first


# -- bad input ---------------------------------------------------------------------------------


def assert_refused(capsys, argv, match, out_path):
    status, stdout, stderr = run(argv + ["--out", str(out_path)], capsys)
    assert status == 2, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("harm-horizon analyze: error: ")
    assert "Traceback" not in stderr
    assert match in lines[0], lines[0]
    assert not out_path.exists()
    if out_path.parent.exists():
        assert [p for p in os.listdir(out_path.parent) if p.startswith(".partial")] == []


def bad_files(tmp_path):
    """(name, path, expected message fragment) for every malformed input file."""
    logits, harm = instance(3)
    cases = []

    def case(name, match, **arrays):
        cases.append((name, write(tmp_path / f"{name}.npz", **arrays), match))

    case("no_harm", "no 'harm' array", logits=logits)
    case("no_logits", "T = 0", harm=harm)
    case("gap", "missing logits_1", harm=harm, logits_0=logits[0], logits_2=logits[2])
    case(
        "logits0_shape",
        "logits_0 must have shape (1, V)",
        logits=[np.zeros((2, 2))] + logits[1:],
        harm=harm,
    )
    case(
        "level_shape",
        "logits_2 has shape (3, 2), expected (4, 2)",
        logits=logits[:2] + [np.zeros((3, 2))],
        harm=harm,
    )
    case("harm_shape", "harm has shape (7,), expected (8,)", logits=logits, harm=np.zeros(7))
    case("ref_count", "ref_logits_* tables", logits=logits, harm=harm, ref=logits[:2])
    case(
        "ref_shape",
        "ref_logits_1 has shape",
        logits=logits,
        harm=harm,
        ref=[logits[0], np.zeros((2, 3)), logits[2]],
    )
    case("v1", "V = 1", logits=[np.zeros((1, 1))], harm=np.zeros(1))
    nan = [z.copy() for z in logits]
    nan[1][0, 1] = np.nan
    case("nan_logits", "logits_1 has 1 non-finite", logits=nan, harm=harm)
    inf = [z.copy() for z in logits]
    inf[2][3, 0] = np.inf
    case("inf_logits", "logits_2 has 1 non-finite", logits=inf, harm=harm)
    case("inf_ref", "ref_logits_1 has 1 non-finite", logits=logits, harm=harm, ref=nan)
    case("harm_high", "outside [0, 1]", logits=logits, harm=harm * 1.5)
    case("harm_negative", "outside [0, 1]", logits=logits, harm=harm - 0.1)
    case("harm_nan", "NaN", logits=logits, harm=np.where(harm > 0, np.nan, 0.0))
    case("text_logits", "dtype", logits=[np.array([["a", "b"]])] + logits[1:], harm=harm)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"definitely not an npz")
    cases.append(("junk", str(junk), "not a valid .npz"))
    cases.append(("directory", str(tmp_path), "directory"))
    cases.append(("missing", str(tmp_path / "missing.npz"), "no such file"))
    return cases


def test_every_bad_file_is_refused(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, path, match in bad_files(folder):
        assert_refused(capsys, ["analyze", path], match, tmp_path / f"out_{name}.npz")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--lam", "0"], "--lam 0.0 must be a positive finite number"),
        (["--lam", "-1"], "must be a positive finite"),
        (["--lam", "nan"], "must be a positive finite"),
        (["--lam", "inf"], "must be a positive finite"),
        (["--mi"], "binary harm"),
        (["--save-tables", "x.npz"], "--save-tables only applies to --random"),
        (["--random", "2", "3", "1"], "exactly one of TABLES.npz or --random"),
    ],
)
def test_bad_options_with_a_file(tmp_path, capsys, argv, match):
    logits, harm = instance(4)
    soft = np.where(harm > 0, 0.5, 0.0) if "--mi" in argv else harm
    tables = write(tmp_path / "t.npz", logits, soft)
    assert_refused(capsys, ["analyze", tables] + argv, match, tmp_path / "out.npz")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--random", "2", "0", "0"], "T = 0"),
        (["--random", "1", "3", "1"], "V = 1"),
        (["--random", "2", "3", "4"], "TAU = 4"),
        (["--random", "2", "3", "-1"], "TAU = -1"),
        ([], "exactly one of TABLES.npz or --random"),
    ],
)
def test_bad_random_instances(tmp_path, capsys, argv, match):
    assert_refused(capsys, ["analyze"] + argv, match, tmp_path / "out.npz")


def test_enumeration_too_large_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    logits, harm = instance(5)
    tables = write(tmp_path / "t.npz", logits, harm)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1K")
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("loaded before the size check"))
    assert_refused(capsys, ["analyze", tables], "needs about", tmp_path / "out.npz")
    assert_refused(
        capsys, ["analyze", "--random", "2", "3", "1"], MEMORY_LIMIT_ENV, tmp_path / "out.npz"
    )


def test_x64_disabled_is_refused_in_process(tmp_path, capsys, monkeypatch):
    logits, harm = instance(6)
    tables = write(tmp_path / "t.npz", logits, harm)
    monkeypatch.setenv("JAX_ENABLE_X64", "0")
    assert_refused(capsys, ["analyze", tables], "float64 is required", tmp_path / "out.npz")


def test_output_folder_missing_is_refused(tmp_path, capsys):
    logits, harm = instance(7)
    tables = write(tmp_path / "t.npz", logits, harm)
    assert_refused(capsys, ["analyze", tables], "does not exist", tmp_path / "nowhere" / "o.npz")


def test_usage_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--random", "2", "three", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid int value" in err[0]


# -- the real console script -------------------------------------------------------------------


def console_script():
    path = shutil.which("harm-horizon") or os.path.join(
        os.path.dirname(sys.executable), "harm-horizon"
    )
    if not os.path.exists(path):  # pragma: no cover - the package is always installed for tests
        pytest.fail("the harm-horizon console script is not installed (pip install -e .)")
    return path


def test_console_script_runs_and_refuses_32_bit(tmp_path):
    script = console_script()
    out = tmp_path / "o.npz"
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [script, "analyze", "--random", "2", "3", "1", "--lam", "1", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["length"] == 3 and info["horizon"] == 1
    with np.load(out) as data:
        assert set(data.files) == expected_keys(3, lam=True)
    refused = subprocess.run(
        [script, "analyze", "--random", "2", "3", "1", "--out", str(tmp_path / "x.npz")],
        capture_output=True,
        text=True,
        env={**env, "JAX_ENABLE_X64": "0"},
        timeout=300,
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "float64 is required" in lines[0] and "Traceback" not in lines[0]
    assert refused.stdout == "" and not (tmp_path / "x.npz").exists()
