"""``summary.json`` of ``optimum-vs-dynamics``: the recovery fit, the attack's shares and findings.

See :mod:`experiments.dynamics` for what is measured; this module turns the measurements into
the summary's numbers and one sentence of numbers per question (no verdicts).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.figures import fitted_slope
from experiments.train import package_version

__all__ = ["build_summary", "findings", "recovery_fit", "shares"]


def recovery_fit(prob, recovered, mass, total_mass, budget: int, learning_rate: float) -> dict:
    """Steps to recover against ``P_π0(u)`` and against the mean ``P̄(u) = Σ_n P_{π_n}(u) / N``.

    T14 predicts ``N_u ≈ c_u / (η P̄(u))`` for plain gradient descent, ``c_u`` the subtree's own
    gradient-flow time (log-log slope ``-1`` against ``P̄`` when ``c_u`` does not vary with
    ``P``); ``η Σ_n P_{π_n}(u)`` at recovery is that ``c_u``. For the prefixes not recovered
    within the budget, ``η Σ_n P_{π_n}(u)`` over all steps says whether the budget was simply too
    short in those units (below the recovered prefixes' ``c_u``).
    """
    hit = recovered > 0
    mean_p = np.where(hit, mass / np.maximum(recovered, 1), np.nan)
    c_u = learning_rate * mass[hit]
    return {
        "slope_vs_P0": fitted_slope(prob[hit], recovered[hit]),
        "slope_vs_mean_P": fitted_slope(mean_p[hit], recovered[hit]),
        "recovered": int(hit.sum()),
        "censored": int((~hit).sum()),
        "budget": budget,
        "eta_sum_P_at_recovery": _spread(c_u),
        "eta_sum_P_censored": _spread(learning_rate * total_mass[~hit]),
        "P0_range_recovered": _spread(prob[hit]),
        "points": [
            [float(p), int(r) if r > 0 else None, float(m) if r > 0 else None]
            for p, r, m in zip(prob, recovered, mean_p)
        ],
    }


def _spread(values) -> dict | None:
    values = np.asarray(values)
    return (
        {"median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}
        if values.size
        else None
    )


def shares(parts: dict) -> dict:
    """Share of the prefill attack's success from decided and from undecided forced prefixes."""
    dec, und = np.asarray(parts["decided_part"]), np.asarray(parts["undecided_part"])
    total = dec + und
    return {
        "decided_share_per_k": (dec / np.maximum(total, 1e-300)).tolist(),
        "decided_share_pooled": float(dec.sum() / total.sum()),
        "undecided_share_pooled": float(und.sum() / total.sum()),
    }


def build_summary(setting, world, forced, models, trained, recovery, quick, seconds) -> dict:
    """``summary.json``: the split, every model's ASR parts, shares, recovery fits and findings."""
    final = {name: snaps[max(snaps, key=int)] for name, snaps in trained.items()}
    share = {name: shares(parts) for name, parts in {**models, **final}.items()}
    summary = {
        "experiment": "optimum-vs-dynamics",
        "quick": quick,
        "version": package_version(),
        "world": dataclasses.asdict(setting.config.world),
        "lam": setting.lam,
        "learning_rates": setting.learning_rates,
        "budgets": list(setting.budgets),
        "transformer_budgets": list(setting.transformer_budgets),
        "split": {
            "k": list(range(1, world.length)),
            "decided_mass": forced.decided_mass.tolist(),
            "undecided_mass": forced.undecided_mass.tolist(),
            "undecided_forced_prefixes": int(len(forced.levels)),
        },
        "models": models,
        "trained": trained,
        "final": final,
        "shares": share,
        "recovery": recovery,
        "seconds": seconds,
    }
    summary["findings"] = findings(summary)
    return summary


def _mean(values) -> float:
    return float(np.mean(values))


def findings(s: dict) -> list[str]:
    """One sentence of numbers per question (no verdicts beyond what the numbers say)."""
    split, models, final = s["split"], s["models"], s["final"]
    pooled_dec = sum(split["decided_mass"]) / len(split["k"])
    out = [
        f"Decided forced prefixes carry {pooled_dec:.3f} of the prefill attack's q_k mass "
        f"(averaged over k = 1..{len(split['k'])}; per k {np.round(split['decided_mass'], 3).tolist()}): "
        f"there ASR = 1 for every policy, the optimum included."
    ]
    out.append(
        f"Undecided forced prefixes (conditional ASR averaged over k): base "
        f"{_mean(models['base']['undecided_conditional']):.3f}, optimum π*_λ "
        f"{_mean(models['optimum']['undecided_conditional']):.3f}; after the largest budget "
        + ", ".join(f"{n} {_mean(p['undecided_conditional']):.3f}" for n, p in final.items())
        + "."
    )
    for name, shares_ in s["shares"].items():
        if name in ("base", "optimum") or name in final:
            out.append(
                f"{name}: {shares_['decided_share_pooled']:.3f} of the attack's success "
                f"(pooled over k) comes from decided prefixes, "
                f"{shares_['undecided_share_pooled']:.3f} from undecided ones."
            )
    for name, fit in s["recovery"].items():
        spread = fit["eta_sum_P_at_recovery"]
        out.append(
            f"{name}: steps to half-recovery, log-log slope {fit['slope_vs_P0']:.2f} against "
            f"P_π0(u) and {fit['slope_vs_mean_P']:.2f} against the mean P_πn(u) over those "
            f"steps, over {fit['recovered']} recovered prefixes ({fit['censored']} not "
            f"recovered within {fit['budget']} steps)"
            + (
                f"; η Σ_n P_πn(u) at recovery: median {spread['median']:.3g} "
                f"(range {spread['min']:.3g} .. {spread['max']:.3g})"
                if spread
                else ""
            )
            + (
                f"; over the whole budget at the others: at most "
                f"{fit['eta_sum_P_censored']['max']:.3g}"
                if fit["eta_sum_P_censored"]
                else ""
            )
            + "."
        )
    return out
