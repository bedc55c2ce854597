"""T8: gradient descent on ``L_λ`` from ``π0`` stays shallow, step by step, and converges to ``π*_λ``.

Training runs with optax on the exact expectation (no sampling): tabular parameters (the level
tables themselves) start at the base policy ``π0`` and follow gradient descent on
``L_λ = E_π[h] + λ KL(π‖π0)`` (:func:`toy_lm.engines.objectives.kl_regularized_loss`), preconditioned by
the Fisher diagonal of the tabular softmax (:func:`scale_by_inverse_prefix_mass`: the gradient at
``z_v(u)`` divided by ``P(u) π(v|u)``, i.e. natural gradient descent). With step ``1/λ`` this is
soft policy iteration and reaches ``π*_λ`` to rounding within ``T`` steps; plain gradient descent
needs ``~ 1/min P(u)`` steps. (L-BFGS is *not* suitable here: its inverse-Hessian estimate
amplifies the ``1e-17`` rounding residuals at determined prefixes, whose curvature it cannot see,
until those conditionals move by ``1e-3`` within 40 steps - a property of the optimizer, not of
the theorem.) After every step the
loop records (i) the largest change of ``log π(.|u)`` at determined prefixes, (ii) ``KL_t(π_k‖π0)``
for every position and (iii) the gap ``KL(π_k‖π*_λ)`` to the engine's equilibrium; the check
asserts (i) = 0 and (ii) = 0 beyond the horizon at every step, and (iii) -> 0.

For a shared-weight parameterization (positional, Markov, transformer) the same objective is also
trained through the policy's own parameters with Adam, and the spill-over beyond the horizon
(the largest ``Σ_{t>τ*} KL_t(π_k‖π0)`` and determined-prefix change over the steps) is *measured*
and reported, not asserted: shared weights let early positions move later ones.

:func:`train_tables` is the generic loop also used by T9 (recovery) and T11 (DPO).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proofs_check import controls
from proofs_check.autodiff import jit
from proofs_check.common import ops
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance
from toy_lm.engines import objectives, tree
from toy_lm.precision import eps_tolerance

__all__ = [
    "CONVERGENCE_FACTOR",
    "NATIVE_LR",
    "NATIVE_STEPS",
    "SGD_LR",
    "STEPS",
    "freeze_rows",
    "frozen_tolerance",
    "scale_by_inverse_prefix_mass",
    "shared_weight_spill_over",
    "train_native",
    "train_tables",
    "training_stays_shallow",
]

#: Optimizer steps of the exact-expectation training runs (natural gradient, step 1/λ).
STEPS = 16

#: Steps and learning rate of the shared-weight (native parameter) spill-over measurement.
NATIVE_STEPS, NATIVE_LR = 30, 0.05

#: Convergence: the gap ``KL(π_S‖π*_λ)`` after :data:`STEPS` steps must be below this.
#: ``L_λ(π) - L_λ(π*_λ) = λ KL(π‖π*_λ)`` exactly; natural gradient with step ``1/λ`` is soft policy
#: iteration, exact after ``T <= STEPS`` steps up to rounding, so the gap is a rounding residual
#: (``~ eps x V**T``); the bound leaves ``1e6`` eps of room.
CONVERGENCE_FACTOR = 1e6


def scale_by_inverse_prefix_mass() -> optax.GradientTransformation:
    """Divide ``∂L/∂z_v(u)`` by ``P(u) π(v|u)`` (the Fisher diagonal of a tabular softmax policy).

    For ``L_λ`` the gradient is ``P(u) π(v|u) (Q(uv) - Σ_w π(w|u) Q(uw))``, so the scaled update is
    the advantage itself (natural policy gradient). Exact zeros stay exact zeros.
    """

    def update(updates, state, params):
        probs = tree.prefix_probs(params)
        return tuple(g / probs[l + 1].reshape(g.shape) for l, g in enumerate(updates)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def freeze_rows(frozen) -> optax.GradientTransformation:
    """Zero the update of every frozen row: ``frozen`` holds one ``(V**l,)`` bool mask per level.

    With the rows of ``u``'s ancestors frozen, ``P_π(u)`` stays exactly constant (THEORY.md T14).
    """

    def update(updates, state, params=None):
        return tuple(jnp.where(f[:, None], 0.0, g) for f, g in zip(frozen, updates)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _loss(objective: str, tables, args):
    if objective == "kl":
        base, harm, lam = args
        return objectives.kl_regularized_loss(tables, base, harm, lam)
    if objective == "recovery":
        base, harm, dists, mu, lam = args
        return objectives.recovery_prefill_loss(tables, harm, dists, mu) + lam * jnp.sum(
            tree.per_position_kl(tables, base)
        )
    if objective == "dpo":
        ref, harm, beta = args
        return objectives.dpo_loss(tables, ref, harm, beta)
    raise ValueError(objective)  # pragma: no cover


def _max_change_at_determined(tables, base, masks):
    """``max |log π(v|u) - log π0(v|u)|`` over determined prefixes ``u`` (0 if there are none)."""
    out = jnp.zeros(())
    for z, z0, m in zip(tables, base, masks):
        diff = jnp.abs(jax.nn.log_softmax(z, axis=-1) - jax.nn.log_softmax(z0, axis=-1))
        out = jnp.maximum(out, jnp.max(jnp.where(m[:, None], diff, 0.0)))
    return out


@jit(static_argnames=("objective", "steps", "optimizer"))
def train_tables(
    start,
    base,
    masks,
    args,
    *,
    objective: str,
    steps: int,
    optimizer: str,
    learning_rate,
    target=None,
    frozen=None,
):
    """Train tabular logits on an exact objective, recording per-step metrics.

    Args:
      start: initial level tables (usually ``π0``).
      base: ``π0`` (or ``π_ref``), the reference for the recorded changes and KL.
      masks: determined-prefix masks for levels ``0 ... T-1``.
      args: the objective's other arguments (see :func:`_loss`).
      objective: ``"kl"``, ``"recovery"`` or ``"dpo"`` (static).
      steps: optimizer steps (static).
      optimizer: ``"natural"`` (:func:`scale_by_inverse_prefix_mass` then SGD) or ``"sgd"`` (static).
      learning_rate: the step size.
      target: optional tables of a target policy; the per-step gap ``KL(π_k‖target)`` is recorded.
      frozen: optional ``(V**l,)`` bool masks, one per level: rows that never move
        (:func:`freeze_rows`).

    Returns:
      ``(final tables, metrics)``; metrics hold ``(steps + 1,)`` arrays (step 0 = start):
      ``determined_change``, ``kl_t`` ``(steps + 1, T)``, ``loss`` and ``gap``.
    """
    start, base = tuple(start), tuple(base)
    loss = functools.partial(lambda a, z: _loss(objective, z, a), args)
    opt = optax.sgd(learning_rate)
    if optimizer == "natural":
        opt = optax.chain(scale_by_inverse_prefix_mass(), opt)
    if frozen is not None:
        opt = optax.chain(opt, freeze_rows(tuple(frozen)))

    def metrics(z):
        gap = jnp.sum(tree.per_position_kl(z, target)) if target is not None else jnp.zeros(())
        return {
            "determined_change": _max_change_at_determined(z, base, masks),
            "kl_t": tree.per_position_kl(z, base),
            "loss": loss(z),
            "gap": gap,
        }

    def step(carry, _):
        z, state = carry
        updates, state = opt.update(jax.grad(loss)(z), state, z)
        z = optax.apply_updates(z, updates)
        return (z, state), metrics(z)

    (final, _), history = jax.lax.scan(step, (start, opt.init(start)), None, length=steps)
    first = metrics(start)
    history = jax.tree_util.tree_map(lambda a, h: jnp.concatenate([a[None], h]), first, history)
    return final, history


@jit(static_argnames=("policy", "steps"))
def train_native(policy, params, harm, lam, masks, *, steps: int, learning_rate: float):
    """Adam on ``L_λ`` through a policy's own (shared) parameters, from ``π0 = π_θ0``.

    Returns:
      per-step ``(steps + 1,)`` ``determined_change`` and ``(steps + 1, T)`` ``kl_t``.
    """
    base = jax.lax.stop_gradient(policy.level_tables(params))
    loss = lambda p: objectives.kl_regularized_loss(policy.level_tables(p), base, harm, lam)
    opt = optax.adam(learning_rate)

    def metrics(p):
        z = policy.level_tables(p)
        return {
            "determined_change": _max_change_at_determined(z, base, masks),
            "kl_t": tree.per_position_kl(z, base),
        }

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), metrics(p)

    _, history = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return jax.tree_util.tree_map(
        lambda a, h: jnp.concatenate([a[None], h]), metrics(params), history
    )


def frozen_tolerance(inst, steps: int):
    """Rounding bound for determined conditionals over ``steps`` optimizer steps.

    At a determined prefix the exact gradient is 0; the computed one is a rounding residual
    ``<= eps (ops + V**T) x 2`` per step (the loss terms sum to at most 2), and an optimizer step
    moves a logit by at most a bounded multiple of it, so over ``steps`` steps the change of
    ``log π`` stays within ``steps`` times the per-step bound.
    """
    return rounding_tolerance(
        np.float64,
        terms=inst.num_responses * steps,
        ops=ops(inst) * steps,
        magnitude=2.0 + inst.lam * inst.length,
        what=f"{steps} steps x (E[h] + λ Σ_t KL_t terms)",
    )


def shared_weight_spill_over(inst) -> dict:
    """Measured spill-over beyond the horizon when training the policy's own shared weights."""
    masks = tuple(jnp.asarray(m) for m in inst.determined[:-1])
    hist = train_native(
        inst.policy,
        inst.params,
        inst.harm,
        inst.lam,
        masks,
        steps=NATIVE_STEPS,
        learning_rate=NATIVE_LR,
    )
    kl = np.asarray(hist["kl_t"])
    tau = inst.horizon
    return {
        "optimizer": f"adam(lr={NATIVE_LR}), {NATIVE_STEPS} steps on the policy's parameters",
        "max_kl_beyond_horizon": (
            float(np.max(kl[:, tau:].sum(axis=1))) if tau < inst.length else None
        ),
        "max_kl_within_horizon": float(np.max(kl[:, :tau].sum(axis=1), initial=0.0)),
        "max_determined_change": float(np.max(np.asarray(hist["determined_change"]))),
    }


#: Largest step size of T8's plain gradient descent (the statement's optimizer).
SGD_LR = 1.0


@register(
    "T8",
    "gradient descent on L_λ (optax SGD, tabular, from π0) never moves determined "
    "conditionals; the natural-gradient variant converges to π*_λ",
    plants=["harm-below-determined", "lambda-scale", "not-at-base"],
)
def training_stays_shallow(inst, plant):
    harm = controls.planted_harm(inst, plant)
    base = tuple(jnp.asarray(z) for z in inst.tables)
    masks = tuple(jnp.asarray(m) for m in inst.determined[:-1])
    start = base
    if plant == "not-at-base":
        start = tuple(
            jnp.asarray(z)
            for z in controls.perturbed_tables(
                inst.tables, inst.determined, inst.seed + 7, everywhere=True
            )
        )
    lam = 2 * inst.lam if plant == "lambda-scale" else inst.lam
    target = tree.equilibrium_policy(base, jnp.asarray(inst.harm), inst.lam)
    args = (base, jnp.asarray(harm), lam)
    # min(1, 1/λ): the KL term's curvature is at most λ per logit, so the step stays stable.
    _, plain = train_tables(
        start,
        base,
        masks,
        args,
        objective="kl",
        steps=STEPS,
        optimizer="sgd",
        learning_rate=min(SGD_LR, 1.0 / lam),
    )
    _, hist = train_tables(
        start,
        base,
        masks,
        args,
        objective="kl",
        steps=STEPS,
        optimizer="natural",
        learning_rate=1.0 / lam,
        target=target,
    )
    plain = {k: np.asarray(v) for k, v in plain.items()}
    hist = {k: np.asarray(v) for k, v in hist.items()}
    tau = inst.horizon
    tol = frozen_tolerance(inst, STEPS)
    parts = [
        compare(
            "determined conditionals unchanged at every step (plain GD)",
            plain["determined_change"],
            0.0,
            tol,
            scale=1.0,
            lhs_name="max |log π_k(v|u) - log π0(v|u)| over determined u, per step k of "
            "plain gradient descent (step min(1, 1/λ))",
            rhs_name="0",
        ),
        compare(
            "KL_t(π_k‖π0) = 0 for t > τ*, every step (plain GD)",
            plain["kl_t"][:, tau:],
            0.0,
            tol,
            scale=float(np.max(plain["kl_t"])),
            lhs_name="tree.per_position_kl(π_k, π0), t > τ* (n/a when τ* = T)",
            rhs_name="0",
        ),
        compare(
            "determined conditionals unchanged at every step (natural gradient)",
            hist["determined_change"],
            0.0,
            tol,
            scale=1.0,
            lhs_name="the same for natural-gradient steps",
            rhs_name="0",
        ),
    ]
    conv = eps_tolerance(
        np.float64,
        CONVERGENCE_FACTOR,
        f"room for the rounding floor of L_λ: L_λ(π) - L_λ(π*) = λ KL(π‖π*), and "
        f"natural gradient with step 1/λ is soft policy iteration, exact after "
        f"T <= {STEPS} steps",
    )
    parts.append(
        compare(
            "natural gradient converges to π*_λ: KL(π_S‖π*_λ) -> 0",
            hist["gap"][-1],
            0.0,
            conv,
            scale=float(hist["gap"][0]),
            lhs_name=f"Σ_t KL_t(π_S‖π*_λ) after {STEPS} natural-gradient steps",
            rhs_name="0 (π*_λ from tree.equilibrium_policy)",
            independent=False,
        )
    )
    measurements = {
        "gap_per_step": hist["gap"].tolist(),
        "determined_change_max": float(np.max(plain["determined_change"])),
    }
    if inst.kind not in ("tabular",) and plant is None:
        measurements["shared_weight_spill_over"] = shared_weight_spill_over(inst)
    return parts, measurements
