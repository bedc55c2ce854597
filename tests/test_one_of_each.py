"""Issue 13, "one of each": no private name crosses a module boundary, one atomic write, an
explicit ``__all__`` in every public module, and package re-exports that agree with it.

All read from the source with :mod:`ast` (nothing is imported), like tests/test_layers.py.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("toy_lm", "proofs_check", "experiments")


def _modules():
    """``{dotted name: path}`` of every module of the three packages."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            out[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] \
                = path
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _cross_module_private_uses(name: str, path: pathlib.Path, modules: dict) -> list[str]:
    """``from M import _x`` and ``M._x`` (M imported as a module) where M is another module."""
    tree = ast.parse(path.read_text(), str(path))
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:
                module = ".".join(name.split(".")[:-node.level] + [node.module])
            for alias in node.names:
                if f"{module}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
                elif module.split(".")[0] in PACKAGES and _private(alias.name) and module != name:
                    found.append(f"{name}:{node.lineno} from {module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base, dotted = node.value, []
            while isinstance(base, ast.Attribute):
                dotted.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                target = ".".join([aliases[base.id], *dotted])
                if target in modules and target != name:
                    found.append(f"{name}:{node.lineno} {target}.{node.attr}")
    return found


def test_no_private_name_is_used_outside_its_module():
    """A helper another module needs is public where it lives (STYLE.md: "Avoid")."""
    modules = _modules()
    users = dict(modules)
    users.update({str(p.relative_to(ROOT)): p for p in (ROOT / "tests").rglob("*.py")})
    found = [use for name, path in users.items()
             for use in _cross_module_private_uses(name, path, modules)]
    assert not found, found


def test_the_private_name_scan_can_fail(tmp_path):
    """The scan sees both forms of a cross-module private use (a planted error)."""
    modules = _modules()
    planted = tmp_path / "planted.py"
    planted.write_text("from toy_lm.tree import _hidden\nfrom toy_lm import tables\n"
                       "tables._human(1)\nimport toy_lm.markov as markov\nmarkov._split\n")
    found = _cross_module_private_uses("planted", planted, modules)
    assert len(found) == 3, found


#: Calls that replace a file by renaming: only toy_lm.outputs.write_atomic_many makes them.
RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("tempfile", "mkstemp"),
           ("tempfile", "NamedTemporaryFile")}


def _rename_calls(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) \
                and (node.func.value.id, node.func.attr) in RENAMES:
            found.append(f"{node.func.value.id}.{node.func.attr}:{node.lineno}")
    return found


def test_one_atomic_write():
    """Every file is written through toy_lm.outputs (write_atomic and its shorthands)."""
    elsewhere = {name: calls for name, path in _modules().items()
                 if name != "toy_lm.outputs" and (calls := _rename_calls(path))}
    assert not elsewhere, elsewhere
    inside = _rename_calls(ROOT / "toy_lm" / "outputs.py")
    assert [c.split(":")[0] for c in inside].count("os.replace") == 1, inside
