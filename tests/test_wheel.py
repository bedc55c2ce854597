"""The built wheel works on its own (issue 13, item 4): no file of the source tree is needed.

Builds the wheel with ``pip wheel``, installs it (not editable, ``--no-deps``) into a fresh venv,
and runs the installed console script from an empty folder. By default: the wheel's files (the
demos and the explorer's JavaScript are what a wrong package list leaves out) and ``check
--theorem T5`` on a small suite (about 40 s in all). With ``-m slow``: ``harm-horizon check
--theorem T5`` on the whole suite and ``harm-horizon demo --quick`` on one demo (about 4 min of
CPU). The dependencies are not downloaded
again: the fresh venv sees this environment's site-packages through a ``.pth`` line placed after
its own, so the project itself can only come from the wheel (asserted: ``toy_lm.__file__`` lies in
the fresh venv). That the declared dependency floors install and work is .ci/run's floors step.
"""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_ENABLE_X64")}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp / "dist", ROOT],
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("harm_horizon-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel],
        cwd=tmp,
    )
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return wheel, venv, tmp


def test_wheel_carries_every_package_and_data_file(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "experiments/cli/main.py",
        "proofs_check/registry.py",
        "experiments/explorer.js",
        "experiments/demos/__init__.py",
        "experiments/demos/01_harm_martingale.py",
    ):
        assert path in names, path
    assert not any(n.startswith("tests/") for n in names)


def _probe(venv, tmp):
    probe = _run(
        [
            venv / "bin" / "python",
            "-c",
            "import toy_lm, experiments.demos; print(toy_lm.__file__); print(toy_lm.__version__)",
        ],
        cwd=tmp,
    ).stdout.split()
    assert probe[0].startswith(str(venv)), probe  # the wheel's copy, not the source tree
    assert probe[1] != "0+unknown", probe  # the version from the wheel's metadata


def test_installed_wheel_runs_a_small_check(installed):
    """Default run: the installed script on a small suite (seconds; the full run is below)."""
    _, venv, tmp = installed
    _probe(venv, tmp)
    check = _run(
        [
            venv / "bin" / "harm-horizon",
            "check",
            "--theorem",
            "T5",
            "--policy",
            "tabular",
            "--vocab",
            "2",
            "--length",
            "3",
            "--seeds",
            "1",
            "--engine",
            "tree",
        ],
        cwd=tmp,
    )
    assert "PASS" in check.stdout and "FAIL" not in check.stdout, check.stdout[-2000:]


@pytest.mark.slow  # about 4 min of CPU: the whole T5 suite, and a demo with its report's checks
def test_installed_wheel_runs_check_and_a_demo(installed):
    _, venv, tmp = installed
    _probe(venv, tmp)
    script = venv / "bin" / "harm-horizon"
    check = _run([script, "check", "--theorem", "T5"], cwd=tmp)
    assert "PASS" in check.stdout and "FAIL" not in check.stdout, check.stdout[-2000:]
    out = tmp / "demo"
    _run([script, "demo", "--quick", "--only", "3", "--out", out], cwd=tmp)
    assert (out / "report.html").is_file() and (out / "explorer.html").is_file()
