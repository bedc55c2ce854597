"""Exact arithmetic beyond T3-T5: T1, T7a, T7e, the T9 closed form and T11 at V = 2, T <= 3.

Conventions are those of test_symbolic.py: ``p_u = π(0|u)`` is a symbol per prefix ``u`` (the
tabular policy, logits free), a logit derivative is ``∂/∂z_v(u) = (-1)^v p_u (1 - p_u) ∂/∂p_u``,
and every conditional quantity is written from its definition as a sum over the continuations of
a prefix (never by a recursion that is centred by construction). Each identity is paired with a
planted error whose difference must NOT vanish.

How each statement is made exact:

* T1, T9, T11: polynomial identities in symbolic ``p_u``, harm, ``μ_k``, ``q_k`` and preference
  weights (T11: SymPy differentiates the DPO loss, ``-log σ`` included, in symbolic implicit
  rewards ``r(y)`` at ``r = 0``, and ``log π(y)`` in the ``p_u``).
* T7a: a rational identity in symbolic ``p_u`` and symbolic tilts ``e_y = exp(-h(y)/λ)`` (one
  positive symbol per response: any soft harm and any ``λ``), and for binary harm ``e_y = w^h(y)``
  with ``w = e^{-1/λ}``.
* T7e: symbolic with logs: ``log Z_t(u)`` is kept as an independent symbol ``ℓ(u)`` (at a response
  ``ℓ(y) = log e_y``); both sides are linear in the ``ℓ``'s with rational coefficients, and every
  coefficient must vanish, so the identity holds for *every* value of the logs (stronger than
  the statement). test_symbolic_logs.py checks it again with the logs themselves.

T13 and T7e with real logarithms, exact at rational points: test_symbolic_logs.py.
"""

from __future__ import annotations

import pytest
from exact_trees import PathTree, V, name, prefixes

sympy = pytest.importorskip("sympy")


def vanishes(expr) -> bool:
    """``expr == 0`` exactly, as an element of ``Q[symbols]`` or, failing that, of ``Q(symbols)``.

    SymPy's sparse polynomial ring and rational function field do the arithmetic (``from_expr``
    rebuilds the expression there), much faster than ``expand`` on expression trees.
    """
    expr = sympy.sympify(expr)
    gens = sorted(expr.free_symbols, key=str)
    if not gens:
        return sympy.nsimplify(expr) == 0
    try:
        ring = sympy.ring(gens, sympy.QQ)[0]
        return ring.from_expr(expr) == 0
    except ValueError:
        return sympy.field(gens, sympy.QQ)[0].from_expr(expr) == 0


class Tree(PathTree):
    """Symbolic tabular policy ``p_u = π(0|u)`` over all ``V**T`` responses (any table of values)."""

    one = sympy.Integer(1)

    def __init__(self, length, tag="p"):
        self.T = length
        self.p = {
            u: sympy.Symbol(f"{tag}_{name(u)}", positive=True)
            for level in range(length)
            for u in prefixes(level)
        }
        self.responses = prefixes(length)

    def cond(self, values, u):
        """``E[values(Y) | Y_<=|u| = u] = Σ_{y ⊒ u} P(y | u) values(y)`` (sum over continuations)."""
        return sum(self.path(y, len(u), self.T) * values[y] for y in self.extensions(u))

    def mean(self, values):
        return sum(self.prob(y) * values[y] for y in self.responses)

    def d_logit(self, expr, u, v):
        p = self.p[u]
        return (1 if v == 0 else -1) * p * (1 - p) * sympy.diff(expr, p)

    def all_logits(self):
        return [(u, v) for level in range(self.T) for u in prefixes(level) for v in range(V)]


def harm_symbols(length, tag="h"):
    return {y: sympy.Symbol(f"{tag}_{name(y)}") for y in prefixes(length)}


@pytest.fixture(scope="module", params=[2, 3], ids=["T2", "T3"])
def tree(request):
    return Tree(request.param)


# --- T1: the Doob martingale, H from its definition ----------------------------------------------


def _martingale_claims(tree, h, H):
    """Differences of the four T1 claims for a candidate ``H`` (dict prefix -> expression)."""
    T = tree.T
    delta = {(y, t): H[y[:t]] - H[y[: t - 1]] for y in tree.responses for t in range(1, T + 1)}
    mean_h = tree.mean(h)  # E h as its own sum over responses, not H(())
    claims = {
        "mean": [
            sum(tree.pi(u, v) * (H[u + (v,)] - H[u]) for v in range(V))
            for level in range(T)
            for u in prefixes(level)
        ],
        "sum": [
            sum(delta[y, t] for t in range(1, T + 1)) - (h[y] - mean_h) for y in tree.responses
        ],
        "orth": [
            tree.mean({y: delta[y, s] * delta[y, t] for y in tree.responses})
            for s in range(1, T + 1)
            for t in range(s + 1, T + 1)
        ],
    }
    var_h = tree.mean({y: h[y] ** 2 for y in tree.responses}) - mean_h**2
    info = [tree.mean({y: delta[y, t] ** 2 for y in tree.responses}) for t in range(1, T + 1)]
    claims["var"] = [var_h - sum(info)]
    return claims


def test_t1_martingale_identities(tree):
    """``E[Δ_t|Y_<t] = 0``, ``Σ_t Δ_t = h - E h``, ``E[Δ_s Δ_t] = 0``, ``Var h = Σ_t I_t``.

    ``H(u) = Σ_{y ⊒ u} P(y|u) h(y)`` for symbolic ``h`` and ``p``. Planted: ``H`` averaged with
    uniform instead of ``π`` weights (the defect of issue 11: increments re-centred by the
    engine passed with it); every one of the four claims must then fail.
    """
    h = harm_symbols(tree.T)
    levels = [u for level in range(tree.T + 1) for u in prefixes(level)]
    H = {u: tree.cond(h, u) for u in levels}
    assert all(sympy.expand(H[y] - h[y]) == 0 for y in tree.responses)  # H_T = h
    for claim, diffs in _martingale_claims(tree, h, H).items():
        assert diffs and all(vanishes(d) for d in diffs), claim
    uniform = {
        u: sympy.Rational(1, len(tree.extensions(u))) * sum(h[y] for y in tree.extensions(u))
        for u in levels
    }
    for claim, diffs in _martingale_claims(tree, h, uniform).items():
        assert not all(vanishes(d) for d in diffs), f"planted uniform-weights H passes {claim}"


# --- T7a / T7e: the equilibrium π*_λ ∝ π0 e^{-h/λ} -------------------------------------------


def _equilibrium(tree, tilt):
    """``Z(u) = E_π0[e | u]`` by sums over continuations, and ``π*(v|u) = π0(v|u) Z(uv) / Z(u)``."""
    Z = {u: tree.cond(tilt, u) for level in range(tree.T + 1) for u in prefixes(level)}
    star = {
        (u, v): tree.pi(u, v) * Z[u + (v,)] / Z[u]
        for level in range(tree.T)
        for u in prefixes(level)
        for v in range(V)
    }
    return Z, star


def _product(star, y):
    out = sympy.Integer(1)
    for t in range(1, len(y) + 1):
        out *= star[y[: t - 1], y[t - 1]]
    return out


def _tilts(tree, kind):
    if kind == "soft":  # e_y = exp(-h(y)/λ) > 0, one symbol per response: any harm, any λ
        return {y: sympy.Symbol(f"e_{name(y)}", positive=True) for y in tree.responses}
    w = sympy.Symbol("w", positive=True)  # binary harm: e_y = w^h(y), w = e^{-1/λ}
    harm = {y: int(sum(y) % 2 == 1 or y[0] == 1) for y in tree.responses}
    return {y: w ** harm[y] for y in tree.responses}


@pytest.mark.parametrize("kind", ["soft", "binary"])
def test_t7a_equilibrium_conditionals(tree, kind):
    """``Π_t π0(y_t|y_<t) Z_t(y_<=t)/Z_{t-1}(y_<t) = π0(y) e_y / Z_0`` and each row sums to 1.

    Planted: the tilt's sign flipped (``e^{+h/λ}`` in ``Z``), and a row normalized by the plain
    mean of the children's ``Z`` instead of the ``π0``-weighted one.
    """
    tilt = _tilts(tree, kind)
    Z, star = _equilibrium(tree, tilt)
    for y in tree.responses:
        assert vanishes(_product(star, y) - tree.prob(y) * tilt[y] / Z[()]), y
    for level in range(tree.T):
        for u in prefixes(level):
            assert vanishes(sum(star[u, v] for v in range(V)) - 1), u
    _, flipped = _equilibrium(tree, {y: 1 / e for y, e in tilt.items()})
    assert not all(
        vanishes(_product(flipped, y) - tree.prob(y) * tilt[y] / Z[()]) for y in tree.responses
    )
    plain = {
        (u, v): tree.pi(u, v) * Z[u + (v,)] / (sum(Z[u + (c,)] for c in range(V)) / V)
        for (u, v) in star
    }
    assert not all(
        vanishes(_product(plain, y) - tree.prob(y) * tilt[y] / Z[()]) for y in tree.responses
    )


def _log_coefficients(terms):
    """``Σ coef × (ℓ(a) - ℓ(b))`` as ``{prefix: coefficient of ℓ(prefix)}`` (terms: (coef, a, b))."""
    out = {}
    for coef, plus, minus in terms:
        out[plus] = out.get(plus, 0) + coef
        out[minus] = out.get(minus, 0) - coef
    return out


def _per_position_kl(tree, cond, weights, sign=1):
    """``Σ_t KL_t = Σ_{u at level t-1} weights(u) Σ_v cond(v|u) sign (ℓ(uv) - ℓ(u))``, as ℓ-coefficients."""
    return _log_coefficients(
        (sign * weights(u) * cond[u, v], u + (v,), u)
        for level in range(tree.T)
        for u in prefixes(level)
        for v in range(V)
    )


def test_t7e_chain_rule_with_symbolic_logs(tree):
    """``Σ_t KL_t(π*‖π0) = KL(π*‖π0)`` with every ``ℓ(u) = log Z_t(u)`` an independent symbol.

    Left: ``log(π*(v|u)/π0(v|u)) = ℓ(uv) - ℓ(u)``, weighted by ``π*``'s prefix probabilities as
    products of its conditionals. Right: ``Σ_y π*(y) (ℓ(y) - ℓ(()))`` (``ℓ(y) = log e_y``) with the
    closed form ``π*(y) = π0(y) e_y / Z_0``. Both sides are linear in the ``ℓ``'s, so the identity
    for every value of the logs is: every coefficient vanishes (a rational identity in ``p``,
    ``e``). Planted: ``KL_t`` weighted by ``π0``'s prefix probabilities, and the KL direction
    swapped (``Σ_t KL_t(π0‖π*)``).
    """
    tilt = _tilts(tree, "soft")
    Z, star = _equilibrium(tree, tilt)
    whole = _log_coefficients((tree.prob(y) * tilt[y] / Z[()], y, ()) for y in tree.responses)

    def zero(lhs):
        return all(vanishes(lhs.get(k, 0) - whole.get(k, 0)) for k in set(lhs) | set(whole))

    assert zero(_per_position_kl(tree, star, lambda u: _product(star, u)))
    assert not zero(_per_position_kl(tree, star, tree.prob))
    base = {(u, v): tree.pi(u, v) for (u, v) in star}
    assert not zero(_per_position_kl(tree, base, tree.prob, sign=-1))


# --- T9: the recovery objective's logit gradient -----------------------------------------------


def _recovery(tree):
    """``L_rec = E h + Σ_k μ_k Σ_{w at level k} q_k(w) H(w)`` with symbolic ``μ_k``, ``q_k``, ``h``."""
    h = harm_symbols(tree.T)
    H = {u: tree.cond(h, u) for level in range(tree.T + 1) for u in prefixes(level)}
    mu = {k: sympy.Symbol(f"mu_{k}", positive=True) for k in range(1, tree.T)}
    q = {
        w: sympy.Symbol(f"q_{name(w)}", positive=True)
        for k in range(1, tree.T)
        for w in prefixes(k)
    }
    expected = tree.mean(h)
    recovery = sum(mu[len(w)] * q[w] * H[w] for w in q)
    return H, mu, q, expected, recovery


def _forced_reach(tree, q, u, k, divide=True):
    """``P_{q_k,π}(u) = q_k(u_<=k) Π_{k < t <= |u|} π(u_t|u_<t)`` (planted: times ``P(u)``)."""
    if divide:
        return q[u[:k]] * tree.path(u, k, len(u))
    return q[u[:k]] * tree.prob(u)


def test_t9_recovery_closed_form(tree):
    """``∂L_rec/∂z_v(u) = W(u) π(v|u) (H(uv) - H(u))``, ``W(u) = P(u) + Σ_{k<=|u|} μ_k P_{q_k,π}(u)``.

    Also the recovery part alone, ``∂(L_rec - E h)/∂z_v(u) = Σ_{k<=|u|} μ_k P_{q_k,π}(u) π Δ``,
    which is symbolic in ``μ`` and so cannot pass as ``μ -> 0``. Planted: every ``μ_k = 0``
    (``W = P``), the sum over ``k < |u|`` only (the ``k = |u|`` term dropped), and ``P_{q_k,π}(u)``
    as ``q_k(u_<=k) P(u)`` (the division by ``P(u_<=k)`` forgotten).
    """
    H, mu, q, expected, recovery = _recovery(tree)

    def closed(u, v, weight):
        return weight * tree.pi(u, v) * (H[u + (v,)] - H[u])

    def extra(u, stop, divide=True):
        return sum(mu[k] * _forced_reach(tree, q, u, k, divide) for k in range(1, stop + 1))

    plants = {
        "mu dropped": lambda u: tree.prob(u),
        "k < |u| only": lambda u: tree.prob(u) + extra(u, len(u) - 1),
        "P(u) not divided by P(u_<=k)": lambda u: tree.prob(u) + extra(u, len(u), False),
    }
    missed = dict.fromkeys(plants, True)
    for u, v in tree.all_logits():
        grad = tree.d_logit(expected + recovery, u, v)
        assert vanishes(grad - closed(u, v, tree.prob(u) + extra(u, len(u)))), (u, v)
        assert vanishes(tree.d_logit(recovery, u, v) - closed(u, v, extra(u, len(u)))), (u, v)
        for plant, weight in plants.items():
            if not vanishes(grad - closed(u, v, weight(u))):
                missed[plant] = False
    assert not any(missed.values()), [p for p, m in missed.items() if m]


# --- T11: the exact DPO gradient at π = π_ref --------------------------------------------------


def _dpo(tree, pref):
    """``∂L_DPO/∂z_v(u)`` at ``π = π_ref`` for every logit, by differentiating the loss itself.

    ``L = Σ_{y,y'} π_ref(y) π_ref(y') a(y,y') (-log σ(β (r(y) - r(y'))))``, ``r = log π - log π_ref``:
    ``a(y, y')`` are preference weights (``1[h(y) < h(y')]`` for a harm; symbols here), ``π`` is the
    tree's symbolic policy and ``π_ref`` a second one (``f_u``). By the chain rule through the
    implicit rewards, ``∂L/∂z = Σ_y ∂L/∂r(y) ∂r(y)/∂z``: SymPy differentiates ``L`` in symbols
    ``r(y)`` at ``r = 0`` (that is, at ``π = π_ref``) and ``log π(y)`` in the ``p_u``.
    """
    beta = sympy.Symbol("beta", positive=True)
    ref = Tree(tree.T, tag="f")
    r = {y: sympy.Symbol(f"r_{name(y)}") for y in tree.responses}
    loss = sum(
        ref.prob(y)
        * ref.prob(z)
        * pref[y, z]
        * sympy.log(1 + sympy.exp(-beta * (r[y] - r[z])))  # -log σ(β (r(y) - r(y')))
        for y in tree.responses
        for z in tree.responses
        if pref[y, z] != 0
    )
    at_zero = {s: 0 for s in r.values()}
    d_reward = {y: sympy.diff(loss, r[y]).subs(at_zero) for y in tree.responses}
    at_ref = {tree.p[u]: ref.p[u] for u in tree.p}
    grads = {}
    for u, v in tree.all_logits():
        scores = {
            y: sympy.cancel(tree.d_logit(sympy.log(tree.prob(y)), u, v)).subs(at_ref)
            for y in tree.responses
        }  # ∂r(y)/∂z_v(u) = ∂ log π(y)/∂z_v(u) at π = π_ref
        grads[u, v] = sum(d_reward[y] * scores[y] for y in tree.responses)
    return beta, ref, grads


HALF = sympy.Rational(1, 2)


def _dpo_closed_form(tree, ref, pref, beta, factor=HALF, with_pi=True):
    """``{(u, v): C(uv) - π(v|u) C(u)}``, ``C(u) = Σ_{y ⊒ u} c(y)``,
    ``c(y) = -(β/2) π_ref(y) Σ_{y'} π_ref(y') (a(y,y') - a(y',y))``."""
    c = {
        y: -factor
        * beta
        * ref.prob(y)
        * sum(ref.prob(z) * (pref[y, z] - pref[z, y]) for z in tree.responses)
        for y in tree.responses
    }
    big = lambda w: sum(c[y] for y in tree.extensions(w))  # noqa: E731
    return {
        (u, v): big(u + (v,)) - (ref.pi(u, v) if with_pi else 1) * big(u)
        for u, v in tree.all_logits()
    }


@pytest.mark.parametrize("length", [2, 3], ids=["T2", "T3"])
def test_t11_dpo_gradient_at_reference(length):
    """``∂L_DPO/∂z_v(u) = C(uv) - π(v|u) C(u)`` at ``π = π_ref`` for symbolic preference weights.

    Symbolic ``a(y, y')`` cover every labelling, ties included. Planted: the ``σ(0) = 1/2``
    factor dropped (``β`` in place of ``β/2``: a misplaced ``β``), and the closed form without
    ``π(v|u)`` (``C(uv) - C(u)``).
    """
    tree = Tree(length)
    pref = {
        (y, z): sympy.Symbol(f"a_{name(y)}_{name(z)}") if y != z else 0
        for y in tree.responses
        for z in tree.responses
    }
    beta, ref, grads = _dpo(tree, pref)
    closed = _dpo_closed_form(tree, ref, pref, beta)
    assert all(vanishes(grads[key] - closed[key]) for key in grads)
    plants = {
        "beta instead of beta/2": dict(factor=sympy.Integer(1)),
        "no π(v|u)": dict(with_pi=False),
    }
    for plant, kw in plants.items():
        planted = _dpo_closed_form(tree, ref, pref, beta, **kw)
        assert not all(vanishes(grads[key] - planted[key]) for key in grads), plant


@pytest.mark.parametrize("length,tau", [(2, 1), (3, 1), (3, 2)])
def test_t11_dpo_gradient_vanishes_at_determined_prefixes(length, tau):
    """Harm decided by the first τ tokens: preferences ``a(y,y') = b(y_<=τ, y'_<=τ)`` (symbols), and
    ``∂L_DPO/∂z(u) = 0`` exactly at every level ``>= τ`` at ``π = π_ref`` (non-zero at the root).

    Planted: one response's preferences changed below a determined prefix.
    """
    tree = Tree(length)
    b = {
        (s, w): sympy.Symbol(f"b_{name(s)}_{name(w)}") if s != w else 0
        for s in prefixes(tau)
        for w in prefixes(tau)
    }
    pref = {(y, z): b[y[:tau], z[:tau]] for y in tree.responses for z in tree.responses}
    _, _, grads = _dpo(tree, pref)
    for (u, v), grad in grads.items():
        assert vanishes(grad) == (len(u) >= tau), (u, v)
    last = tree.responses[-1]
    changed = dict(pref)
    for z in tree.responses:
        if z[:tau] != last[:tau]:
            changed[last, z] = sympy.Symbol(f"c_{name(z)}")
    _, _, planted = _dpo(tree, changed)
    assert not vanishes(planted[last[:-1], 0])
