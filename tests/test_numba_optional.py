"""Numba is an optional extra: without it the package imports, analyzes (XLA, the default), checks
and benchmarks, and says how to get it where it is asked for.

Numba is hidden in a subprocess by an import hook (this test needs no second environment), so it
runs whether or not numba is installed here.
"""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import importlib.abc, json, sys

class NoNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith(("numba.", "llvmlite")):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, NoNumba())
import io, contextlib
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
from toy_lm.engines.analysis import analyze_tree, choose_backend, numba_available
from toy_lm.errors import InputError
from experiments.bench.main import bench_tree
from experiments.cli.main import main
from proofs_check.engines import available_engines
out = {"available": numba_available(), "choice": choose_backend(2, 30),
       "engines": list(available_engines())}
tables = [np.zeros((2 ** l, 2)) for l in range(3)]
out["expected_harm"] = analyze_tree(tables, np.repeat([0.0, 1.0], 4)).expected_harm
try:
    analyze_tree(tables, np.repeat([0.0, 1.0], 4), backend="numba")
except InputError as exc:
    out["refusal"] = str(exc)
out["bench_keys"] = sorted(bench_tree(2, 3, repeats=1, reference=False))
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    out["cli_status"] = main(["analyze", "--random", "2", "3", "1", "--json"])
out["cli_err"] = err.getvalue()
from experiments.cli.check import _engines
err = io.StringIO()
with contextlib.redirect_stderr(err):
    out["check_engines"] = list(_engines(["all"]))
out["check_err"] = err.getvalue()
out["numba_loaded"] = any(m == "numba" or m.startswith("numba.") for m in sys.modules)
print(json.dumps(out))
"""


def test_everything_runs_without_numba():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["available"] is False and out["choice"] == "xla" and not out["numba_loaded"]
    assert "analysis" not in out["engines"] and "xla" in out["engines"]
    assert out["expected_harm"] == 0.5
    assert 'pip install "harm-horizon[numba]"' in out["refusal"]
    assert "numba_seconds" not in out["bench_keys"] and "seconds" in out["bench_keys"]
    assert out["cli_status"] == 0
    assert "[analyze] backend: xla" in out["cli_err"], out["cli_err"]
    # check on every engine says which one it left out, and how to get it
    assert out["check_engines"] == out["engines"]
    assert "engine analysis left out" in out["check_err"], out["check_err"]
    assert 'pip install "harm-horizon[numba]"' in out["check_err"]
