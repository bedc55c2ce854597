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

from proofs_check import controls, enumeration
from proofs_check.common import engine, expect, ops, outputs, quantities, score_magnitude
from proofs_check.engine import kl_loss_grad
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance, stated_tolerance

__all__ = [
    "at_determined",
    "cauchy_schwarz",
    "direct_information",
    "information_horizon",
    "zero_beyond_horizon",
    "zero_kl_gradient_beyond_horizon",
]

_LOGIT_TOL_WHAT = "Σ_y P(y)|h(y)||∂log P(y)/∂z_v(u)| <= 2"


def at_determined(tables, masks) -> np.ndarray:
    """Entries of per-level ``(V**l, V)`` arrays at determined rows, flattened."""
    return np.concatenate(
        [np.asarray(t)[np.asarray(m)].reshape(-1) for t, m in zip(tables, masks[:-1])]
    )


@register(
    "T5",
    "G = 0 at every determined prefix, so g_t = 0 for t > τ* (every parameterization)",
    plants=["harm-below-determined", "horizon-off-by-one"],
    applies=controls.has_determined_prefix,
    engines=("tree", "analysis", "xla"),
)
def zero_beyond_horizon(inst, plant):
    harm = controls.planted_harm(inst, plant)
    masks = controls.claimed_determined(inst, plant)
    tau = controls.claimed_horizon(inst, plant)
    logit_tol = rounding_tolerance(
        np.float64, terms=inst.num_responses, ops=ops(inst), magnitude=2.0, what=_LOGIT_TOL_WHAT
    )
    engine_grads = outputs(inst, harm)["logit_grads"]
    grad_scale = max(float(np.max(np.abs(t))) for t in engine_grads)
    parts = [
        compare(
            "G(u) = 0 at determined u (engine)",
            at_determined(engine_grads, masks),
            0.0,
            logit_tol,
            scale=grad_scale,
            lhs_name=f"logit gradients of the {inst.engine} engine at determined rows "
            "(determined by direct comparison of harm values)",
            rhs_name="0",
        )
    ]
    if inst.engine != "tree":
        return parts, {"horizon": inst.horizon, "claimed_horizon": tau}
    eng = engine(inst, harm)
    q = quantities(inst, harm)
    parts.append(
        compare(
            "G(u) = 0 at determined u (autodiff)",
            at_determined(eng["grad_tables"], masks),
            0.0,
            logit_tol,
            scale=grad_scale,
            lhs_name="jax.grad of Σ_y P(y) h(y) w.r.t. the tables, at determined rows",
            rhs_name="0",
        )
    )
    teacher = q["g_teacher"]
    beyond = np.stack([q["g_autodiff"][tau:], q["g_surrogate"][tau:], teacher[tau:]])
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=2 * score_magnitude(inst),
        what="2 max E|s_{t,i}|",
    )
    parts.append(
        compare(
            "g_t = 0 for t > τ*",
            beyond,
            0.0,
            tol,
            scale=float(np.max(np.abs(q["g_autodiff"]))),
            lhs_name="g_t, t > τ*: stop-gradient autodiff (tables, teacher-forced), "
            "martingale surrogate (n/a when τ* = T)",
            rhs_name="0",
        )
    )
    return parts, {"horizon": inst.horizon, "claimed_horizon": tau}


@register(
    "T5-kl",
    "∇L_λ = 0 at determined prefixes while π = π0 there (π ≠ π0 elsewhere)",
    plants=["harm-below-determined", "not-at-base"],
)
def zero_kl_gradient_beyond_horizon(inst, plant):
    harm = controls.planted_harm(inst, plant)
    masks = inst.determined
    base = inst.tables
    moved = controls.perturbed_tables(
        base, masks, inst.seed + 1000, everywhere=plant == "not-at-base"
    )
    grad = [np.asarray(g) for g in kl_loss_grad(moved, base, harm, inst.lam)]
    lam = abs(inst.lam)
    kl_mag = 2.0 + lam * inst.length * (
        1.0 + max(float(np.max(np.abs(m - b))) for m, b in zip(moved, base))
    )
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=kl_mag,
        what="2 + λ T (1 + max|z - z0|): harm and KL terms",
    )
    return [
        compare(
            "∇_z L_λ = 0 at determined u",
            at_determined(grad, masks),
            0.0,
            tol,
            scale=max(float(np.max(np.abs(g))) for g in grad),
            lhs_name="jax.grad of E_π[h] + λ KL(π‖π0) (toy_lm.engines.objectives) at determined rows",
            rhs_name="0",
        ),
        _loss_against_direct_sum(inst, moved, tol),
    ]


def _loss_against_direct_sum(inst, moved, tol):
    """``L_λ`` and its full gradient at ``moved`` against ``Σ_y P(y) (h(y) + λ log P(y)/P0(y))``
    written over every response (proposed by the mechanical-mutant triage: only the determined
    rows of the gradient were compared)."""
    import jax.numpy as jnp

    from proofs_check.autodiff import response_log_probs, value_and_flat_grad
    from toy_lm.engines.objectives import kl_regularized_loss

    vocab, length = inst.vocab_size, inst.length
    base = tuple(jnp.asarray(z) for z in inst.tables)
    harm = jnp.asarray(inst.harm)
    base_logp = response_log_probs(base, vocab, length)

    def direct(z):
        logp = response_log_probs(z, vocab, length)
        return jnp.sum(jnp.exp(logp) * (harm + inst.lam * (logp - base_logp)))

    loss = lambda z: kl_regularized_loss(z, base, harm, inst.lam)
    z = tuple(jnp.asarray(t) for t in moved)
    return compare(
        "L_λ and ∇L_λ = direct sums over responses",
        value_and_flat_grad(loss, z),
        value_and_flat_grad(direct, z),
        tol,
        lhs_name="toy_lm.engines.objectives.kl_regularized_loss and its jax.grad (all rows)",
        rhs_name="Σ_y P(y) (h(y) + λ log P(y)/P0(y)) over every response, and its jax.grad",
    )


def direct_information(inst, values=None) -> np.ndarray:
    """``I_t = Σ_{y_<=t} P(y_<=t) (H_t - H_{t-1})²`` from direct sums only (no engine), ``(T,)``."""
    values = inst.direct_cond_harm if values is None else values
    marg = enumeration.prefix_marginals(inst.probs, inst.vocab_size, inst.length)
    return np.array(
        [
            np.sum(marg[t] * (values[t] - np.repeat(values[t - 1], inst.vocab_size)) ** 2)
            for t in range(1, inst.length + 1)
        ]
    )


@register(
    "T6",
    "|g_{t,i}| <= sqrt(I_t) sqrt(E[s_{t,i}²]) (Cauchy-Schwarz, every coordinate)",
    plants=["wrong-position-information"],
)
def cauchy_schwarz(inst, plant):
    q = inst.quantities
    info = direct_information(inst)
    if plant == "wrong-position-information":
        info = np.append(info[1:], 0.0)
    second = np.stack([expect(inst.probs, q["scores"][:, t] ** 2) for t in range(inst.length)])
    bound = np.sqrt(np.maximum(info, 0.0))[:, None] * np.sqrt(second)
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=2 * score_magnitude(inst),
        what="2 max E|s_{t,i}|",
    )
    return [
        compare(
            "|g_t,i| <= sqrt(I_t E[s²])",
            np.abs(q["g_surrogate"]),
            bound,
            tol,
            bound="upper",
            scale=float(np.max(bound, initial=0.0)),
            lhs_name="|g_{t,i}| (toy_lm.engines.gradients martingale surrogate)",
            rhs_name="sqrt(I_t) x sqrt(E[s_{t,i}²]), I_t and E[s²] by direct sums (no engine code)",
        )
    ]


def _descendants_constant(values, vocab_size: int) -> list[np.ndarray]:
    """Per level, whether every later ``H`` along every continuation equals ``H(u)`` exactly."""
    length = len(values) - 1
    same = [np.ones(values[length].shape, bool)]
    for level in range(length - 1, -1, -1):
        child = np.asarray(values[level + 1]).reshape(-1, vocab_size)
        ok = same[-1].reshape(-1, vocab_size).all(axis=1)
        same.append(ok & np.all(child == np.asarray(values[level])[:, None], axis=1))
    return same[::-1]


@register(
    "T12",
    "τ* is where information ends: a prefix is determined iff every later increment "
    "along it is exactly 0; I_t = 0 for t > τ*, I_τ* > 0",
    plants=["masks-from-first-child", "horizon-off-by-one"],
    engines=("tree", "analysis", "xla", "markov"),
)
def information_horizon(inst, plant):
    out = outputs(inst)
    direct = inst.determined
    masks = [np.asarray(m) for m in out["determined"]]
    if plant == "masks-from-first-child":  # det(u) read from the first child's subtree only
        masks = [m.reshape(-1, inst.vocab_size)[:, 0] for m in masks[1:]] + [masks[-1]]
    values = [np.asarray(v) for v in out["cond_harm"]]
    info = np.asarray(out["harm_information"])
    tau = controls.claimed_horizon(inst, plant) if plant == "horizon-off-by-one" else out["horizon"]
    flat = lambda ms: np.concatenate([np.asarray(m, np.float64).reshape(-1) for m in ms])
    exact = stated_tolerance(0.0, "0: masks and harm values are compared exactly (no arithmetic)")
    flat_zero = _descendants_constant(values, inst.vocab_size)
    tol_h = rounding_tolerance(
        np.float64, terms=inst.num_responses, ops=ops(inst), magnitude=1.0, what="|H| <= 1"
    )
    parts = [
        compare(
            "engine masks = determined (direct comparison of harm values)",
            flat(masks),
            flat(direct),
            exact,
            lhs_name=f"det_0 ... det_T of the {inst.engine} engine",
            rhs_name="h constant on every continuation of u (direct)",
        ),
        compare(
            "later increments all exactly 0 iff u is determined",
            flat(flat_zero),
            flat(direct),
            exact,
            lhs_name="H(w) == H(u) for every descendant w (engine H, exact equality)",
            rhs_name="h constant on every continuation of u (direct)",
        ),
        compare(
            "τ* (engine) = τ* (direct)",
            float(tau),
            float(inst.horizon),
            exact,
            lhs_name=f"horizon of the {inst.engine} engine",
            rhs_name="τ* from direct masks",
        ),
        compare(
            "I_t = 0 exactly for t > τ*",
            info[inst.horizon :],
            0.0,
            exact,
            scale=float(np.max(info, initial=0.0)),
            lhs_name=f"I_t of the {inst.engine} engine, t > τ* (n/a when τ* = T)",
            rhs_name="0",
        ),
    ]
    if inst.horizon >= 1:
        # I_τ* > 0: its direct value is the floor a correct engine must reach (a rounding-level
        # I_τ* would be indistinguishable from 0, so say how large it really is).
        true_info = direct_information(inst)[inst.horizon - 1]
        parts.append(
            compare(
                "I_τ* > 0",
                info[inst.horizon - 1],
                true_info,
                tol_h,
                bound="lower",
                lhs_name=f"I_τ* of the {inst.engine} engine",
                rhs_name="I_τ* by direct sums (> 0: h varies at level τ*)",
            )
        )
    return parts, {"horizon": int(inst.horizon)}
