"""Exact tabular trees over ``V = 2`` for the symbolic tests (SymPy symbols or ``Fraction`` values).

Shared by tests/test_symbolic.py, test_symbolic_more.py and test_symbolic_logs.py: the prefixes
of a level in canonical order, their names, and the products of conditionals along a path.
"""

from __future__ import annotations

import itertools

V = 2


def prefixes(level):
    """Every prefix of length ``level`` in canonical order (tuples of tokens)."""
    return list(itertools.product(range(V), repeat=level))


def name(u):
    """``"01"`` for the prefix ``(0, 1)``; ``"r"`` for the root."""
    return "".join(map(str, u)) or "r"


class PathTree:
    """A tabular policy ``p_u = π(0|u)``: subclasses set ``p`` (prefix -> value), ``responses``
    and ``one`` (the exact unit: ``sympy.Integer(1)`` or ``Fraction(1)``)."""

    one = 1

    def pi(self, u, v):
        return self.p[u] if v == 0 else 1 - self.p[u]

    def path(self, y, start, stop):
        """``Π_{start < t <= stop} π(y_t | y_<t)``."""
        out = self.one
        for t in range(start + 1, stop + 1):
            out *= self.pi(y[: t - 1], y[t - 1])
        return out

    def prob(self, u):
        """``P(u)``: the product of the conditionals along ``u`` (a prefix or a response)."""
        return self.path(u, 0, len(u))

    def extensions(self, u):
        return [y for y in self.responses if y[: len(u)] == u]
