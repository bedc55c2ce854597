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
            out[
                ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            ] = path
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
                module = ".".join(name.split(".")[: -node.level] + [node.module])
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
    found = [
        use
        for name, path in users.items()
        for use in _cross_module_private_uses(name, path, modules)
    ]
    assert not found, found


def test_the_private_name_scan_can_fail(tmp_path):
    """The scan sees both forms of a cross-module private use (a planted error)."""
    modules = _modules()
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from toy_lm.engines.tree import _hidden\nfrom toy_lm import tables\n"
        "tables._human(1)\nimport toy_lm.engines.markov as markov\nmarkov._split\n"
    )
    found = _cross_module_private_uses("planted", planted, modules)
    assert len(found) == 3, found


#: Calls that replace a file by renaming: only toy_lm.outputs.write_atomic_many makes them.
RENAMES = {
    ("os", "replace"),
    ("os", "rename"),
    ("os", "renames"),
    ("tempfile", "mkstemp"),
    ("tempfile", "NamedTemporaryFile"),
}


def _rename_calls(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and (node.func.value.id, node.func.attr) in RENAMES
        ):
            found.append(f"{node.func.value.id}.{node.func.attr}:{node.lineno}")
    return found


def test_one_atomic_write():
    """Every file is written through toy_lm.outputs (write_atomic and its shorthands)."""
    elsewhere = {
        name: calls
        for name, path in _modules().items()
        if name != "toy_lm.outputs" and (calls := _rename_calls(path))
    }
    assert not elsewhere, elsewhere
    inside = _rename_calls(ROOT / "toy_lm" / "outputs.py")
    assert [c.split(":")[0] for c in inside].count("os.replace") == 1, inside


def _public_module(path: pathlib.Path) -> bool:
    """Not ``__init__``/private (``_support.py``), not a numbered demo script."""
    return not path.name.startswith("_") and not (
        path.parent.name == "demos" and path.name[:2].isdigit()
    )


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = ast.literal_eval(node.value)  # a literal list: readable without importing
            assert isinstance(value, list) and all(isinstance(n, str) for n in value)
            return value
    return None


def _top_level_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(every name bound at top level, the public functions and classes defined there)."""
    bound, defined = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            if not node.name.startswith("_"):
                defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                bound |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return bound, defined


def test_every_public_module_declares_its_public_names():
    """An explicit ``__all__`` everywhere: every name it lists exists, and every public function
    and class is listed (a helper nobody else may use gets a leading underscore)."""
    problems = [
        problem
        for name, path in _modules().items()
        if _public_module(path)
        for problem in _all_problems(name, ast.parse(path.read_text(), str(path)))
    ]
    assert not problems, problems


def _all_problems(name: str, tree: ast.Module) -> list[str]:
    declared = _declared_all(tree)
    if declared is None:
        return [f"{name}: no __all__"]
    bound, defined = _top_level_names(tree)
    problems = [f"{name}: __all__ lists {n}, not defined there" for n in declared if n not in bound]
    problems += [
        f"{name}: public {n} missing from __all__" for n in sorted(defined) if n not in declared
    ]
    if declared != sorted(set(declared)):
        problems.append(f"{name}: __all__ is not sorted or has duplicates")
    return problems


def test_the_all_check_can_fail():
    """Planted errors: no ``__all__``, a listed name that does not exist, an unlisted function."""
    assert _all_problems("m", ast.parse("def f(): pass\n")) == ["m: no __all__"]
    assert len(_all_problems("m", ast.parse('__all__ = ["g"]\ndef f(): pass\n'))) == 2
    assert (
        _all_problems(
            "m", ast.parse('import os\n__all__ = ["f", "os"]\ndef f(): pass\ndef _g(): pass\n')
        )
        == []
    )


def test_package_reexports_agree_with_the_modules_all():
    """Each package ``__init__`` re-exports (``_EXPORTS``) only names its module declares."""
    modules, problems = _modules(), []
    for package in PACKAGES:
        tree = ast.parse((ROOT / package / "__init__.py").read_text())
        exports = next(
            ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
        )
        for module, names in exports.items():
            declared = _declared_all(ast.parse(modules[module].read_text())) or []
            problems += [
                f"{package} re-exports {module}.{n}, not in its __all__"
                for n in names
                if n not in declared
            ]
    assert not problems, problems
