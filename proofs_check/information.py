"""T13: the mutual-information form of the harm information, checked from the joint enumeration.

For binary harm, ``I_t^MI = I(h(Y); Y_t | Y_<t) = E[KL(Bern(H_t) ‖ Bern(H_{t-1}))]`` (in nats). The
check's side is the mutual information computed from the joint law of ``(h, Y_<t, Y_t)`` summed
directly over whole responses, ``Σ_{b,u,v} p(b,u,v) log(p(b,u,v) p(u) / (p(b,u) p(u,v)))``, not
from ``H`` (the form ``E[h_b(H_{t-1}) - h_b(H_t)]`` telescopes and would pass for any ``H``).
Claims: the engine's ``I_t^MI`` equals it; ``2 I_t <= I_t^MI <= E[Δ_t² / (H_{t-1}(1 - H_{t-1}))]``
(Pinsker and χ²); ``I_t^MI = 0`` exactly where ``I_t = 0``; ``Σ_t I_t^MI = H(h(Y))``, the entropy of
the harm bit (chain rule).
"""

from __future__ import annotations

import numpy as np

from proofs_check import enumeration
from proofs_check.common import ops, outputs
from proofs_check.horizon import direct_information
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance, stated_tolerance

__all__ = [
    "chi_square_bound",
    "direct_mutual_information",
    "harm_entropy",
    "mutual_information_form",
]


def _xlogy_ratio(p, num, den) -> np.ndarray:
    """``p log(num/den)`` with ``0 log(.) = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(num) - np.log(den)), 0.0)


def direct_mutual_information(inst) -> np.ndarray:
    """``I(h; Y_t | Y_<t)`` for ``t = 1 ... T`` from the joint enumeration of ``(h, Y_<=t)``."""
    vocab, length = inst.vocab_size, inst.length
    out = []
    for t in range(1, length + 1):
        total = 0.0
        for bit in (0.0, 1.0):
            joint = enumeration.block_sums(inst.probs * (inst.harm == bit), vocab, t)  # p(b,u,v)
            marg_b = joint.reshape(-1, vocab).sum(axis=1)  # p(b,u)
            p_uv = enumeration.block_sums(inst.probs, vocab, t)  # p(u,v)
            p_u = np.repeat(p_uv.reshape(-1, vocab).sum(axis=1), vocab)  # p(u)
            total += float(
                np.sum(_xlogy_ratio(joint, joint * p_u, np.repeat(marg_b, vocab) * p_uv))
            )
        out.append(total)
    return np.array(out)


def harm_entropy(inst) -> float:
    """``H(h(Y))`` in nats for binary harm."""
    p = float(np.sum(inst.probs * inst.harm))
    return float(-sum(x * np.log(x) for x in (p, 1 - p) if x > 0))


def chi_square_bound(inst) -> np.ndarray:
    """``E[Δ_t² / (H_{t-1}(1 - H_{t-1}))]`` by direct sums (0 where ``H_{t-1} ∈ {0, 1}``)."""
    values, vocab = inst.direct_cond_harm, inst.vocab_size
    marg = enumeration.prefix_marginals(inst.probs, vocab, inst.length)
    out = []
    for t in range(1, inst.length + 1):
        parent = np.repeat(values[t - 1], vocab)
        delta = values[t] - parent
        spread = parent * (1 - parent)
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(float(np.sum(np.where(spread > 0, marg[t] * delta**2 / spread, 0.0))))
    return np.array(out)


@register(
    "T13",
    "binary harm: I_t^MI = I(h; Y_t | Y_<t) (joint enumeration), 2 I_t <= I_t^MI <= "
    "E[Δ²/(H(1-H))], 0 exactly where I_t = 0, Σ_t I_t^MI = H(h(Y))",
    plants=["mi-in-bits", "wrong-position-information"],
    applies=lambda inst: inst.binary and 0 < float(np.sum(inst.harm)) < inst.harm.size,
    engines=("tree", "analysis", "xla"),
)
def mutual_information_form(inst, plant):
    engine_mi = np.asarray(outputs(inst)["harm_information_mi"], np.float64)
    if plant == "mi-in-bits":
        engine_mi = engine_mi / np.log(2.0)
    elif plant == "wrong-position-information":
        engine_mi = np.append(engine_mi[1:], 0.0)
    direct = direct_mutual_information(inst)
    info = direct_information(inst)
    entropy = harm_entropy(inst)
    # |log p| <= 40 for the suite's probabilities (>= 1e-17); each side sums V**T terms.
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=max(entropy, 1.0) * 40.0,
        what="Σ p |log p| terms, |log p| <= 40",
    )
    exact = stated_tolerance(0.0, "0: where every Δ_t = 0 exactly, every Bernoulli KL is exactly 0")
    zero = info == 0.0
    return [
        compare(
            "I_t^MI engine = I(h; Y_t | Y_<t) joint enumeration",
            engine_mi,
            direct,
            tol,
            lhs_name=f"I_t^MI of the {inst.engine} engine",
            rhs_name="Σ p(b,u,v) log(p(b,u,v) p(u) / (p(b,u) p(u,v))) over whole responses",
        ),
        compare(
            "Pinsker: 2 I_t <= I_t^MI",
            2 * info,
            engine_mi,
            tol,
            bound="upper",
            lhs_name="2 I_t (direct sums)",
            rhs_name=f"I_t^MI ({inst.engine} engine)",
        ),
        compare(
            "χ²: I_t^MI <= E[Δ_t²/(H_{t-1}(1-H_{t-1}))]",
            engine_mi,
            chi_square_bound(inst),
            tol,
            bound="upper",
            lhs_name=f"I_t^MI ({inst.engine} engine)",
            rhs_name="E[Δ_t² / (H_{t-1}(1 - H_{t-1}))] (direct sums)",
        ),
        compare(
            "I_t^MI = 0 exactly where I_t = 0",
            engine_mi[zero],
            0.0,
            exact,
            scale=float(np.max(engine_mi, initial=0.0)),
            lhs_name=f"I_t^MI ({inst.engine} engine) at positions with I_t = 0 (direct; n/a "
            "when there are none)",
            rhs_name="0",
        ),
        compare(
            "chain rule: Σ_t I_t^MI = H(h(Y))",
            float(np.sum(engine_mi)),
            entropy,
            tol,
            lhs_name=f"Σ_t I_t^MI ({inst.engine} engine)",
            rhs_name="-Σ_b P(h=b) log P(h=b) (direct)",
        ),
    ], {"mi": engine_mi.tolist(), "entropy": entropy}
