"""T14: shallow by dynamics - gradient descent reaches the subtree below ``u`` with step ``η P_π(u)``.

With tabular logits, ``∂L_λ/∂z(w) = P_π(u) ∂L_λ^u/∂z(w)`` for every prefix ``w`` in the subtree
below ``u``, where ``L_λ^u(π_u) = E_{π_u}[h(u·)] + λ KL(π_u‖π0_u)`` is the subtree's own objective
over the continuations of ``u``. So, with the logits of ``u``'s ancestors frozen (``P_π(u)`` then
stays exactly constant):

* **T14** ``n`` steps of plain gradient descent with step ``η`` on the whole tree move the subtree
  exactly as ``n`` steps with step ``η P_π(u)`` on the subtree alone;
* **T14-natural** with the Fisher-diagonal preconditioner (divide by ``P(w) π(v|w)``; natural
  gradient) the whole-tree step ``η`` equals the subtree-alone step ``η``: no ``P_π(u)`` factor.

The whole-tree side is :func:`proofs_check.training.train_tables` (``toy_lm.engines.objectives`` and the
tree engine, ancestors frozen by :func:`proofs_check.training.freeze_rows`). The subtree side
shares none of that path: :func:`train_subtree` re-slices the tables to the subtree, writes
``L_λ^u`` as a direct sum over its ``V**(T-l)`` continuations, and runs its own loop; its natural
gradient divides by prefix masses summed directly from the continuation probabilities.

Prefixes checked: at each level ``l = 1 ... T-1``, the undetermined prefix of smallest ``P_π(u)``
(an undetermined ``u`` has a subtree prefix with unequal children, so the subtree really moves;
a part checks that it did). For a shared-weight policy the identity does not hold; the check
*measures* how far plain gradient descent on the policy's own parameters is from the tabular
prediction (step ``η P_π(u)`` on the subtree alone), as T8 measures spill-over.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from proofs_check.autodiff import jit
from proofs_check.common import ops
from proofs_check.enumeration import log_softmax
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance, stated_tolerance
from proofs_check.training import train_tables
from toy_lm.engines import objectives

__all__ = [
    "GD_LR",
    "NATURAL_LR_TIMES_LAMBDA",
    "NONZERO_FACTOR",
    "STEPS",
    "ancestors",
    "checked_prefixes",
    "continuation_log_probs",
    "deep_undetermined",
    "gradient_descent_scaled_by_prefix_mass",
    "natural_gradient_without_prefix_mass",
    "shared_weight_gap",
    "subtree",
    "subtree_loss",
    "train_shared_gd",
    "train_subtree",
]

#: Steps of every run; plain gradient descent's step ``η``; natural gradient's step is ``η_nat / λ``.
STEPS, GD_LR, NATURAL_LR_TIMES_LAMBDA = 16, 1.0, 0.5

#: "The subtree moved" means by more than this multiple of the rounding tolerance.
NONZERO_FACTOR = 1e3


def deep_undetermined(inst) -> bool:
    """Some prefix at a level ``1 ... T-1`` is undetermined (``τ* >= 2``): T14 is not vacuous."""
    return any(not bool(np.all(m)) for m in inst.determined[1:-1])


def checked_prefixes(inst) -> list[tuple[int, int]]:
    """``(level, row)`` per level ``1 ... T-1``: its undetermined prefix of smallest ``P_π(u)``."""
    marg = [inst.probs.reshape(inst.vocab_size**l, -1).sum(axis=1) for l in range(inst.length)]
    out = []
    for level in range(1, inst.length):
        rows = np.flatnonzero(~inst.determined[level])
        if rows.size:
            out.append((level, int(rows[np.argmin(marg[level][rows])])))
    return out


def subtree(tables, level: int, row: int) -> list:
    """The rows of the subtree below the level-``l`` prefix ``row``: ``(V**d, V)`` for ``d = 0 ... T-l-1``."""
    vocab = tables[0].shape[-1]
    return [
        tables[level + d][row * vocab**d : (row + 1) * vocab**d] for d in range(len(tables) - level)
    ]


def ancestors(inst, level: int, row: int) -> tuple:
    """Row masks (one per level ``0 ... T-1``) of ``u``'s ancestors: the rows frozen by T14."""
    vocab = inst.vocab_size
    return tuple(
        jnp.asarray(np.arange(vocab**l) == (row // vocab ** (level - l) if l < level else -1))
        for l in range(inst.length)
    )


def continuation_log_probs(sub) -> jax.Array:
    """``log π_u(y')`` of every continuation ``y'`` of ``u`` (``V**m``), summed position by position."""
    vocab, depth = sub[0].shape[-1], len(sub)
    index = jnp.arange(vocab**depth)
    total = jnp.zeros(vocab**depth)
    for d, z in enumerate(sub):
        logp = z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)
        total = (
            total + logp[index // vocab ** (depth - d), (index // vocab ** (depth - d - 1)) % vocab]
        )
    return total


def subtree_loss(sub, sub_base, sub_harm, lam) -> jax.Array:
    """``L_λ^u = Σ_{y'} π_u(y') h(uy') + λ Σ_{y'} π_u(y') log(π_u(y')/π0_u(y'))`` by direct sums."""
    logp = continuation_log_probs(sub)
    probs = jnp.exp(logp)
    return jnp.sum(probs * sub_harm) + lam * jnp.sum(
        probs * (logp - continuation_log_probs(sub_base))
    )


def _fisher_diagonal(sub) -> list:
    """``P_u(w) π(v|w) = P_u(wv)``: direct sums of continuation probabilities, ``(V**d, V)`` each."""
    vocab, depth = sub[0].shape[-1], len(sub)
    probs = jnp.exp(continuation_log_probs(sub))
    return [
        probs.reshape(vocab ** (d + 1), -1).sum(axis=1).reshape(-1, vocab) for d in range(depth)
    ]


@jit(static_argnames=("steps", "natural"))
def train_subtree(sub, sub_base, sub_harm, lam, learning_rate, *, steps: int, natural: bool):
    """``steps`` steps ``z <- z - η ∇L_λ^u`` (divided by :func:`_fisher_diagonal` when ``natural``)."""
    grad = jax.grad(subtree_loss)

    def step(_, z):
        g = grad(z, sub_base, sub_harm, lam)
        if natural:
            g = [a / m for a, m in zip(g, _fisher_diagonal(z))]
        return [a - learning_rate * b for a, b in zip(z, g)]

    return jax.lax.fori_loop(0, steps, step, list(sub))


@jit(static_argnames=("policy", "steps"))
def train_shared_gd(policy, params, harm, lam, learning_rate, *, steps: int):
    """Plain gradient descent on ``L_λ`` through a policy's own parameters; the final level tables."""
    base = jax.lax.stop_gradient(policy.level_tables(params))
    grad = jax.grad(
        lambda p: objectives.kl_regularized_loss(policy.level_tables(p), base, harm, lam)
    )
    final = jax.lax.fori_loop(
        0,
        steps,
        lambda _, p: jax.tree_util.tree_map(lambda a, g: a - learning_rate * g, p, grad(p)),
        params,
    )
    return policy.level_tables(final)


def shared_weight_gap(inst, prefixes) -> dict:
    """Measured (not asserted): plain GD on shared weights against the tabular T14 prediction.

    Per checked prefix: the largest change of ``log π(.|w)`` over the subtree after :data:`STEPS`
    steps through the policy's parameters (nothing frozen; shared weights cannot freeze
    ancestors) and under the prediction (step ``η P_π0(u)`` on the subtree alone), their ratio,
    and the largest difference relative to the predicted change.
    """
    final = [
        np.asarray(t)
        for t in train_shared_gd(
            inst.policy, inst.params, jnp.asarray(inst.harm), inst.lam, GD_LR, steps=STEPS
        )
    ]
    out = []
    for level, row, mass in prefixes:
        start = subtree(inst.tables, level, row)
        alone = train_subtree(
            [jnp.asarray(z) for z in start],
            [jnp.asarray(z) for z in start],
            jnp.asarray(_subtree_harm(inst.harm, inst, level, row)),
            inst.lam,
            GD_LR * mass,
            steps=STEPS,
            natural=False,
        )
        moved = [log_softmax(a) - log_softmax(z) for a, z in zip(subtree(final, level, row), start)]
        predicted = [log_softmax(np.asarray(a)) - log_softmax(z) for a, z in zip(alone, start)]
        size = lambda ds: max(float(np.max(np.abs(d))) for d in ds)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(moved, predicted))
        out.append(
            {
                "level": level,
                "P_u": mass,
                "shared_change": size(moved),
                "predicted_change": size(predicted),
                "change_ratio": size(moved) / max(size(predicted), np.finfo(float).tiny),
                "relative_error": diff / max(size(predicted), np.finfo(float).tiny),
            }
        )
    return {
        "optimizer": f"plain GD (step {GD_LR}), {STEPS} steps on the policy's parameters",
        "prefixes": out,
    }


def _subtree_harm(harm, inst, level: int, row: int) -> np.ndarray:
    block = inst.vocab_size ** (inst.length - level)
    return np.asarray(harm)[row * block : (row + 1) * block]


def _identity(inst, plant, *, natural: bool):
    """Both sides of T14 (or T14-natural) at every checked prefix, with the measurements."""
    harm = jnp.asarray(inst.harm)
    base = tuple(jnp.asarray(z) for z in inst.tables)
    masks = tuple(jnp.asarray(m) for m in inst.determined[:-1])
    lam = inst.lam
    # Plain GD at min(1, 1/λ): the KL term's curvature is up to λ per logit, and past the
    # stability limit the identity still holds exactly but rounding grows ~λ-fold per step.
    lr = NATURAL_LR_TIMES_LAMBDA / lam if natural else min(GD_LR, 1.0 / lam)
    prefixes = [
        (level, row, float(inst.probs.reshape(inst.vocab_size**level, -1)[row].sum()))
        for level, row in checked_prefixes(inst)
    ]
    lhs, rhs, start = [], [], []
    for level, row, mass in prefixes:
        frozen = None if plant == "ancestors-not-frozen" else ancestors(inst, level, row)
        final, _ = train_tables(
            base,
            base,
            masks,
            (base, harm, lam),
            objective="kl",
            steps=STEPS,
            optimizer="natural" if natural else "sgd",
            learning_rate=lr,
            frozen=frozen,
        )
        scaled = (not natural and plant != "prefix-mass-dropped") or plant == "prefix-mass-added"
        sub = [jnp.asarray(z) for z in subtree(inst.tables, level, row)]
        alone = train_subtree(
            sub,
            sub,
            jnp.asarray(_subtree_harm(inst.harm, inst, level, row)),
            2 * lam if plant == "lambda-scale" else lam,
            lr * mass if scaled else lr,
            steps=STEPS,
            natural=natural,
        )
        lhs += [np.asarray(z).reshape(-1) for z in subtree(final, level, row)]
        rhs += [np.asarray(z).reshape(-1) for z in alone]
        start += [np.asarray(z).reshape(-1) for z in sub]
    lhs, rhs, start = (np.concatenate(x) for x in (lhs, rhs, start))
    moved = float(np.max(np.abs(lhs - start)))
    bound = 1.0 + lam * inst.length * (1.0 + 2.0 * moved)
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * STEPS,
        ops=ops(inst) * STEPS,
        magnitude=float(np.max(np.abs(start))) + STEPS * lr * bound,
        what=f"max|z_0| + {STEPS} steps x η x (1 + λ T (1 + 2 max|Δz|)), a bound on each step's "
        f"logit gradient (natural: advantage) since |Δ log π| <= 2 max|Δz|",
    )
    which = "natural-gradient" if natural else "plain GD"
    factor = "η" if natural else "η P_π(u)"
    parts = [
        compare(
            f"subtree after {STEPS} {which} steps: whole tree (step η, ancestors frozen) "
            f"= subtree alone (step {factor})",
            lhs,
            rhs,
            tol,
            lhs_name="train_tables on L_λ (toy_lm.engines.objectives), ancestors of u frozen, "
            "subtree rows read off",
            rhs_name=f"train_subtree: direct-sum L_λ^u on the sliced tables, step {factor}",
        ),
        compare(
            "the subtree moved (the comparison is not vacuous)",
            moved,
            NONZERO_FACTOR * tol.value,
            stated_tolerance(
                0.0,
                f"0: the claim is max|z_n - z_0| >= 1e3 x rounding "
                f"tolerance = {NONZERO_FACTOR * tol.value:.3g}",
            ),
            bound="lower",
            lhs_name="max |z_n - z_0| over the checked subtrees",
            rhs_name="floor (1e3 x rounding tolerance)",
        ),
    ]
    measurements = {
        "prefixes": [{"level": l, "row": r, "P_u": m} for l, r, m in prefixes],
        "steps": STEPS,
        "learning_rate": lr,
    }
    return parts, measurements, prefixes


@register(
    "T14",
    "with ancestors frozen, n plain GD steps (step η) on the whole tree move the "
    "subtree below u as n steps with step η P_π(u) on the subtree alone",
    plants=["prefix-mass-dropped", "ancestors-not-frozen", "lambda-scale"],
    applies=deep_undetermined,
)
def gradient_descent_scaled_by_prefix_mass(inst, plant):
    parts, measurements, prefixes = _identity(inst, plant, natural=False)
    if inst.kind != "tabular" and plant is None:
        measurements["shared_weight_gap"] = shared_weight_gap(inst, prefixes)
    return parts, measurements


@register(
    "T14-natural",
    "with ancestors frozen, n natural-gradient steps (step η) on the whole "
    "tree move the subtree below u as n steps with step η on it alone",
    plants=["prefix-mass-added", "lambda-scale"],
    applies=deep_undetermined,
)
def natural_gradient_without_prefix_mass(inst, plant):
    parts, measurements, _ = _identity(inst, plant, natural=True)
    return parts, measurements
