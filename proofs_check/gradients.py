"""T3 (the per-position gradient is a covariance) and T4 (its logit form).

T3. ``g_t = E[h s_t] = E[H_t s_t] = E[Δ_t s_t] = Cov(H_t, s_t)`` and ``Σ_t g_t = ∇_θ E[h]``.
Autodiff side: the foundation's stop-gradient decomposition on the level tables
(:func:`toy_lm.engines.gradients.per_position_grads_autodiff`) and an independent one on the teacher-forced
log-probabilities (:func:`proofs_check.autodiff.teacher_forced_grads`). Covariance side: the four
expectations by direct sums over responses with the score tensor ``s_t(y)`` and ``H_t`` from
:mod:`proofs_check.enumeration`, and the foundation's martingale surrogate
(:func:`toy_lm.engines.gradients.per_position_grads_surrogate`). Every parameterization.

T4. ``G(y_<t)_v = P(y_<t) π(v|y_<t) (H_t(y_<t v) - H_{t-1}(y_<t))``: ``jax.grad`` of
``Σ_y P(y) h(y)`` with respect to the level tables, and the engine's closed form
(:func:`toy_lm.engines.tree.logit_grads`), against the closed form evaluated from direct sums.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from proofs_check import controls, enumeration
from proofs_check.autodiff import teacher_forced_grads, to_numpy
from proofs_check.common import engine, expect, ops, score_magnitude
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance
from toy_lm.engines import gradients

__all__ = [
    "closed_form_logit_grads",
    "covariance_forms",
    "gradient_is_covariance",
    "gradients_sum_to_total",
    "logit_form",
]


def _teacher_forced(inst, stop_gradient=True) -> np.ndarray:
    if stop_gradient:
        return inst.quantities["g_teacher"]
    return to_numpy(teacher_forced_grads(inst.policy, inst.params, inst.harm, stop_gradient=False))


def covariance_forms(inst, scores) -> np.ndarray:
    """``E[h s_t], E[H_t s_t], E[Δ_t s_t], Cov(H_t, s_t)`` by direct sums: ``(4, T, D)``."""
    values = inst.direct_cond_harm
    probs, vocab, length = inst.probs, inst.vocab_size, inst.length
    forms = np.zeros((4,) + scores.shape[1:])
    for t in range(1, length + 1):
        s = scores[:, t - 1]
        h_t = enumeration.expand(values[t], vocab, length)
        h_prev = enumeration.expand(values[t - 1], vocab, length)
        forms[0, t - 1] = expect(probs, inst.harm[:, None] * s)
        forms[1, t - 1] = expect(probs, h_t[:, None] * s)
        forms[2, t - 1] = expect(probs, (h_t - h_prev)[:, None] * s)
        forms[3, t - 1] = forms[1, t - 1] - expect(probs, h_t) * expect(probs, s)
    return forms


def _gradient_tolerance(inst):
    return rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=2 * score_magnitude(inst),
        what="2 max_{t,i} E|s_{t,i}|, as |h|, |H_t|, |Δ_t| <= 1",
    )


@register(
    "T3",
    "g_t = E[h s_t] = E[H_t s_t] = E[Δ_t s_t] = Cov(H_t, s_t) (every parameterization)",
    plants=["no-stop-gradient", "wrong-position-score"],
)
def gradient_is_covariance(inst, plant):
    q = inst.quantities
    scores = q["scores"]
    if plant == "wrong-position-score":
        scores = np.roll(scores, -1, axis=1)
    teacher = _teacher_forced(inst, stop_gradient=plant != "no-stop-gradient")
    lhs = np.stack([q["g_autodiff"], teacher])[:, None]  # (2, 1, T, D)
    rhs = np.concatenate([covariance_forms(inst, scores), q["g_surrogate"][None]])[
        None
    ]  # (1, 5, T, D)
    g = q["g_autodiff"]
    split = max(g.shape[1] // 2, 1)  # two leaves with a leading T axis, as a parameter pytree
    norms = np.asarray(
        gradients.per_position_norms((jnp.asarray(g[:, :split]), jnp.asarray(g[:, split:])))
    )
    norm_tol = rounding_tolerance(
        np.float64,
        terms=g.shape[1],
        ops=2,
        magnitude=float(np.max(np.abs(g), initial=0.0)) * g.shape[1],
        what="D max|g_{t,i}|: a sum of D squares, then a square root",
    )
    return [
        compare(
            "g_t (autodiff) = covariance forms",
            lhs,
            rhs,
            _gradient_tolerance(inst),
            lhs_name="g_t by stop-gradient autodiff: tree tables (toy_lm.engines.gradients) and "
            "teacher-forced log-probs",
            rhs_name="E[h s_t], E[H_t s_t], E[Δ_t s_t], Cov(H_t, s_t) by direct sums; "
            "martingale surrogate (toy_lm.engines.gradients)",
        ),
        compare(
            "‖g_t‖ (toy_lm.engines.gradients.per_position_norms) = numpy norm",
            norms,
            np.linalg.norm(g, axis=1),
            norm_tol,
            lhs_name="per_position_norms of g_t split over two leaves",
            rhs_name="numpy.linalg.norm of g_t over every parameter",
        ),
    ]


@register(
    "T3-total",
    "Σ_t g_t = ∇_θ E[h] (plain jax.grad of the exact expectation)",
    plants=["no-stop-gradient"],
)
def gradients_sum_to_total(inst, plant):
    q = inst.quantities
    teacher = _teacher_forced(inst, stop_gradient=plant != "no-stop-gradient")
    lhs = np.stack([q["g_surrogate"].sum(axis=0), teacher.sum(axis=0)])
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * inst.length,
        ops=ops(inst),
        magnitude=2 * score_magnitude(inst) * inst.length,
        what="T x 2 max E|s_{t,i}|",
    )
    return [
        compare(
            "Σ_t g_t = ∇E[h]",
            lhs,
            q["g_total"][None],
            tol,
            lhs_name="Σ_t g_t: martingale surrogate; teacher-forced stop-gradient autodiff",
            rhs_name="jax.grad of Σ_y P(y) h(y) (toy_lm.engines.gradients.total_grad)",
        )
    ]


def closed_form_logit_grads(inst, values=None, baselines=None) -> list[np.ndarray]:
    """``P(u) π(v|u) (H_{l+1}(uv) - b(u))`` per level from direct sums (``b = H_l`` by default)."""
    vocab, length = inst.vocab_size, inst.length
    values = inst.direct_cond_harm if values is None else values
    baselines = values[:-1] if baselines is None else baselines
    marg = enumeration.prefix_marginals(inst.probs, vocab, length)
    conds = enumeration.direct_conditionals(inst.probs, vocab, length)
    return [
        marg[l][:, None]
        * conds[l]
        * (values[l + 1].reshape(-1, vocab) - np.asarray(baselines[l])[:, None])
        for l in range(length)
    ]


@register(
    "T4",
    "G(y_<t)_v = P(y_<t) π(v|y_<t) (H_t(y_<t v) - H_{t-1}(y_<t)) (logit form)",
    plants=["shifted-H", "wrong-baseline-level"],
)
def logit_form(inst, plant):
    values = inst.direct_cond_harm
    if plant == "shifted-H":
        closed = closed_form_logit_grads(inst, controls.shifted_levels(values))
    elif plant == "wrong-baseline-level":
        closed = closed_form_logit_grads(
            inst, baselines=controls.wrong_level_baseline(values, inst.vocab_size)
        )
    else:
        closed = closed_form_logit_grads(inst)
    eng = engine(inst)
    flat = lambda tables: np.concatenate([np.asarray(t).reshape(-1) for t in tables])
    lhs = np.stack([flat(eng["grad_tables"]), flat(eng["logit_grads"])])
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=2.0,
        what="Σ_y P(y)|h(y)||∂log P(y)/∂z_v(u)| <= 2",
    )
    return [
        compare(
            "∂E[h]/∂z(u) = P π (H_t - H_{t-1})",
            lhs,
            flat(closed)[None],
            tol,
            lhs_name="jax.grad of Σ_y P(y) h(y) w.r.t. the tables; tree.logit_grads",
            rhs_name="P(u) π(v|u) (H_t(uv) - H_{t-1}(u)) from direct sums",
        )
    ]
