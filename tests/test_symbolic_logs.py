"""Exact identities with logarithms at rational points: T13 (mutual information), T7e (KL chain).

At rational ``π(0|u)`` (and, for T7e, a rational ``w = e^{-1/λ}``) every logarithm here is of a
positive rational, written exactly as ``Σ_prime c_prime log(prime)`` with rational ``c``
(:class:`LogQ`); the logs of primes are linearly independent over Q, so a sum of such terms is 0
iff every coefficient is 0: an exact test, no rounding. Inequalities (Pinsker, χ²) are compared
at 50 significant digits (mpmath). ``V = 2``, ``T = 2, 3``; quantities are written from their
definitions as sums over continuations, as in test_symbolic.py and test_symbolic_more.py. Each
identity is paired with planted errors that must not give 0.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from exact_trees import PathTree, V, prefixes

sympy = pytest.importorskip("sympy")
mpmath = pytest.importorskip("mpmath")


class LogQ:
    """An exact ``Σ_prime c_prime log(prime)``, ``c`` rational: the log of a positive rational, and
    rational combinations of such logs. Zero iff every coefficient is (logs of primes are linearly
    independent over Q)."""

    def __init__(self, coeffs=None):
        self.coeffs = {p: c for p, c in (coeffs or {}).items() if c != 0}

    @classmethod
    def log(cls, r: Fraction) -> LogQ:
        assert r > 0, r
        out = {p: Fraction(e) for p, e in sympy.factorint(r.numerator).items()}
        for p, e in sympy.factorint(r.denominator).items():
            out[p] = out.get(p, 0) - e
        return cls(out)

    def __add__(self, other):
        keys = set(self.coeffs) | set(other.coeffs)
        return LogQ({p: self.coeffs.get(p, 0) + other.coeffs.get(p, 0) for p in keys})

    def __sub__(self, other):
        return self + (-1) * other

    def __rmul__(self, scalar):
        return LogQ({p: Fraction(scalar) * c for p, c in self.coeffs.items()})

    def is_zero(self) -> bool:
        return not self.coeffs

    def value(self, digits=50):
        """The real number, at ``digits`` significant digits (mpmath)."""
        with mpmath.workdps(digits):
            return mpmath.fsum(
                mpmath.mpf(c.numerator) / c.denominator * mpmath.log(p)
                for p, c in self.coeffs.items()
            )


def lsum(terms):
    out = LogQ()
    for term in terms:
        out = out + term
    return out


def x_log_ratio(x: Fraction, a: Fraction, b: Fraction) -> LogQ:
    """``x log(a/b)`` with ``0 log(.) = 0``."""
    return LogQ() if x == 0 else x * (LogQ.log(a) - LogQ.log(b))


def bern_kl(a: Fraction, b: Fraction) -> LogQ:
    """``KL(Bern(a) ‖ Bern(b)) = a log(a/b) + (1-a) log((1-a)/(1-b))``."""
    return x_log_ratio(a, a, b) + x_log_ratio(1 - a, 1 - a, 1 - b)


class RationalTree(PathTree):
    """Tabular policy with rational ``π(0|u)`` and a binary harm: the joint law of ``(h(Y), Y)``."""

    one = Fraction(1)

    def __init__(self, length, rng, harm):
        self.T = length
        self.p = {
            u: Fraction(rng.randint(1, d - 1), d)
            for level in range(length)
            for u in prefixes(level)
            for d in [rng.choice([3, 5, 7, 11, 13])]
        }
        self.responses = prefixes(length)
        self.h = harm

    def cond_harm(self, u, uniform=False):
        """``H(u) = Σ_{y ⊒ u} P(y|u) h(y)`` (planted: uniform weights over the continuations)."""
        ext = self.extensions(u)
        if uniform:
            return Fraction(sum(self.h[y] for y in ext), len(ext))
        return sum(self.path(y, len(u), self.T) * self.h[y] for y in ext)

    def joint(self, b, w):
        """``P(h(Y) = b, Y_<=|w| = w)``: the joint enumeration of the harm bit and the prefix."""
        return sum(self.prob(y) for y in self.extensions(w) if self.h[y] == b)

    def mutual_information(self, t) -> LogQ:
        """``I(h(Y); Y_t | Y_<t) = Σ_{b,u,v} P(b,uv) log[P(b,uv) P(u) / (P(b,u) P(uv))]`` (joint)."""
        terms = []
        for u in prefixes(t - 1):
            for v in range(V):
                for b in (0, 1):
                    j = self.joint(b, u + (v,))
                    if j:
                        terms.append(
                            x_log_ratio(j, j * self.prob(u), self.joint(b, u) * self.prob(u + (v,)))
                        )
        return lsum(terms)

    def kl_form(self, t, uniform=False, parent_weight=False) -> LogQ:
        """``Σ_{u,v} P(uv) KL(Bern(H(uv)) ‖ Bern(H(u)))`` (planted: uniform-weights ``H``; the parent's
        probability ``P(u)`` in place of the child's)."""
        terms = []
        for u in prefixes(t - 1):
            parent = self.cond_harm(u, uniform)
            for v in range(V):
                weight = self.prob(u) if parent_weight else self.prob(u + (v,))
                terms.append(weight * bern_kl(self.cond_harm(u + (v,), uniform), parent))
        return lsum(terms)

    def moments(self, t):
        """``(I_t, E[Δ_t² / (H_{t-1}(1 - H_{t-1}))])`` exactly (0/0 terms are 0: Δ_t = 0 there)."""
        info = chi2 = Fraction(0)
        for u in prefixes(t - 1):
            parent = self.cond_harm(u)
            for v in range(V):
                d2 = (self.cond_harm(u + (v,)) - parent) ** 2 * self.prob(u + (v,))
                info += d2
                chi2 += d2 / (parent * (1 - parent)) if d2 else 0
        return info, chi2


def _binary_harms(length, rng):
    """A decided harm (horizon 1), a harm of the last token only, and random binary patterns."""
    responses = prefixes(length)
    out = [{y: y[0] for y in responses}, {y: y[-1] for y in responses}]
    out += [{y: rng.randint(0, 1) for y in responses} for _ in range(3)]
    return [h for h in out if 0 < sum(h.values()) < len(responses)]


@pytest.mark.parametrize("length", [2, 3], ids=["T2", "T3"])
def test_t13_mutual_information_exact(length):
    """``I_t^MI = E[KL(Bern(H_t)‖Bern(H_{t-1}))]`` and ``Σ_t I_t^MI = H(h(Y))`` exactly (nats).

    ``I_t^MI`` from the joint enumeration of ``(h(Y), Y_t, Y_<t)``; ``H`` from its definition. At
    rational ``π``, five binary harms per size, four random policies each. Also ``2 I_t <= I_t^MI
    <= E[Δ_t²/(H_{t-1}(1-H_{t-1}))]`` at 50 digits and ``I_t^MI = 0`` exactly where ``I_t = 0``.
    Planted: ``H`` with uniform weights, and the KL direction swapped.
    """
    rng = random.Random(1300 + length)
    checked = 0
    for harm in _binary_harms(length, rng):
        for _ in range(4):
            tree = RationalTree(length, rng, harm)
            positions = range(1, length + 1)
            mi = [tree.mutual_information(t) for t in positions]
            harmful = sum(tree.prob(y) for y in tree.responses if harm[y])
            entropy = (-1) * (
                x_log_ratio(harmful, harmful, Fraction(1))
                + x_log_ratio(1 - harmful, 1 - harmful, Fraction(1))
            )
            assert (lsum(mi) - entropy).is_zero()
            for t in positions:
                assert (mi[t - 1] - tree.kl_form(t)).is_zero(), t
                info, chi2 = tree.moments(t)
                assert mi[t - 1].is_zero() == (info == 0), t
                with mpmath.workdps(50):
                    value = mi[t - 1].value()
                    assert 2 * mpmath.mpf(info.numerator) / info.denominator <= value
                    assert value <= mpmath.mpf(chi2.numerator) / chi2.denominator
                checked += 1
            # Planted: never equal at every position (they may agree where both sides are 0).
            for kw in (dict(uniform=True), dict(parent_weight=True)):
                assert not all((mi[t - 1] - tree.kl_form(t, **kw)).is_zero() for t in positions), kw
    assert checked >= 8 * length


@pytest.mark.parametrize("length", [2, 3], ids=["T2", "T3"])
def test_t7e_chain_rule_exact_at_rational_points(length):
    """T7e again with the logs themselves, exactly: binary harm, rational ``π0`` and ``w = e^{-1/λ}``.

    Every ``Z_t(u)`` is rational, so each ``log(π*(v|u)/π0(v|u)) = log(Z(uv)/Z(u))`` and
    ``log(π*(y)/π0(y)) = h(y) log w - log Z_0`` is an exact :class:`LogQ`. Planted: ``KL_t``
    weighted by ``π0``'s prefix probabilities (undetectable where only the root's row moves, as
    for ``h = y_1``: there both weights are 1; so asserted for the harm of the last token).
    """
    rng = random.Random(700 + length)
    for index, harm in enumerate(_binary_harms(length, rng)):
        tree = RationalTree(length, rng, harm)
        w = Fraction(rng.randint(1, 9), 10)
        tilt = {y: w ** harm[y] for y in tree.responses}
        levels = [u for level in range(length + 1) for u in prefixes(level)]
        Z = {
            u: sum(tree.path(y, len(u), length) * tilt[y] for y in tree.extensions(u))
            for u in levels
        }
        star = lambda u, v: tree.pi(u, v) * Z[u + (v,)] / Z[u]  # noqa: E731
        star_prob = {u: Fraction(1) for u in levels}
        for u in levels:
            for t in range(1, len(u) + 1):
                star_prob[u] *= star(u[: t - 1], u[t - 1])

        def per_position(weights):
            return lsum(
                weights[u] * star(u, v) * (LogQ.log(Z[u + (v,)]) - LogQ.log(Z[u]))
                for u in levels
                if len(u) < length
                for v in range(V)
            )

        closed = {y: tree.prob(y) * tilt[y] / Z[()] for y in tree.responses}
        assert all(closed[y] == star_prob[y] for y in tree.responses)  # T7a at this point
        whole = lsum(closed[y] * (harm[y] * LogQ.log(w) - LogQ.log(Z[()])) for y in tree.responses)
        assert (per_position(star_prob) - whole).is_zero()
        if index == 1:  # h = y_T: rows at level T - 1 move, where π* and π0 weights differ
            assert not (per_position({u: tree.prob(u) for u in levels}) - whole).is_zero()
