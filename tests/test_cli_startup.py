"""``harm-horizon --help`` and argument errors stay cheap: no heavy library is imported.

The parser of every subcommand is built at start-up; JAX, Flax, Numba, SciPy and matplotlib take
seconds to import, so they must only be imported by the commands that run. A timing would be
fragile on a shared machine; which modules got imported is not.
"""

import json
import subprocess
import sys

import pytest

from toy_lm.lazy import lazy_exports

HEAVY = ("jax", "flax", "optax", "numba", "scipy", "matplotlib", "pyarrow", "sympy")

PROBE = """
import json, sys
from experiments.cli.main import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _probe(*argv):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["analyze", "--help"],
        ["analyze-markov", "--help"],
        ["check", "--help"],
        ["demo", "--help"],
        ["bench", "--help"],
        ["explore", "--help"],
        ["analyze", "--bogus"],
        ["no-such-command"],
        ["check", "--seeds", "x"],
        ["check", "--theorem", "T99"],
        ["check", "--seeds", "0"],
        ["check", "--vocab", "1"],
    ],
)
def test_help_and_argument_errors_import_nothing_heavy(argv):
    result, stdout = _probe(*argv)
    assert result["status"] == (0 if "--help" in argv else 2)
    if "--help" in argv:
        assert "usage: harm-horizon" in stdout
    loaded = {m.split(".")[0] for m in result["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_public_names_still_import_from_every_package():
    code = (
        "import toy_lm, experiments, proofs_check\n"
        "for pkg in (toy_lm, experiments, proofs_check):\n"
        "    for name in pkg.__all__: getattr(pkg, name)\n"
        "    assert set(pkg.__all__) <= set(dir(pkg))\n"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_lazy_exports_refuses_unknown_and_duplicate_names():
    namespace = {"__name__": "pkg"}
    getattr_, dir_, all_ = lazy_exports(
        namespace, {"toy_lm.errors": ("InputError",)}, eager=("__version__",)
    )
    assert all_ == ["InputError", "__version__"] and "InputError" in dir_()
    from toy_lm.errors import InputError

    assert getattr_("InputError") is InputError and namespace["InputError"] is InputError
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr_("nope")
    with pytest.raises(ValueError, match="exported by"):
        lazy_exports(namespace, {"a": ("x",), "b": ("x",)})
