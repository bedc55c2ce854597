"""Exact symbolic cross-check (SymPy) of T3, T4 and T5 for V = 2, T = 2 and 3.

Fully symbolic tabular logits: every prefix ``u`` has logits ``z_0(u), z_1(u)``. With ``V = 2`` the
policy depends on them through ``p_u = π(0|u) = σ(z_0(u) - z_1(u))``, so we keep the symbol
``p_u`` and differentiate by the exact chain rule ``∂/∂z_v(u) = (-1)^v p_u (1 - p_u) ∂/∂p_u``.
The harm is symbolic too (one symbol per response, or per level-τ prefix for a harm decided by
the first τ tokens). Conditional expectations are written from their definition as sums over the
responses extending a prefix, weighted by the product of the conditionals below it, so every
expression is a polynomial and an identity holds iff ``expand(lhs - rhs) == 0``. Each identity
has a planted error whose difference must NOT vanish.
"""

import pytest
from exact_trees import V, name, prefixes

sympy = pytest.importorskip("sympy")


class Tree:
    """Symbolic tabular policy (``p_u``) and harm on all ``V**T`` responses."""

    def __init__(self, length, harm=None, tag="p"):
        self.T = length
        self.p = {
            u: sympy.Symbol(f"{tag}_{name(u)}", positive=True)
            for level in range(length)
            for u in prefixes(level)
        }
        self.responses = prefixes(length)
        self.h = harm or {y: sympy.Symbol(f"h_{name(y)}") for y in self.responses}

    def pi(self, u, v, table=None):
        p = (table or self.p)[u]
        return p if v == 0 else 1 - p

    def prob(self, y, start=0, live=None, frozen=None):
        """``Π_{t > start} π(y_t|y_<t)``; with ``live = t`` only position t uses the live symbols."""
        out = sympy.Integer(1)
        for t in range(start + 1, self.T + 1):
            table = self.p if live is None or live == t else frozen
            out *= self.pi(y[: t - 1], y[t - 1], table)
        return out

    def extensions(self, u):
        return [y for y in self.responses if y[: len(u)] == u]

    def expected_harm(self):
        return sum(self.prob(y) * self.h[y] for y in self.responses)

    def prefix_prob(self, u):
        """``P(u) = Π_{t <= |u|} π(u_t|u_<t)``."""
        out = sympy.Integer(1)
        for t in range(1, len(u) + 1):
            out *= self.pi(u[: t - 1], u[t - 1])
        return out

    def cond_harm(self, u):
        """``H(u) = Σ_{y ⊒ u} P(y | u) h(y)`` (definition: a sum over the extensions of ``u``)."""
        return sum(self.prob(y, start=len(u)) * self.h[y] for y in self.extensions(u))

    def d_logit(self, expr, u, v):
        """``∂ expr / ∂z_v(u) = (-1)^v p_u (1 - p_u) ∂ expr / ∂p_u``."""
        p = self.p[u]
        return (1 if v == 0 else -1) * p * (1 - p) * sympy.diff(expr, p)

    def score(self, y, t, u, v):
        """``s_t = ∂ log π(y_t|y_<t) / ∂z_v(u)`` (a polynomial: ``1[.] - π(v|u)`` or 0)."""
        return sympy.cancel(self.d_logit(sympy.log(self.pi(y[: t - 1], y[t - 1])), u, v))


def is_zero(expr) -> bool:
    return sympy.expand(expr) == 0


@pytest.fixture(scope="module", params=[2, 3], ids=["T2", "T3"])
def tree(request):
    return Tree(request.param)


def _all_logits(tree):
    return [(u, v) for level in range(tree.T) for u in prefixes(level) for v in range(V)]


def test_t4_logit_form_is_an_identity(tree):
    """``∂E[h]/∂z_v(u) = P(u) π(v|u) (H(uv) - H(u))`` at every prefix; planted: no baseline."""
    expected = tree.expected_harm()
    for u, v in _all_logits(tree):
        closed = (
            tree.prefix_prob(u) * tree.pi(u, v) * (tree.cond_harm(u + (v,)) - tree.cond_harm(u))
        )
        assert is_zero(tree.d_logit(expected, u, v) - closed), (u, v)
    # Negative control: the baseline H(u) left out.
    planted = tree.prefix_prob(()) * tree.pi((), 0) * tree.cond_harm((0,))
    assert not is_zero(tree.d_logit(expected, (), 0) - planted)


def test_t3_gradient_is_covariance(tree):
    """``g_t = E[h s_t] = E[H_t s_t] = E[Δ_t s_t] = Cov(H_t, s_t)`` and ``Σ_t g_t = ∇E[h]``.

    ``g_t`` differentiates only position t's factor: every other factor uses frozen symbols
    ``f_u``, substituted back by ``p_u`` after differentiating (stop-gradient).
    """
    frozen = {u: sympy.Symbol(f"f_{name(u)}", positive=True) for u in tree.p}
    back = {frozen[u]: tree.p[u] for u in tree.p}
    expected = tree.expected_harm()
    total = {key: 0 for key in _all_logits(tree)}
    for t in range(1, tree.T + 1):
        live = sum(tree.prob(y, live=t, frozen=frozen) * tree.h[y] for y in tree.responses)
        h_t = {y: tree.cond_harm(y[:t]) for y in tree.responses}
        h_prev = {y: tree.cond_harm(y[: t - 1]) for y in tree.responses}
        mean_h_t = sum(tree.prob(y) * h_t[y] for y in tree.responses)
        for u, v in _all_logits(tree):
            g = tree.d_logit(live, u, v).subs(back)
            total[(u, v)] += g
            s = {y: tree.score(y, t, u, v) for y in tree.responses}
            e = lambda f: sum(tree.prob(y) * f(y) * s[y] for y in tree.responses)  # noqa: E731
            forms = (
                e(lambda y: tree.h[y]),
                e(lambda y: h_t[y]),
                e(lambda y: h_t[y] - h_prev[y]),
                e(lambda y: h_t[y]) - mean_h_t * e(lambda y: 1),
            )
            for form in forms:
                assert is_zero(g - form), (t, u, v)
    for (u, v), g in total.items():
        assert is_zero(g - tree.d_logit(expected, u, v)), (u, v)
    # Negative control: the score of the wrong position (s_2 for s_1) at the root logit.
    live = sum(tree.prob(y, live=1, frozen=frozen) * tree.h[y] for y in tree.responses)
    g = tree.d_logit(live, (), 0).subs(back)
    wrong = sum(tree.prob(y) * tree.h[y] * tree.score(y, 2, (y[0],), 0) for y in tree.responses)
    assert not is_zero(g - wrong)


@pytest.mark.parametrize("length,tau", [(2, 1), (3, 1), (3, 2)])
def test_t5_zero_beyond_horizon(length, tau):
    """Harm decided by the first τ tokens: ``∂E[h]/∂z(u) = 0`` exactly at every level >= τ."""
    values = {u: sympy.Symbol(f"a_{name(u)}") for u in prefixes(tau)}
    tree = Tree(length, {y: values[y[:tau]] for y in prefixes(length)})
    expected = tree.expected_harm()
    for u, v in _all_logits(tree):
        if len(u) >= tau:
            assert is_zero(tree.d_logit(expected, u, v)), (u, v)
    assert not is_zero(tree.d_logit(expected, (), 0))  # before the horizon the gradient lives
    # Negative control: the harm changes beyond the claimed horizon (one response relabelled).
    changed = {y: values[y[:tau]] for y in prefixes(length)}
    last = prefixes(length)[-1]
    changed[last] = sympy.Symbol("b")
    planted = Tree(length, changed)
    assert not is_zero(planted.d_logit(planted.expected_harm(), last[: length - 1], 0))
