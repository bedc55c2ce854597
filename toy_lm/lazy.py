"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists what it re-exports as ``{module: (name, ...)}``; :func:`lazy_exports` returns the
``__getattr__``, ``__dir__`` and ``__all__`` that import a name's module only on first access. So
``harm-horizon --help`` (whose entry point lives inside :mod:`toy_lm`) does not pay for importing
JAX, Flax, Numba and SciPy, while ``from toy_lm import analyze_tree`` works as before.

Example::

    __getattr__, __dir__, __all__ = lazy_exports(globals(), {"toy_lm.engines.tree": ("cond_harm",)})
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence


def lazy_exports(namespace: dict, exports: Mapping[str, Sequence[str]], eager: Sequence[str] = ()):
    """``(__getattr__, __dir__, __all__)`` for a package re-exporting ``exports`` lazily.

    Args:
      namespace: the package's ``globals()``.
      exports: ``{module name: names it provides}``; every name must be listed once.
      eager: names the package defines itself (e.g. ``__version__``), added to ``__dir__``.

    Returns:
      ``__getattr__(name)`` importing the owning module on first use (and caching the value in
      the package namespace), ``__dir__()``, and ``__all__`` (sorted, with ``eager``).
    """
    package = namespace["__name__"]
    owner = {}
    for module, names in exports.items():
        for name in names:
            if name in owner:
                raise ValueError(f"{package}: {name} is exported by {owner[name]} and {module}")
            owner[name] = module

    def __getattr__(name: str):
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(owner[name]), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(namespace) | set(owner) | set(eager))

    return __getattr__, __dir__, sorted(set(owner) | set(eager))
