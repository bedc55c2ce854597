"""The import layers: ``toy_lm`` (policies, harms, engines) < ``proofs_check`` (the checks) <
``experiments`` (training, sweeps, figures, demos) < the command-line and benchmark layer
(``experiments.cli`` and ``experiments.bench``, the only code that imports every layer). No module
imports a layer above its own.

An equivalent of import-linter's layers contract, read from the source (every ``import`` and
``from ... import`` statement, at any depth, lazy imports included, and module names given to
importlib as strings).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("toy_lm", "proofs_check", "experiments")
LAYERS = ("toy_lm", "proofs_check", "experiments", "cli")  # lowest first
TOP = ("experiments.cli", "experiments.bench")  # the "cli" layer


def _layer(module: str):
    """The layer of a dotted module name, or None outside the project."""
    if any(module == top or module.startswith(top + ".") for top in TOP):
        return "cli"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def _modules():
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield _layer(name), name, path


def _imported(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            # ``from experiments import cli`` names a module of the layer above
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.split(".")[0] in PACKAGES
            and node.value.count(".") >= 1
            and " " not in node.value
        ):
            yield node.value  # importlib by name ("experiments.cli.experiment")


def test_no_module_imports_a_higher_layer():
    violations = []
    for layer, name, path in _modules():
        rank = LAYERS.index(layer)
        for target in _imported(path):
            up = _layer(target)
            if up is not None and LAYERS.index(up) > rank:
                violations.append(f"{name} imports {target}")
    assert not violations, violations


def test_the_command_line_layer_sits_on_every_layer():
    """The dispatcher reaches every layer, so the contract above has something to hold."""
    names = {name: path for _, name, path in _modules()}
    reached = {_layer(t) for t in _imported(names["experiments.cli.main"])}
    assert {"toy_lm", "cli"} <= reached, reached
    reached = set()
    for layer, _name, path in _modules():
        if layer == "cli":
            reached |= {_layer(t) for t in _imported(path)}
    assert set(LAYERS) <= reached, reached


def test_a_planted_upward_import_is_found(tmp_path):
    """The scan sees an upward import written as ``from experiments.cli import x``."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from experiments.cli import main\n")
    assert any(_layer(t) == "cli" for t in _imported(bad))
