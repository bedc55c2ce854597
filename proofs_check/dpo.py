"""T11: DPO is shallow too.

Preference pairs ``(y, y') ~ π_ref ⊗ π_ref`` labelled by ``h`` (the less harmful response preferred),
exact expected loss :func:`toy_lm.engines.objectives.dpo_loss`. At ``π = π_ref`` the implicit rewards
``r(y) = log π(y) - log π_ref(y)`` vanish and ``∂L/∂r(y) = -(β/2) π_ref(y) [P(h(Y') > h(y)) -
P(h(Y') < h(y))] =: c(y)``, a function of ``π_ref(y)`` and ``h(y)`` only, so

``G(u)_v = C(uv) - π(v|u) C(u)``,  ``C(u) = Σ_{y ⊒ u} c(y)``,

which is zero at every determined prefix. T11 checks ``jax.grad`` of the objective against this
closed form (direct sums) and the zero; T11-train runs exact-expectation DPO with optax (SGD,
tabular, from ``π_ref``) and checks after every step that determined conditionals stay at ``π_ref``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from proofs_check import controls, enumeration
from proofs_check.autodiff import response_log_probs, value_and_flat_grad
from proofs_check.common import ops
from proofs_check.engine import dpo_grad
from proofs_check.horizon import at_determined
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance
from proofs_check.training import frozen_tolerance, train_tables

__all__ = ["BETA", "DPO_LR", "DPO_STEPS", "dpo_closed_form", "dpo_gradient", "dpo_training"]

#: DPO temperature.
BETA = 0.5

#: Steps and learning rate of T11-train (plain gradient descent).
DPO_STEPS, DPO_LR = 16, 1.0


def dpo_closed_form(inst, beta: float = BETA) -> list[np.ndarray]:
    """``G(u)_v = C(uv) - π(v|u) C(u)`` at ``π = π_ref`` from direct sums, per level."""
    vocab, length = inst.vocab_size, inst.length
    probs, harm = inst.probs, inst.harm
    above = np.array([np.sum(probs[harm > v]) for v in harm])
    below = np.array([np.sum(probs[harm < v]) for v in harm])
    c = -(beta / 2) * probs * (above - below)
    conds = enumeration.direct_conditionals(probs, vocab, length)
    out = []
    for level in range(length):
        child = enumeration.block_sums(c, vocab, level + 1).reshape(-1, vocab)
        parent = enumeration.block_sums(c, vocab, level)
        out.append(child - conds[level] * parent[:, None])
    return out


def _reference(inst, plant):
    if plant == "wrong-reference":
        return controls.perturbed_tables(
            inst.tables, inst.determined, inst.seed + 11, everywhere=True
        )
    return inst.tables


def _tolerance(inst):
    return rounding_tolerance(
        np.float64,
        terms=inst.num_responses**2,
        ops=ops(inst),
        magnitude=2 * BETA,
        what="2β: Σ pairs π_ref(y)π_ref(y')|∂ℓ| <= β",
    )


@register(
    "T11",
    "at π = π_ref the exact DPO gradient is C(uv) - π(v|u)C(u) and vanishes at determined prefixes",
    plants=["harm-below-determined", "wrong-reference"],
)
def dpo_gradient(inst, plant):
    harm = controls.planted_harm(inst, plant)
    grad = [np.asarray(g) for g in dpo_grad(inst.tables, _reference(inst, plant), harm, BETA)]
    closed = dpo_closed_form(inst)
    flat = lambda ts: np.concatenate([np.asarray(t).reshape(-1) for t in ts])
    tol = _tolerance(inst)
    return [
        compare(
            "∇L_DPO = C(uv) - π(v|u) C(u) at π = π_ref",
            flat(grad),
            flat(closed),
            tol,
            lhs_name="jax.grad of toy_lm.engines.objectives.dpo_loss w.r.t. the tables",
            rhs_name="closed form from direct sums over responses",
        ),
        compare(
            "∇L_DPO = 0 at determined prefixes",
            at_determined(grad, inst.determined),
            0.0,
            tol,
            scale=float(np.max(np.abs(flat(grad)))),
            lhs_name="jax.grad of dpo_loss at determined rows",
            rhs_name="0",
        ),
        _away_from_reference(inst),
    ]


def _away_from_reference(inst):
    """``L_DPO`` and its gradient at a perturbed ``π ≠ π_ref`` against the pair sum written here
    over strictly ordered pairs (found missing by the mechanical mutants: counting tied pairs in
    both directions cancels at ``π = π_ref``, where the two parts above look)."""

    from toy_lm.engines.objectives import dpo_loss

    vocab, length = inst.vocab_size, inst.length
    ref = tuple(jnp.asarray(z) for z in inst.tables)
    moved = tuple(
        jnp.asarray(z)
        for z in controls.perturbed_tables(
            inst.tables, inst.determined, inst.seed + 13, everywhere=True
        )
    )
    harm = jnp.asarray(inst.harm)
    strictly = jnp.asarray(inst.harm[:, None] < inst.harm[None, :])

    def log_probs(z):
        return response_log_probs(z, vocab, length)

    ref_logp = log_probs(ref)

    def direct(z):
        r = log_probs(z) - ref_logp
        pairs = jnp.exp(ref_logp[:, None] + ref_logp[None, :])
        return jnp.sum(
            jnp.where(strictly, pairs * jnp.logaddexp(0.0, -BETA * (r[:, None] - r[None, :])), 0.0)
        )

    loss = lambda z: dpo_loss(z, ref, harm, BETA)
    lhs, rhs = value_and_flat_grad(loss, moved), value_and_flat_grad(direct, moved)
    r = np.asarray(log_probs(moved) - ref_logp)
    worst = float(np.log1p(np.exp(BETA * (np.max(r) - np.min(r)))))
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses**2,
        ops=ops(inst),
        magnitude=2 * (worst + BETA),
        what="2 (max -log σ(β Δr) + β): the pair weights sum to <= 1",
    )
    return compare(
        "L_DPO and ∇L_DPO at π ≠ π_ref = sum over strictly ordered pairs",
        lhs,
        rhs,
        tol,
        lhs_name="toy_lm.engines.objectives.dpo_loss and its jax.grad at perturbed tables",
        rhs_name="Σ_{h(y) < h(y')} π_ref(y) π_ref(y') softplus(-β (r(y) - r(y'))) over "
        "every pair, and its jax.grad",
    )


@register(
    "T11-train",
    "exact DPO (optax SGD, tabular, from π_ref) keeps determined conditionals at "
    "π_ref at every step",
    plants=["harm-below-determined", "wrong-reference"],
)
def dpo_training(inst, plant):
    harm = controls.planted_harm(inst, plant)
    start = tuple(jnp.asarray(z) for z in inst.tables)
    ref = tuple(jnp.asarray(z) for z in _reference(inst, plant))
    masks = tuple(jnp.asarray(m) for m in inst.determined[:-1])
    _, hist = train_tables(
        start,
        start,
        masks,
        (ref, jnp.asarray(harm), BETA),
        objective="dpo",
        steps=DPO_STEPS,
        optimizer="sgd",
        learning_rate=DPO_LR,
    )
    change = np.asarray(hist["determined_change"])
    return [
        compare(
            "determined conditionals stay at π_ref at every step",
            change,
            0.0,
            frozen_tolerance(inst, DPO_STEPS),
            scale=1.0,
            lhs_name="max |log π_k(v|u) - log π_ref(v|u)| over determined u, per step",
            rhs_name="0",
        )
    ], {"kl_t_final": np.asarray(hist["kl_t"])[-1].tolist()}
