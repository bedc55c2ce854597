"""The import layers: ``toy_lm`` (policies, harms, engines) < ``proofs_check`` (the checks) <
``experiments`` (training, sweeps, figures, demos). No module imports a layer above its own.

An equivalent of import-linter's layers contract, read from the source (every ``import`` and
``from ... import`` statement, at any depth, lazy imports included). The command-line dispatcher
and the benchmark entry point still live in ``toy_lm`` and name the upper layers' command modules;
they are the listed exceptions until the CLI moves to a layer of its own (issue 13, item 3).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("toy_lm", "proofs_check", "experiments")   # lowest first

#: Modules allowed to reach up, and why (to be removed when the CLI layer moves out of toy_lm).
EXCEPTIONS = {
    "experiments.cli.main": "the command-line dispatcher imports every command's module by name",
    "experiments.bench.main": "bench --suite sweep runs experiments.bench.sweep",
}


def _modules():
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            yield layer, name, path


def _imported(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.split(".")[0] in LAYERS and node.value.count(".") >= 1 \
                and " " not in node.value:
            yield node.value   # importlib by name ("experiments.cli.experiment")


def test_no_module_imports_a_higher_layer():
    violations = []
    for layer, name, path in _modules():
        if name in EXCEPTIONS:
            continue
        rank = LAYERS.index(layer)
        for target in _imported(path):
            top = target.split(".")[0]
            if top in LAYERS and LAYERS.index(top) > rank:
                violations.append(f"{name} imports {target}")
    assert not violations, violations


def test_the_exceptions_are_still_needed():
    """An exception that no longer reaches up must be removed from the list."""
    names = {name: path for _, name, path in _modules()}
    for name in EXCEPTIONS:
        rank = LAYERS.index(name.split(".")[0])
        ups = [t for t in _imported(names[name])
               if t.split(".")[0] in LAYERS and LAYERS.index(t.split(".")[0]) > rank]
        assert ups, f"{name} no longer imports a higher layer: drop it from EXCEPTIONS"
