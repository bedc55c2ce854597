"""T5 (zero gradient beyond the horizon) and T6 (the Cauchy-Schwarz bound).

T5. At every determined prefix ``G = 0``; hence ``g_t = 0`` for every ``t > τ*`` in every
parameterization, shared weights included (``G`` enters ``g_t`` only through determined rows).
The same holds for ``∇L_λ`` while ``π = π0`` at the determined prefixes (T5-kl). Determined
prefixes come from comparing harm values directly (:func:`proofs_check.enumeration.direct_determined`);
gradients come from autodiff (``jax.grad`` w.r.t. the tables, and the three routes to ``g_t``).

T6. ``|g_{t,i}| <= sqrt(I_t) sqrt(E[s_{t,i}²])`` coordinate by coordinate, with ``g_t`` from the
martingale surrogate, ``I_t`` from the engine and ``E[s²]`` from the score tensor.
"""

from __future__ import annotations

import numpy as np

from proofs_check import controls
from proofs_check.common import engine, expect, ops, quantities, score_magnitude
from proofs_check.engine import kl_loss_grad
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance

_LOGIT_TOL_WHAT = "Σ_y P(y)|h(y)||∂log P(y)/∂z_v(u)| <= 2"


def _at_determined(tables, masks) -> np.ndarray:
    """Entries of per-level ``(V**l, V)`` arrays at determined rows, flattened."""
    return np.concatenate([np.asarray(t)[np.asarray(m)].reshape(-1)
                           for t, m in zip(tables, masks[:-1])])


@register("T5", "G = 0 at every determined prefix, so g_t = 0 for t > τ* (every parameterization)",
          plants=["harm-below-determined", "horizon-off-by-one"])
def zero_beyond_horizon(inst, plant):
    harm = controls.planted_harm(inst, plant)
    masks = controls.claimed_determined(inst, plant)
    tau = controls.claimed_horizon(inst, plant)
    eng = engine(inst, harm)
    q = quantities(inst, harm)
    logit_tol = rounding_tolerance(np.float64, terms=inst.num_responses, ops=ops(inst),
                                   magnitude=2.0, what=_LOGIT_TOL_WHAT)
    grad_scale = max(float(np.max(np.abs(t))) for t in eng["grad_tables"])
    parts = [compare("G(u) = 0 at determined u", _at_determined(eng["grad_tables"], masks), 0.0,
                     logit_tol, scale=grad_scale,
                     lhs_name="jax.grad of Σ_y P(y) h(y) w.r.t. the tables, at determined rows",
                     rhs_name="0")]
    if tau < inst.length:
        teacher = q["g_teacher"]
        beyond = np.stack([q["g_autodiff"][tau:], q["g_surrogate"][tau:], teacher[tau:]])
        tol = rounding_tolerance(np.float64, terms=inst.num_responses, ops=ops(inst),
                                 magnitude=2 * score_magnitude(inst), what="2 max E|s_{t,i}|")
        parts.append(compare("g_t = 0 for t > τ*", beyond, 0.0, tol,
                             scale=float(np.max(np.abs(q["g_autodiff"]))),
                             lhs_name="g_t, t > τ*: stop-gradient autodiff (tables, teacher-forced), "
                                      "martingale surrogate",
                             rhs_name="0"))
    return parts, {"horizon": inst.horizon, "claimed_horizon": tau}


@register("T5-kl", "∇L_λ = 0 at determined prefixes while π = π0 there (π ≠ π0 elsewhere)",
          plants=["harm-below-determined", "not-at-base"])
def zero_kl_gradient_beyond_horizon(inst, plant):
    harm = controls.planted_harm(inst, plant)
    masks = inst.determined
    base = inst.tables
    moved = controls.perturbed_tables(base, masks, inst.seed + 1000,
                                      everywhere=plant == "not-at-base")
    grad = [np.asarray(g) for g in kl_loss_grad(moved, base, harm, inst.lam)]
    lam = abs(inst.lam)
    kl_mag = 2.0 + lam * inst.length * (1.0 + max(float(np.max(np.abs(m - b)))
                                                 for m, b in zip(moved, base)))
    tol = rounding_tolerance(np.float64, terms=inst.num_responses, ops=ops(inst),
                             magnitude=kl_mag, what="2 + λ T (1 + max|z - z0|): harm and KL terms")
    return [compare("∇_z L_λ = 0 at determined u", _at_determined(grad, masks), 0.0, tol,
                    scale=max(float(np.max(np.abs(g))) for g in grad),
                    lhs_name="jax.grad of E_π[h] + λ KL(π‖π0) (toy_lm.objectives) at determined rows",
                    rhs_name="0")]


@register("T6", "|g_{t,i}| <= sqrt(I_t) sqrt(E[s_{t,i}²]) (Cauchy-Schwarz, every coordinate)",
          plants=["wrong-position-information"])
def cauchy_schwarz(inst, plant):
    q = inst.quantities
    info = engine(inst)["harm_information"]
    if plant == "wrong-position-information":
        info = np.append(info[1:], 0.0)
    second = np.stack([expect(inst.probs, q["scores"][:, t] ** 2) for t in range(inst.length)])
    bound = np.sqrt(np.maximum(info, 0.0))[:, None] * np.sqrt(second)
    tol = rounding_tolerance(np.float64, terms=inst.num_responses, ops=ops(inst),
                             magnitude=2 * score_magnitude(inst), what="2 max E|s_{t,i}|")
    return [compare("|g_t,i| <= sqrt(I_t E[s²])", np.abs(q["g_surrogate"]), bound, tol,
                    bound="upper", scale=float(np.max(bound, initial=0.0)),
                    lhs_name="|g_{t,i}| (martingale surrogate)",
                    rhs_name="sqrt(I_t) (tree.harm_information) x sqrt(E[s_{t,i}²]) (direct)")]
