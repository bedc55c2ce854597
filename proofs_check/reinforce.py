"""T10: the per-position REINFORCE estimator - unbiased, noisy beyond the horizon, and exactly zero
there with the baseline ``H_{t-1}``.

Samples ``Y_1 ... Y_n`` (:data:`NUM_SAMPLES`) are drawn i.i.d. from ``π`` with a fixed seed (the
instance's) by the toolkit's own sampler (``Policy.sample``), and ``s_t(Y_i)`` is read from the
score tensor (autodiff of the teacher-forced log-probabilities), so the estimator
``ĝ_t = (1/n) Σ_i h(Y_i) s_t(Y_i)`` is a genuine Monte Carlo average. Three parts:

* **unbiased** (statistical tier): ``|ĝ_{t,i} - g_{t,i}| <= ε_{t,i}``, the Bernstein deviation bound
  at confidence ``1 - δ/K`` per coordinate (``K`` coordinates, ``δ =`` :data:`FAMILY_RISK`), with
  ``g_t`` the foundation's exact stop-gradient autodiff and ``σ²_{t,i} = Var(h s_{t,i})`` and the
  range ``M_{t,i} = max_y |h(y) s_{t,i}(y) - g_{t,i}|`` computed exactly by enumeration;
* **noise without signal**: beyond the horizon ``Var(h s_t) > 0`` (exact, by enumeration);
* **exact zero with the baseline**: ``(h(Y_i) - H_{t-1}(Y_i,<t)) s_t(Y_i) = 0`` for every sample and
  every ``t`` beyond the sample's own horizon (``Y_i,<t`` determined; this covers every ``t > τ*``),
  with the engine's ``H``, exact at determined prefixes.
"""

from __future__ import annotations

import math

import numpy as np

from proofs_check import controls, enumeration
from proofs_check.common import engine, expect, ops
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance, stated_tolerance
from toy_lm.engines.montecarlo import table_baseline

__all__ = [
    "FAMILY_RISK",
    "NUM_SAMPLES",
    "bernstein_radius",
    "reinforce",
    "sample_responses",
    "sample_rows",
]

#: Monte Carlo sample size.
NUM_SAMPLES = 1 << 14

#: Family-wise false-alarm probability of the unbiasedness part, for a random seed (the seed is
#: fixed, so the outcome is reproducible).
FAMILY_RISK = 1e-3


def bernstein_radius(sigma, bound, num_samples: int, log_term: float):
    """``ε`` with ``P(|X̄ - μ| >= ε) <= 2 exp(-L)``, ``L = log_term``, for ``n`` i.i.d. terms.

    Bernstein's inequality ``P(|X̄ - μ| >= ε) <= 2 exp(-n ε² / (2σ² + 2Mε/3))`` for ``|X - μ| <= M``,
    solved for ``ε``: ``ε = ML/(3n) + sqrt((ML/(3n))² + 2σ²L/n)``. Unlike a normal approximation
    it stays valid for rarely visited prefixes, whose terms are rare large spikes.
    """
    a = bound * log_term / (3 * num_samples)
    return a + np.sqrt(a**2 + 2 * sigma**2 * log_term / num_samples)


def sample_responses(inst, num_samples: int = NUM_SAMPLES) -> np.ndarray:
    """``n`` responses ``(n, T)`` drawn by the toolkit's own sampler (:func:`toy_lm.engines.montecarlo.sample`,
    i.e. ``Policy.sample``), keyed by the instance's seed."""
    import jax

    from toy_lm.engines.montecarlo import sample

    key = jax.random.fold_in(jax.random.key(inst.seed), 10)
    return np.asarray(sample(key, inst.policy, inst.params, num_samples))


def sample_rows(inst, num_samples: int = NUM_SAMPLES) -> np.ndarray:
    """Canonical indices (base-``V`` digits, ``y_1`` first) of :func:`sample_responses`."""
    responses = sample_responses(inst, num_samples)
    return responses @ (inst.vocab_size ** np.arange(inst.length - 1, -1, -1))


@register(
    "T10",
    "REINFORCE h(Y)s_t(Y) is unbiased for g_t; beyond τ* it is pure noise, and with the "
    "baseline H_{t-1} exactly 0 sample by sample",
    plants=["wrong-position-score", "wrong-baseline-level"],
    plant_requires={"wrong-baseline-level": controls.has_determined_prefix},
)
def reinforce(inst, plant):
    q = inst.quantities
    scores, harm, probs = q["scores"], inst.harm, inst.probs
    rows = sample_rows(inst)
    n = rows.size
    freq = np.bincount(rows, minlength=inst.num_responses) / n
    mc_scores = np.roll(scores, -1, axis=1) if plant == "wrong-position-score" else scores
    estimate = expect(freq, harm[:, None, None] * mc_scores)  # (T, D)
    exact = q["g_autodiff"]
    second = expect(probs, (harm**2)[:, None, None] * scores**2)
    sigma = np.sqrt(np.maximum(second - expect(probs, harm[:, None, None] * scores) ** 2, 0.0))
    rounding = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=float(np.max(np.abs(scores))),
        what="max|s_{t,i}|",
    )
    mean = expect(probs, harm[:, None, None] * scores)
    support = probs > 0
    spread = np.max(np.abs(harm[support, None, None] * scores[support] - mean[None]), axis=0)
    coords = estimate.size
    log_term = math.log(2 * coords / FAMILY_RISK)
    radius = bernstein_radius(sigma, spread, n, log_term)
    normalized = np.abs(estimate - exact) / (radius + rounding.value)
    parts = [
        compare(
            "|ĝ - g| <= Bernstein radius per coordinate",
            normalized,
            0.0,
            stated_tolerance(
                1.0,
                f"1 radius: Bernstein's inequality with n = {n} samples, "
                f"exact σ² = Var(h s_t,i) and range M; each of the {coords} "
                f"coordinates at confidence 1 - {FAMILY_RISK:g}/{coords} "
                f"(L = log(2K/δ) = {log_term:.1f}), so a correct estimator "
                f"fails with probability <= {FAMILY_RISK:g}",
            ),
            kind="statistical",
            scale=1.0,
            lhs_name="|ĝ_t,i - g_t,i| / ε_t,i, ĝ from n samples of π (fixed seed), "
            "ε the Bernstein radius",
            rhs_name="0 (g_t by toy_lm.engines.gradients stop-gradient autodiff)",
        )
    ]
    tau = inst.horizon
    measurements = {
        "num_samples": n,
        "max_error_in_radii": float(np.max(normalized)),
        "max_error_in_standard_errors": float(
            np.max(np.abs(estimate - exact) / (sigma / math.sqrt(n) + rounding.value))
        ),
    }
    values = [np.asarray(v) for v in engine(inst)["cond_harm"]]
    if plant == "wrong-baseline-level":
        values = controls.wrong_level_baseline(values, inst.vocab_size)
    responses = sample_responses(inst)
    # b_t(Y_<t) = H_{t-1}(Y_<t) through the toolkit's own exact baseline (toy_lm.engines.montecarlo).
    baseline = np.asarray(table_baseline(values, inst.vocab_size)(responses))  # (n, T)
    # A sample's terms depend on its response only: evaluate them once per distinct sampled
    # response (at most V**T of them) and weight by counts, not once per sample (n x T x D floats).
    sampled, first = np.unique(rows, return_index=True)
    base_sampled = baseline[first]  # (U, T)
    per_sample = [np.zeros(0)]
    for t in range(1, inst.length + 1):
        determined = enumeration.expand(inst.determined[t - 1], inst.vocab_size, inst.length)[
            sampled
        ]
        keep = sampled[determined]
        per_sample.append(
            ((harm[keep] - base_sampled[determined, t - 1])[:, None] * scores[keep, t - 1]).reshape(
                -1
            )
        )
    per_sample = np.concatenate(per_sample)
    # Unbiased with the baseline: mean_i (h(Y_i) - b_t(Y_i,<t)) s_t(Y_i) against g_t, with σ² and the
    # range of (h - H_{t-1}) s_t from direct sums (H by enumeration, not the engine).
    direct_base = np.stack(
        [
            enumeration.expand(inst.direct_cond_harm[t], inst.vocab_size, inst.length)
            for t in range(inst.length)
        ],
        axis=1,
    )  # (N, T)
    centred = (harm[:, None] - direct_base)[:, :, None] * scores  # (N, T, D)
    counts = np.bincount(rows, minlength=inst.num_responses)[sampled] / n
    b_estimate = np.tensordot(
        counts, (harm[sampled, None] - base_sampled)[:, :, None] * scores[sampled], axes=(0, 0)
    )
    b_mean = expect(probs, centred)
    b_sigma = np.sqrt(np.maximum(expect(probs, centred**2) - b_mean**2, 0.0))
    b_spread = np.max(np.abs(centred[support] - b_mean[None]), axis=0)
    b_radius = bernstein_radius(b_sigma, b_spread, n, log_term)
    parts.append(
        compare(
            "|ĝ_b - g| <= Bernstein radius with the baseline H_{t-1}",
            np.abs(b_estimate - exact) / (b_radius + rounding.value),
            0.0,
            stated_tolerance(
                1.0,
                f"1 radius: as above, for (h - H_(t-1)) s_t with exact "
                f"σ² and range; this part's false-alarm probability "
                f"is <= {FAMILY_RISK:g} too",
            ),
            kind="statistical",
            scale=1.0,
            lhs_name="|mean_i (h - b_t) s_t - g_t| / ε, b = toy_lm.engines.montecarlo."
            "table_baseline of the engine's H, samples from Policy.sample",
            rhs_name="0 (g_t by stop-gradient autodiff)",
        )
    )
    parts.append(
        compare(
            "(h - H_{t-1}) s_t = 0 per sample once Y_<t is determined",
            per_sample,
            0.0,
            rounding,
            scale=float(np.max(np.abs(scores))),
            lhs_name="(h(Y_i) - b_t(Y_i,<t)) s_t(Y_i) for every sampled response and t "
            "with Y_i,<t determined, b = toy_lm.engines.montecarlo.table_baseline of the engine's H, "
            "samples from Policy.sample",
            rhs_name="0",
        )
    )
    if tau < inst.length and np.any(harm != 0):  # (h ≡ 0 makes the estimator identically 0)
        variance = sigma[tau:] ** 2
        floor = 1e3 * rounding.value
        parts.append(
            compare(
                "Var(h s_t) > 0 for t > τ* (noise without signal)",
                np.min(np.max(variance.reshape(variance.shape[0], -1), axis=1)),
                floor,
                stated_tolerance(
                    0.0,
                    f"0: the claim is max_i Var(h s_t,i) >= "
                    f"1e3 x rounding = {floor:.3g} at every t > τ*",
                ),
                bound="lower",
                lhs_name="min over t > τ* of max_i Var(h s_{t,i}) (exact)",
                rhs_name="floor",
            )
        )
        measurements["noise_std_beyond_horizon"] = float(np.sqrt(np.max(variance)))
    return parts, measurements
