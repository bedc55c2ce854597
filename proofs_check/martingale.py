"""T1 (the harm martingale) and T2 (the score has conditional mean zero).

T1. The engine's ``H_t`` equals ``E[h | Y_<=t]`` summed directly over every continuation, and is a
martingale: ``E[Δ_t | Y_<t] = 0`` at every prefix; ``Σ_t Δ_t = h(Y) - E h`` for every response;
``E[Δ_s Δ_t] = 0`` for ``s ≠ t``; ``Var(h) = Σ_t I_t``. ``Δ_t`` is the plain difference of the
engine's ``H`` (the engines' own increments are re-centred against ``π`` by construction, so the
martingale claims on them would hold for any ``H``); ``I_t`` is the engine's. Every engine
(:mod:`proofs_check.engines`) is checked; ``P(y)`` comes from the teacher-forced log-probabilities.

T2. ``E[s_t | Y_<t] = 0`` with ``s_t = ∇_θ log π_θ(y_t|y_<t)`` by autodiff of the teacher-forced
log-probabilities, averaged by direct sums over the responses extending each prefix.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from proofs_check import controls, enumeration
from proofs_check.common import expect, level_blocks, ops, outputs, score_magnitude
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance
from toy_lm.engines import tree

__all__ = [
    "ENGINES",
    "differences",
    "engine_values",
    "martingale_mean",
    "martingale_orthogonal",
    "martingale_telescopes",
    "score_mean_zero",
    "variance_decomposition",
]


#: Engines whose ``H`` and ``I_t`` these checks read.
ENGINES = ("tree", "analysis", "xla", "markov")


def engine_values(inst, plant) -> list[np.ndarray]:
    """The engine's ``H_0 ... H_T`` (or wrong ones under a planted error)."""
    values = [np.asarray(v) for v in outputs(inst)["cond_harm"]]
    if plant == "shifted-H":
        return controls.shifted_levels(values)
    if plant == "uniform-H":  # H computed with uniform instead of π weights
        return enumeration.direct_cond_harm(
            np.full(inst.num_responses, 1.0 / inst.num_responses),
            inst.harm,
            inst.vocab_size,
            inst.length,
        )
    return values


def differences(values, vocab_size: int) -> list[np.ndarray]:
    """``Δ_t = H_t - H_{t-1}`` by plain subtraction (not re-centred: a wrong ``H`` shows)."""
    return [values[t] - np.repeat(values[t - 1], vocab_size) for t in range(1, len(values))]


def _engine_increments(inst, plant):
    if plant == "wrong-baseline-level":
        values = engine_values(inst, None)
        baselines = controls.wrong_level_baseline(values, inst.vocab_size)
        return [
            values[t] - np.repeat(baselines[t - 1], inst.vocab_size)
            for t in range(1, inst.length + 1)
        ]
    return differences(engine_values(inst, plant), inst.vocab_size)


def _per_response(deltas, inst) -> np.ndarray:
    """``Δ_t(y_<=t)`` broadcast to every response: ``(V**T, T)``."""
    return np.stack([enumeration.expand(d, inst.vocab_size, inst.length) for d in deltas], axis=1)


@register(
    "T1",
    "H_t = E[h | Y_<=t] (engine against direct sums) and E[Δ_t | Y_<t] = 0 at every prefix",
    plants=["shifted-H", "uniform-H"],
    engines=ENGINES,
)
def martingale_mean(inst, plant):
    values = engine_values(inst, plant)
    direct = inst.direct_cond_harm
    flat = lambda vs: np.concatenate([np.asarray(v).reshape(-1) for v in vs])
    tol_h = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=1.0,
        what="Σ_{y ⊒ u} P(y|u) |h(y)| <= 1",
    )
    conditionals = enumeration.direct_conditionals(inst.probs, inst.vocab_size, inst.length)
    deltas = differences(values, inst.vocab_size)
    means = [
        np.sum(pi * d.reshape(-1, inst.vocab_size), axis=1) for pi, d in zip(conditionals, deltas)
    ]
    scale = max(float(np.max(np.abs(d))) for d in deltas)
    tol = rounding_tolerance(
        np.float64,
        terms=inst.vocab_size,
        ops=ops(inst),
        magnitude=max(scale, 1.0),
        what="|Δ_t| <= 1, Σ_v π(v|u) = 1",
    )
    parts = [
        compare(
            "H_t(u) = E[h | Y_<=t = u]",
            flat(values),
            flat(direct),
            tol_h,
            lhs_name=f"H_0 ... H_T from the {inst.engine} engine",
            rhs_name="Σ_{y ⊒ u} P(y) h(y) / Σ_{y ⊒ u} P(y) (direct sums over responses)",
        ),
        compare(
            "E[Δ_t|Y_<t] = 0",
            np.concatenate(means),
            0.0,
            tol,
            scale=scale,
            lhs_name="Σ_v π(v|u) (H_t(uv) - H_{t-1}(u)), π by direct marginals, H by the engine",
            rhs_name="0",
        ),
    ]
    if inst.engine == "tree":
        # tree.expected_harm, which every objective builds on (found missing by the mechanical
        # mutants: returning H_1(0) instead of H_0 was caught only by a training check)
        value = float(
            tree.expected_harm(tuple(jnp.asarray(z) for z in inst.tables), jnp.asarray(inst.harm))
        )
        parts.append(
            compare(
                "E_π[h] (tree.expected_harm) = Σ_y P(y) h(y)",
                value,
                float(np.dot(inst.probs, inst.harm)),
                tol_h,
                lhs_name="toy_lm.engines.tree.expected_harm of the tables",
                rhs_name="Σ_y P(y) h(y), P teacher-forced (direct sum)",
            )
        )
    return parts


@register(
    "T1-sum", "Σ_t Δ_t(y) = h(y) - E h for every response y", plants=["shifted-H"], engines=ENGINES
)
def martingale_telescopes(inst, plant):
    deltas = _per_response(_engine_increments(inst, plant), inst)
    lhs = deltas.sum(axis=1)
    rhs = inst.harm - float(np.sum(inst.probs * inst.harm))
    tol = rounding_tolerance(
        np.float64,
        terms=inst.length + inst.num_responses,
        ops=ops(inst),
        magnitude=float(np.max(np.abs(deltas).sum(axis=1))) + 1.0,
        what="Σ_t |Δ_t| + |h|",
    )
    return [
        compare(
            "Σ_t Δ_t = h - E h",
            lhs,
            rhs,
            tol,
            lhs_name="Σ_t (H_t(y) - H_{t-1}(y)), H by the engine",
            rhs_name="h(y) - Σ_y P(y) h(y) (direct sum)",
        )
    ]


@register(
    "T1-orth",
    "E[Δ_s Δ_t] = 0 for s ≠ t (orthogonal increments)",
    plants=["wrong-baseline-level"],
    applies=lambda inst: inst.length >= 2,
    engines=ENGINES,
)
def martingale_orthogonal(inst, plant):
    deltas = _per_response(_engine_increments(inst, plant), inst)
    pairs = [(s, t) for s in range(inst.length) for t in range(s + 1, inst.length)]
    lhs = np.array([expect(inst.probs, deltas[:, s] * deltas[:, t]) for s, t in pairs])
    mag = max(float(expect(inst.probs, np.abs(deltas[:, s] * deltas[:, t]))) for s, t in pairs)
    scale = float(np.max(expect(inst.probs, deltas**2)))
    tol = rounding_tolerance(
        np.float64, terms=inst.num_responses, ops=ops(inst), magnitude=mag, what="Σ_y P(y)|Δ_s Δ_t|"
    )
    return [
        compare(
            "E[Δ_s Δ_t] = 0, s < t",
            lhs,
            0.0,
            tol,
            scale=scale,
            lhs_name="Σ_y P(y) Δ_s(y) Δ_t(y), P direct, Δ = differences of the engine's H",
            rhs_name="0",
        )
    ]


@register(
    "T1-var",
    "Var(h) = Σ_t I_t (harm variance resolved position by position)",
    plants=["shifted-H"],
    engines=ENGINES,
)
def variance_decomposition(inst, plant):
    mean = float(np.sum(inst.probs * inst.harm))
    lhs = float(np.sum(inst.probs * (inst.harm - mean) ** 2))
    if plant == "shifted-H":
        marg = enumeration.prefix_marginals(inst.probs, inst.vocab_size, inst.length)
        deltas = _engine_increments(inst, plant)
        info = np.array([np.sum(marg[t + 1] * d**2) for t, d in enumerate(deltas)])
    else:
        info = np.asarray(outputs(inst)["harm_information"])
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * inst.length,
        ops=ops(inst),
        magnitude=1.0,
        what="Σ P(y) Δ_t² <= 1 and Σ P(y)(h - Eh)² <= 1",
    )
    return [
        compare(
            "Var(h) = Σ_t I_t",
            lhs,
            float(np.sum(info)),
            tol,
            lhs_name="Σ_y P(y) (h(y) - E h)² (direct)",
            rhs_name=f"Σ_t I_t from the {inst.engine} engine",
        )
    ]


def _score_conditional_means(inst, scores, weights) -> list[np.ndarray]:
    """``E[s_t | y_<t]`` at every level-``(t-1)`` prefix, ``(V**(t-1), D)`` per position."""
    out = []
    for t in range(1, inst.length + 1):
        w = level_blocks(weights, inst.vocab_size, t - 1)  # (V**(t-1), V**(T-t+1))
        s = level_blocks(scores[:, t - 1], inst.vocab_size, t - 1)  # (.., .., D)
        out.append(np.einsum("ub,ubd->ud", w / w.sum(axis=1, keepdims=True), s))
    return out


@register(
    "T2",
    "E[s_t | Y_<t] = 0 at every prefix (score of every parameterization)",
    plants=["previous-position-score", "off-policy-weights"],
)
def score_mean_zero(inst, plant):
    scores = inst.quantities["scores"]  # (N, T, D)
    if plant == "previous-position-score":
        scores = np.concatenate([scores[:, :1], scores[:, :-1]], axis=1)  # s_{t-1} at t >= 2
    weights = np.ones_like(inst.probs) if plant == "off-policy-weights" else inst.probs
    means = _score_conditional_means(inst, scores, weights)
    if plant == "previous-position-score":
        means = means[1:]  # position 1 has no previous position
    lhs = np.concatenate([m.reshape(-1) for m in means])
    mag = float(np.max(np.abs(scores), initial=0.0))
    tol = rounding_tolerance(
        np.float64, terms=inst.num_responses, ops=ops(inst), magnitude=mag, what="max |s_{t,i}(y)|"
    )
    return [
        compare(
            "E[s_t|Y_<t] = 0",
            lhs,
            0.0,
            tol,
            scale=score_magnitude(inst),
            lhs_name="Σ_{y ⊒ u} P(y) s_t(y) / P(u), s_t = jacrev of teacher-forced log π",
            rhs_name="0",
        )
    ]
