"""Planted errors (negative controls): the mistakes every check must catch.

A check that cannot fail proves nothing. Each registered check names one or more planted errors
from :data:`PLANTS`; running the check with ``plant=<name>`` substitutes the wrong ingredient into
one side of the same comparison (a shifted ``H``, a dropped stop-gradient, a harm that changes
beyond the claimed horizon, ...). ``harm-horizon check --negative-controls`` runs every check with
each of its planted errors on every instance the error applies to, and fails unless the check
flags all of them.

This module holds the catalogue and the corruptions that several checks share; check-specific
corruptions live next to the check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from proofs_check import enumeration

__all__ = [
    "PLANTS",
    "Plant",
    "changed_below_determined",
    "claimed_determined",
    "claimed_horizon",
    "has_determined_prefix",
    "increments_of",
    "informative",
    "perturbed_tables",
    "planted_harm",
    "prompt_horizons",
    "shifted_levels",
    "wrong_level_baseline",
]


@dataclasses.dataclass(frozen=True)
class Plant:
    """A planted error: a name, what it does, and when it applies to an instance."""

    name: str
    description: str
    applies: Callable = lambda inst: True


def _below_determined_applies(inst) -> bool:
    return (
        changed_below_determined(inst.harm, inst.vocab_size, inst.length, inst.determined)
        is not None
    )


def _prompts(inst):
    return getattr(inst, "prompts", None)


def prompt_horizons(inst) -> list[int]:
    """``τ*(h_x)`` of every prompt's harm, by direct comparison of harm values."""
    return [
        enumeration.direct_horizon(h, inst.vocab_size, inst.length) for h in _prompts(inst).harms
    ]


def informative(inst) -> bool:
    """The harm is not constant (``τ* >= 1``): otherwise most errors change nothing."""
    return inst.horizon >= 1


def has_determined_prefix(inst) -> bool:
    """Some prefix shorter than ``T`` is determined (claims about them are not vacuous)."""
    return any(bool(np.any(m)) for m in inst.determined[:-1])


#: Every planted error, by name.
PLANTS: dict[str, Plant] = {
    p.name: p
    for p in (
        Plant(
            "shifted-H",
            "H_t shifted by one position: H_l(u) read as H_{l+1}(u0)",
            lambda inst: inst.length >= 2 and informative(inst),
        ),
        Plant(
            "wrong-baseline-level",
            "baseline from the wrong level: H_{t-2} where H_{t-1} belongs",
            lambda inst: inst.length >= 2 and informative(inst),
        ),
        Plant(
            "no-stop-gradient",
            "stop-gradient dropped: every factor of P(y) differentiated",
            lambda inst: inst.length >= 2 and informative(inst),
        ),
        Plant(
            "wrong-position-score",
            "the score of the wrong position: s_{t+1} (cyclically) for s_t",
            lambda inst: inst.length >= 2 and informative(inst),
        ),
        Plant(
            "previous-position-score",
            "the score of the previous position s_{t-1} for s_t",
            lambda inst: inst.length >= 2,
        ),
        Plant("off-policy-weights", "conditional mean taken under the uniform policy instead of π"),
        Plant(
            "uniform-H",
            "H_t computed with uniform instead of π weights in the backward recursion",
            informative,
        ),
        Plant(
            "mu-zero",
            "every recovery weight μ_k = 0 (the recovery objective reduces to E[h])",
            informative,
        ),
        Plant("mi-in-bits", "I_t^MI in bits instead of nats (divided by log 2)", informative),
        Plant(
            "masks-from-first-child",
            "determined masks from the first child's subtree only",
            lambda inst: inst.horizon >= 1,
        ),
        Plant(
            "harm-below-determined",
            "the harm changes below a prefix claimed determined (beyond the claimed horizon)",
            _below_determined_applies,
        ),
        Plant(
            "horizon-off-by-one",
            "the claimed horizon is one less than the true τ*",
            lambda inst: inst.horizon >= 1,
        ),
        Plant("lambda-sign", "λ with the wrong sign (π0 tilted by exp(+h/λ))", informative),
        Plant("lambda-scale", "λ off by a factor of 2 on one side", informative),
        Plant(
            "wrong-position-information",
            "I_{t+1} used where I_t belongs (I_{T+1} = 0)",
            lambda inst: inst.horizon >= 1,
        ),
        Plant(
            "not-at-base",
            "the policy differs from π0 also at determined prefixes",
            has_determined_prefix,
        ),
        Plant(
            "wrong-reference",
            "DPO reference policy differs from the initial policy",
            lambda inst: informative(inst) and has_determined_prefix(inst),
        ),
        Plant("mu-sign", "recovery weights μ with the wrong sign"),
        Plant("mu-dropped", "the recovery term left out of the closed form (μ = 0 on one side)"),
        Plant("costs-dropped", "the dense cost left out of the equilibrium (μ = 0)"),
        Plant(
            "prefix-mass-dropped",
            "the subtree trained alone with step η instead of η P_π(u)",
            lambda inst: inst.horizon >= 2,
        ),
        Plant(
            "prefix-mass-added",
            "natural gradient on the subtree alone with step η P_π(u), not η",
            lambda inst: inst.horizon >= 2,
        ),
        Plant(
            "ancestors-not-frozen",
            "the logits above u trained too, so P_π(u) drifts",
            lambda inst: inst.horizon >= 2,
        ),
        Plant(
            "prompt-weights-ignored",
            "the prompts averaged uniformly instead of with p(x)",
            lambda inst: _prompts(inst) is not None and np.ptp(_prompts(inst).weights) > 0,
        ),
        Plant(
            "horizon-min-over-prompts",
            "the horizon of a mixture taken as the minimum over prompts",
            lambda inst: _prompts(inst) is not None and len(set(prompt_horizons(inst))) > 1,
        ),
    )
}


def shifted_levels(values) -> list[np.ndarray]:
    """``H'_l(u) = H_{l+1}(u0)`` for ``l < T`` and ``H'_T = H_T``: an off-by-one read of ``H``."""
    values = [np.asarray(v) for v in values]
    vocab = values[1].shape[0] // values[0].shape[0]
    shifted = [values[l + 1].reshape(-1, vocab)[:, 0] for l in range(len(values) - 1)]
    return shifted + [values[-1]]


def increments_of(values, vocab_size: int) -> list[np.ndarray]:
    """``Δ_t(y_<=t) = H_t(y_<=t) - H_{t-1}(y_<t)`` from per-level values ``H_0 ... H_T``."""
    return [
        np.asarray(values[t]) - np.repeat(np.asarray(values[t - 1]), vocab_size)
        for t in range(1, len(values))
    ]


def wrong_level_baseline(values, vocab_size: int) -> list[np.ndarray]:
    """Per level ``l = 0 ... T-1``, the baseline ``H_{l-1}`` of the parent (``H_0`` at ``l = 0``).

    The correct baseline for the children of a level-``l`` prefix ``u`` is ``H_l(u)``; this
    returns the grandparent's value instead, repeated to the level-``l`` prefixes.
    """
    values = [np.asarray(v) for v in values]
    out = [values[0]]
    for level in range(1, len(values) - 1):
        out.append(np.repeat(values[level - 1], vocab_size))
    return out


def changed_below_determined(harm, vocab_size: int, length: int, determined, probs=None):
    """The harm with one response changed below a determined prefix, or ``None`` if none exists.

    Picks the deepest level ``l < T`` that has a determined prefix, the most probable such prefix
    under ``P(y)`` ``probs`` (the first one without), and changes the last response of its block
    (binary: ``1 - h``; soft: ``h ± 0.5``), so that prefix is no longer determined although the
    check still claims it is. (The most probable one: a change below a prefix of probability
    1e-13 moves every expectation by less than rounding and could not be seen.)
    """
    harm = np.array(harm, np.float64)
    for level in range(length - 1, -1, -1):
        rows = np.flatnonzero(determined[level])
        if rows.size:
            block = vocab_size ** (length - level)
            row = rows[0]
            if probs is not None:
                mass = np.asarray(probs, np.float64).reshape(-1, block).sum(axis=1)
                row = rows[np.argmax(mass[rows])]
            target = (row + 1) * block - 1
            value = harm[target]
            harm[target] = 1.0 - value if value in (0.0, 1.0) else (value + 0.5) % 1.0
            return harm
    return None


def planted_harm(inst, plant: str | None) -> np.ndarray:
    """The harm a check should compute with: the instance's, or the changed one under the plant."""
    if plant == "harm-below-determined":
        return changed_below_determined(
            inst.harm, inst.vocab_size, inst.length, inst.determined, inst.probs
        )
    return inst.harm


def claimed_determined(inst, plant: str | None) -> list[np.ndarray]:
    """Determined masks a check claims: the true ones, or with the horizon one too early."""
    masks = [m.copy() for m in inst.determined]
    if plant == "horizon-off-by-one":
        masks[inst.horizon - 1][:] = True
    return masks


def claimed_horizon(inst, plant: str | None) -> int:
    """``τ*`` a check claims (one less under ``horizon-off-by-one``)."""
    return inst.horizon - 1 if plant == "horizon-off-by-one" else inst.horizon


def perturbed_tables(tables, masks, key_seed: int, *, everywhere: bool = False, scale: float = 0.5):
    """Logit tables moved by ``N(0, scale²)`` noise at undetermined prefixes (or everywhere).

    At determined prefixes the rows are copied bit for bit, so there ``π = π0`` exactly.
    """
    rng = np.random.default_rng(key_seed)
    out = []
    for level, table in enumerate(tables):
        table = np.asarray(table)
        noise = scale * rng.standard_normal(table.shape)
        move = np.ones(table.shape[0], bool) if everywhere else ~np.asarray(masks[level])
        out.append(np.where(move[:, None], table + noise, table))
    return out
