"""Importing the packages changes no global state (issue 13, item 5).

Each probe runs in a fresh interpreter, without this suite's conftest (which turns float64 on and
selects Agg): importing ``toy_lm``, ``proofs_check`` and ``experiments`` (figures included) must
leave JAX's float64 switch and matplotlib's backend as they were, and a library function that
needs float64 must refuse with :class:`~toy_lm.errors.PrecisionError` naming the one line that
fixes it, instead of flipping the switch itself.
"""

import json
import os
import subprocess
import sys

IMPORTS = """
import json, sys
import matplotlib
def backend():
    get = getattr(matplotlib.rcParams, "_get_backend_or_none", None)
    return get() if get else dict.__getitem__(matplotlib.rcParams, "backend")
before = str(backend())
import jax, toy_lm, proofs_check, experiments
import experiments.figures, experiments.dynamics_figures, experiments.demos._support
from proofs_check import strategies  # noqa: F401 (importing draws nothing)
print(json.dumps({"backend_before": before, "backend_after": str(backend()),
                  "x64": bool(jax.config.jax_enable_x64)}))
"""

REFUSAL = """
import jax
from proofs_check import make_instance
from toy_lm.errors import PrecisionError
from toy_lm.precision import FIX
try:
    make_instance("tabular", 2, 2, seed=0, tau=1)
except PrecisionError as err:
    assert FIX in str(err), err
    assert not jax.config.jax_enable_x64
else:
    raise SystemExit("make_instance ran with float64 off")
exec(FIX)   # the line the message gives
assert make_instance("tabular", 2, 2, seed=0, tau=1).harm.dtype == "float64"
print("ok")
"""


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "MPLBACKEND")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_the_packages_changes_no_global_state():
    result = json.loads(_run(IMPORTS))
    assert result["backend_after"] == result["backend_before"], result  # no matplotlib.use
    assert result["x64"] is False, result


def test_library_functions_refuse_float32_with_the_one_line_fix():
    assert _run(REFUSAL) == "ok"


MISSING_EXTRA = """
import sys
class Block:   # as if the experiments extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("matplotlib", "pyarrow", "markdown"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import toy_lm, proofs_check, experiments   # the core imports without the extra
from experiments.cli.main import main
sys.exit(main(["figures", sys.argv[1]]))
"""


def test_a_missing_extra_is_one_line_with_its_pip_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run(
        [sys.executable, "-c", MISSING_EXTRA, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "harm-horizon figures: error: this command needs matplotlib, which is not installed; "
        "install it with pip install 'harm-horizon[experiments]'"
    ], proc.stderr
