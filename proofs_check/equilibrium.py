"""T7: the equilibrium ``π*_λ ∝ π0 exp(-h/λ)`` and how its KL tracks the harm information.

(a) the engine's conditionals ``π0(v|u) Z_t(uv)/Z_{t-1}(u)`` (:func:`toy_lm.engines.tree.equilibrium_policy`)
    reproduce ``π0(y) e^{-h(y)/λ} / Z`` normalized over whole responses (direct);
(b) ``KL_t(π*_λ‖π0) = 0`` beyond the horizon and ``π*_λ(.|u) = π0(.|u)`` at every determined prefix;
    the engine's ``KL_t`` equals the direct one from whole-response marginals (every engine);
(c) ``2λ² KL_t / I_t = 1 + κ_t/λ + O(1/λ²)``: ``λ(ratio - 1) → κ_t``, with ``κ_t`` computed exactly by
    enumeration (:func:`kappa`) and the error falling at least 1.8x per doubling of ``λ`` over
    :data:`RATE_LAMBDAS` (or sitting at the rounding floor), at every ``t <= τ*`` with ``I_t > 0``;
(d) binary harm, ``λ → 0``: ``Σ_t KL_t → -log P_{π0}(h = 0)``, within the exact remainder bound
    ``ρ (1 + 1/λ)``, ``ρ = P0(h=1)/P0(h=0) e^{-1/λ}``, at every ``λ`` of :data:`SMALL_LAMBDAS`;
(e) ``Σ_t KL_t = KL(π*_λ‖π0) = -E_{π*}[h]/λ - log Z`` (chain rule against the closed form).
"""

from __future__ import annotations

import numpy as np

from proofs_check import controls, enumeration
from proofs_check.common import ops, outputs
from proofs_check.engine import equilibrium_sweep
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance, stated_tolerance

__all__ = [
    "EXACT_ZERO_ENGINES",
    "RATE_FACTOR",
    "RATE_LAMBDAS",
    "SMALL_LAMBDAS",
    "chain_rule",
    "direct_equilibrium",
    "equilibrium_conditionals",
    "equilibrium_kl_zero_beyond_horizon",
    "kappa",
    "kl_tracks_information",
    "small_lambda_limit",
    "sweep",
    "tilt_kl",
]

#: λ grid of the rate check (T7c): doublings from 64 to 8192. The ceiling: at ``λ = 8192`` the
#: rounding floor of ``λ(ratio - 1)`` (:func:`_rate_floor`) is ``~ 5e-9`` for ``I_t ~ 1e-2``, far
#: below the ``O(1/λ)`` error being measured.
RATE_LAMBDAS = tuple(64.0 * 2**k for k in range(8))

#: Required shrink of the T7c error per doubling of λ (THEORY.md: at least 1.8x).
RATE_FACTOR = 1.8

#: λ grid of the small-λ limit (T7d).
SMALL_LAMBDAS = (0.5, 0.25, 0.125, 1 / 16, 1 / 32)


def _lams(inst) -> np.ndarray:
    return np.array((inst.lam,) + RATE_LAMBDAS + SMALL_LAMBDAS)


def sweep(inst, harm=None, sign: float = 1.0) -> dict:
    """The engine's ``π*_λ`` and ``KL_t`` for every λ this module uses (cached for the own harm)."""
    own = harm is None or harm is inst.harm
    harm = inst.harm if harm is None else harm
    cache = inst.__dict__.setdefault("_sweep_cache", {})
    if own and sign in cache:
        return cache[sign]
    out = equilibrium_sweep(inst.tables, harm, sign * _lams(inst))
    result = {
        "log_tables": [np.asarray(t) for t in out["log_tables"]],
        "kl": np.asarray(out["kl"]),
        "log_partition": [np.asarray(z) for z in out["log_partition"]],
        "harm_information": np.asarray(out["harm_information"]),
    }
    if own:
        cache[sign] = result
    return result


def _base_log_probs(inst) -> np.ndarray:
    return inst.quantities["token_log_probs"].sum(axis=1)


def direct_equilibrium(inst, lam: float, harm=None) -> np.ndarray:
    """``log π*_λ(y) = log π0(y) - h(y)/λ - log Z`` over whole responses (direct)."""
    harm = inst.harm if harm is None else harm
    return enumeration.log_normalize(_base_log_probs(inst) - harm / lam)


def _engine_log_probs(inst, tables) -> np.ndarray:
    return enumeration.response_log_probs_from_tables(tables, inst.vocab_size, inst.length)


@register(
    "T7a",
    "π*_λ's conditionals π0(v|u) Z_t(uv)/Z_{t-1}(u) reproduce π0 e^{-h/λ} / Z exactly",
    plants=["lambda-sign", "lambda-scale"],
    engines=("tree", "analysis", "xla"),
)
def equilibrium_conditionals(inst, plant):
    if inst.engine == "tree":
        tables = [t[0] for t in sweep(inst)["log_tables"]]
    else:
        tables = outputs(inst)["equilibrium_logits"]
    lhs = _engine_log_probs(inst, tables)
    lam = {"lambda-sign": -inst.lam, "lambda-scale": 2 * inst.lam}.get(plant, inst.lam)
    rhs = direct_equilibrium(inst, lam)
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses + inst.length,
        ops=ops(inst),
        magnitude=float(np.max(np.abs(rhs))) + 1 / inst.lam,
        what="max|log π*(y)| + 1/λ",
    )
    return [
        compare(
            "log π*_λ(y): conditionals = normalized π0 e^{-h/λ}",
            lhs,
            rhs,
            tol,
            lhs_name=f"Σ_t log π*(y_t|y_<t) from the {inst.engine} engine's equilibrium tables",
            rhs_name="log π0(y) - h(y)/λ - log Σ_y π0(y) e^{-h(y)/λ} (direct, teacher-forced π0)",
        )
    ]


@register(
    "T7b",
    "KL_t(π*_λ‖π0) = 0 for t > τ*: π*_λ(.|u) = π0(.|u) at every determined prefix u",
    plants=["harm-below-determined"],
    engines=("tree", "analysis", "xla", "markov"),
)
def equilibrium_kl_zero_beyond_horizon(inst, plant):
    harm = controls.planted_harm(inst, plant)
    out = outputs(inst, harm)
    engine_kl = np.asarray(out["equilibrium_kl"])
    direct = enumeration.per_position_kl_direct(
        direct_equilibrium(inst, inst.lam, harm),
        _base_log_probs(inst),
        inst.vocab_size,
        inst.length,
    )
    mag = 1.0 + 2.0 / inst.lam
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=mag,
        what="1 + 2/λ >= Σ P |log π*/π0| per position",
    )
    parts = [
        compare(
            "KL_t engine = KL_t direct",
            engine_kl,
            direct,
            tol,
            lhs_name=f"KL_t(π*‖π0) of the {inst.engine} engine",
            rhs_name="KL_t from whole-response π*_λ and π0 by prefix marginals (direct)",
        )
    ]
    if out["equilibrium_logits"] is not None:
        base_log = [enumeration.log_softmax(z) for z in inst.tables]
        per_prefix = enumeration.per_prefix_kl(out["equilibrium_logits"], base_log)
        at_determined = np.concatenate([kl[m] for kl, m in zip(per_prefix, inst.determined[:-1])])
        parts.append(
            compare(
                "KL(π*(.|u)‖π0(.|u)) = 0 at determined u",
                at_determined,
                0.0,
                tol,
                scale=max(float(np.max(k)) for k in per_prefix),
                lhs_name=f"per-prefix KL of the {inst.engine} engine's π*_λ tables at "
                "determined prefixes (determined by direct comparison of harm "
                "values)",
                rhs_name="0",
            )
        )
    tau = inst.horizon
    parts.append(
        compare(
            "KL_t = 0 for t > τ*",
            engine_kl[tau:],
            0.0,
            tol,
            scale=float(np.max(engine_kl)),
            lhs_name=f"KL_t(π*_λ‖π0), t > τ* ({inst.engine} engine; n/a when τ* = T)",
            rhs_name="0",
        )
    )
    # The engines' exact-zero convention: a determined prefix's children have equal log Z, so its
    # tilt is exactly 0 and its KL term is an exact 0, not a rounding residue (found by the
    # mechanical mutants: flipping the "children equal" masks left ±1e-17, negative values included,
    # inside the rounding tolerance above).
    # KNOWN DEFECT of the optional Numba backend ("analysis"): on the MLP instance at λ = 1e3 it
    # gives KL_t of 1.5e-17 and -9.4e-19 beyond τ* (a rounding residue, negative once); measured
    # below instead of asserted until its kernel keeps the convention (issue 13 notes).
    measurements = {
        "kl_t": engine_kl.tolist(),
        "horizon": tau,
        "max_abs_kl_beyond_horizon": float(np.max(np.abs(engine_kl[tau:]), initial=0.0)),
    }
    if inst.engine in EXACT_ZERO_ENGINES:
        exact = stated_tolerance(0.0, "0: the engines write exact zeros at determined prefixes")
        parts.append(
            compare(
                "KL_t = 0 exactly for t > τ*",
                engine_kl[tau:],
                0.0,
                exact,
                scale=float(np.max(engine_kl)),
                lhs_name=f"KL_t(π*_λ‖π0), t > τ* ({inst.engine} engine; n/a when τ* = T)",
                rhs_name="0 (exact)",
            )
        )
        parts.append(
            compare(
                "KL_t >= 0",
                engine_kl,
                0.0,
                exact,
                bound="lower",
                scale=1.0,
                lhs_name=f"KL_t(π*_λ‖π0), every t ({inst.engine} engine)",
                rhs_name="0 (a KL is never negative)",
            )
        )
    return parts, measurements


#: Engines whose equilibrium KL is an exact 0 beyond the horizon (see T7b).
EXACT_ZERO_ENGINES = ("tree", "xla", "markov")


def _kl_integrand(x: np.ndarray) -> np.ndarray:
    """``f(x) = e^x (x - 1) + 1 = Σ_{k>=2} (k-1) x^k / k! >= 0``, accurate for small ``|x|``."""
    small = np.abs(x) < 0.05
    xs = np.where(small, x, 0.0)
    series = sum((k - 1) * xs**k / np.prod(np.arange(1.0, k + 1)) for k in range(2, 10))
    return np.where(small, series, np.exp(x) * (x - 1) + 1)


def tilt_kl(base_tables, log_partition, vocab_size: int) -> np.ndarray:
    """``KL_t(π*_λ‖π0)`` from the tilt ``r(uv) = log Z_t(uv) - log Z_{t-1}(u)``, ``(T,)``.

    With ``π*(v|u) = π0(v|u) e^{r̃(uv)}`` (``r̃`` = ``r`` renormalized over ``v``),
    ``KL(π*(.|u)‖π0(.|u)) = Σ_v π0(v|u) f(r̃(uv))`` with ``f(x) = e^x (x - 1) + 1``, because
    ``Σ_v π0 (e^{r̃} - 1) = 0``. Every term is ``O(r̃²) >= 0``, so no cancellation: a rounding offset
    ``δ`` in ``r̃`` changes the result by ``O(δ r̃)`` only. (The engine's
    :func:`toy_lm.engines.tree.per_position_kl` sums ``π* (log π* - log π0)``, whose terms are ``O(r)``
    and whose offsets cost ``O(eps)`` absolute: at ``λ = 1e4``, where ``KL ~ I/(2λ²) ~ 1e-12``,
    that is a relative error of ``1e-4``, larger than the ``O(1/λ)`` effect T7c measures.)
    """
    out, probs = [], np.ones(1)
    for level, z in enumerate(base_tables):
        pi0 = np.exp(enumeration.log_softmax(z))
        r = log_partition[level + 1].reshape(-1, vocab_size) - log_partition[level][:, None]
        r = r - np.log(np.sum(pi0 * np.exp(r), axis=1, keepdims=True))
        out.append(float(np.sum(probs * np.sum(pi0 * _kl_integrand(r), axis=1))))
        probs = (probs[:, None] * pi0 * np.exp(r)).reshape(-1)
    return np.array(out)


def kappa(inst) -> tuple[np.ndarray, np.ndarray]:
    """``(κ_t, I_t)`` for ``t = 1 ... T`` by direct sums over ``π0`` (THEORY.md T7c); ``κ_t`` is NaN
    where ``I_t = 0``.

    ``κ_t = -(E[q_t(u)(H_{t-1}(u) - E h)] + E[Δ_t b_t] + (2/3) E[Δ_t³]) / I_t`` with
    ``q_t(u) = Σ_v π0(v|u) Δ_t(uv)²`` and ``b_t = Var(h|Y_<=t) - Var(h|Y_<t)``.
    """
    vocab, length = inst.vocab_size, inst.length
    values = inst.direct_cond_harm
    second = enumeration.direct_cond_harm(inst.probs, inst.harm**2, vocab, length)
    marg = enumeration.prefix_marginals(inst.probs, vocab, length)
    conds = enumeration.direct_conditionals(inst.probs, vocab, length)
    mean = values[0][0]
    out, info = [], []
    for t in range(1, length + 1):
        delta = values[t] - np.repeat(values[t - 1], vocab)
        q = np.sum(conds[t - 1] * delta.reshape(-1, vocab) ** 2, axis=1)
        b = (second[t] - values[t] ** 2) - np.repeat(second[t - 1] - values[t - 1] ** 2, vocab)
        i_t = float(np.sum(marg[t] * delta**2))
        terms = (
            np.sum(marg[t - 1] * q * (values[t - 1] - mean))
            + np.sum(marg[t] * delta * b)
            + 2.0 / 3.0 * np.sum(marg[t] * delta**3)
        )
        info.append(i_t)
        out.append(-terms / i_t if i_t > 0 else np.nan)
    return np.array(out), np.array(info)


def _rate_floor(inst, info_t: float, lam: np.ndarray) -> np.ndarray:
    """Rounding floor of ``λ(ratio - 1)``: ``λ x 2 eps x ops / sqrt(I_t)``.

    ``KL_t`` from the tilt has absolute error ``<= sqrt(2 KL_t) δr`` with ``δr <= eps x ops / λ``
    (``r = log Z_t - log Z_{t-1}``, ``|log Z| <= 1/λ``), i.e. relative error
    ``<= 2 eps x ops / sqrt(I_t)`` since ``2λ² KL_t ≈ I_t``; ``λ(ratio - 1)`` multiplies it by ``λ``.
    """
    eps = np.finfo(np.float64).eps
    return lam * 2.0 * eps * (ops(inst) + inst.num_responses) / np.sqrt(info_t)


@register(
    "T7c",
    "λ(2λ² KL_t(π*_λ‖π0) / I_t - 1) → κ_t (exact first-order coefficient), the error "
    "falling >= 1.8x per doubling of λ",
    plants=["lambda-scale", "wrong-position-information"],
    applies=lambda inst: inst.horizon >= 1,
)
def kl_tracks_information(inst, plant):
    """``2λ² KL_t / I_t = 1 + κ_t/λ + O(1/λ²)`` for every ``t <= τ*`` with ``I_t > 0``.

    The claim is checked as stated in THEORY.md: over the doubling grid :data:`RATE_LAMBDAS`,
    ``e(λ) = |λ(ratio - 1) - κ_t|`` (``κ_t`` by direct sums, ``KL_t`` from the engine's ``log Z``
    without cancellation, :func:`tilt_kl`) must shrink by at least :data:`RATE_FACTOR` per doubling
    until it reaches the rounding floor (:func:`_rate_floor`). Since ``κ_t`` can be 0 (symmetric
    instances) the error may fall faster than ``1/λ``; that passes. The limit itself is asserted
    with the last ``e`` below the first by the accumulated factor.
    """
    sw = sweep(inst)
    kap, info = kappa(inst)
    lams = np.asarray(RATE_LAMBDAS)
    kl = np.stack(
        [
            tilt_kl(inst.tables, [z[1 + j] for z in sw["log_partition"]], inst.vocab_size)
            for j in range(len(lams))
        ]
    )  # (L, T)
    used = info
    if plant == "wrong-position-information":
        used = np.append(info[1:], 0.0)
    factor = 1.0 if plant == "lambda-scale" else 2.0
    eps = np.finfo(np.float64).eps
    floor_i = (ops(inst) + inst.num_responses) * eps
    positions = np.array([t for t in range(inst.horizon) if info[t] > floor_i], int)
    shortfalls, errors = [], {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in positions:
            ratio = factor * lams**2 * kl[:, t] / used[t]
            err = np.abs(lams * (ratio - 1.0) - kap[t])
            err = np.where(np.isfinite(err), err, np.inf)
            floor = _rate_floor(inst, info[t], lams)
            errors[int(t) + 1] = err.tolist()
            # per doubling: e(2λ) <= e(λ)/1.8, or both at the rounding floor
            for j in range(len(lams) - 1):
                allowed = max(err[j] / RATE_FACTOR, floor[j + 1])
                shortfalls.append(err[j + 1] / allowed - 1.0 if allowed > 0 else np.inf)
    tol = stated_tolerance(
        0.0,
        f"0: e(2λ) <= max(e(λ)/{RATE_FACTOR:g}, rounding floor) at each "
        f"doubling λ = {lams[0]:g} ... {lams[-1]:g}; the O(1/λ²) remainder makes "
        "e fall like 1/λ (factor 2) or faster",
    )
    part = compare(
        "e(λ) = |λ(ratio - 1) - κ_t| falls >= 1.8x per doubling",
        np.array(shortfalls),
        0.0,
        tol,
        bound="upper",
        kind="rate",
        scale=1.0,
        lhs_name="e(2λ)/max(e(λ)/1.8, floor) - 1 per position and doubling (KL_t from the "
        "tree engine's log Z, κ_t and I_t by direct sums)",
        rhs_name="0 (no shortfall)",
    )
    measurements = {
        "positions": (positions + 1).tolist(),
        "lambdas": lams.tolist(),
        "kappa": [float(kap[t]) for t in positions],
        "errors": errors,
    }
    return [part], measurements


@register(
    "T7d",
    "binary harm, λ → 0: Σ_t KL_t(π*_λ‖π0) → -log P_π0(h = 0)",
    plants=["lambda-sign"],
    applies=lambda inst: inst.binary and 0 < np.sum(inst.harm == 0) < inst.harm.size,
)
def small_lambda_limit(inst, plant):
    sw = sweep(inst, sign=-1.0 if plant == "lambda-sign" else 1.0)
    lams = np.asarray(SMALL_LAMBDAS)
    total = sw["kl"][-len(lams) :].sum(axis=1)
    p_safe = float(np.sum(inst.probs[inst.harm == 0]))
    limit = -np.log(p_safe)
    rho = (1 - p_safe) / p_safe * np.exp(-1 / lams)
    remainder = rho * (1 + 1 / lams)
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * inst.length,
        ops=ops(inst),
        magnitude=1 / lams[-1] + abs(limit) + 1,
        what="1/λ_min + |log P0(h=0)| + 1 bounds |log π*/π0|",
    )
    return [
        compare(
            "|Σ_t KL_t - (-log P0(h=0))| <= ρ(1 + 1/λ)",
            np.abs(total - limit),
            remainder,
            tol,
            bound="upper",
            scale=abs(limit),
            lhs_name="|Σ_t KL_t(π*_λ‖π0) + log P0(h=0)| at λ = 1/2 ... 1/32 (engine)",
            rhs_name="exact remainder bound ρ(1 + 1/λ), ρ = P0(h=1)/P0(h=0) e^{-1/λ}",
        )
    ], {"lambdas": lams.tolist(), "sum_kl": total.tolist(), "limit": limit}


@register("T7e", "Σ_t KL_t(π*_λ‖π0) = KL(π*_λ‖π0) (chain rule)", plants=["lambda-scale"])
def chain_rule(inst, plant):
    lhs = float(sweep(inst)["kl"][0].sum())
    lam = 2 * inst.lam if plant == "lambda-scale" else inst.lam
    log_tilted = _base_log_probs(inst) - inst.harm / lam
    top = np.max(log_tilted)
    log_z = top + np.log(np.sum(np.exp(log_tilted - top)))
    rhs = -float(np.sum(np.exp(log_tilted - log_z) * inst.harm)) / lam - log_z
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * inst.length,
        ops=ops(inst),
        magnitude=1.0 + 2.0 / inst.lam,
        what="1 + 2/λ >= Σ P |log π*/π0|",
    )
    return [
        compare(
            "Σ_t KL_t = KL(π*‖π0)",
            lhs,
            rhs,
            tol,
            lhs_name="Σ_t KL_t(π*_λ‖π0) (tree.per_position_kl, per position)",
            rhs_name="-E_{π*}[h]/λ - log Z over whole responses (closed form, direct)",
        )
    ]
