"""Figures (PNG and SVG) of ``optimum-vs-dynamics`` from its ``summary.json`` dict (the
matplotlib backend is the caller's: the command line selects Agg).

* ``asr_vs_budget`` - the prefill attack's harm rate at *undecided* forced prefixes (conditional,
  averaged over ``k``) against the training budget, per optimizer, with the base and the optimum
  ``π*_λ`` as horizontal lines; at decided prefixes it is 1 for every model and is not drawn;
* ``asr_split`` - ``ASR(k)`` of the base, the optimum and each optimizer's final policy (plain
  gradient descent also at the smaller budgets, thin lines labelled with the step count), with the
  decided part (the same for every model) shaded;
* ``steps_to_recover`` - steps until ``H^π_k(u)`` is half-way to the optimum, against ``P_π0(u)``,
  log-log, with the line ``c/(η P)`` of THEORY.md T14 (``c`` the median ``η Σ_n P_{π_n}(u)`` at
  recovery under plain gradient descent) and the fitted slopes; prefixes not recovered
  within the budget are drawn at the budget as open triangles.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "COLORS",
    "NAMES",
    "make_figures",
    "plot_asr_split",
    "plot_asr_vs_budget",
    "plot_steps_to_recover",
]


def _save(fig, folder: str, stem: str) -> list[str]:
    paths = [os.path.join(folder, f"{stem}.{ext}") for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


NAMES = {
    "gd": "plain gradient descent",
    "natural": "natural gradient",
    "adam": "Adam",
    "transformer_adam": "transformer + Adam",
}
COLORS = {
    "gd": "tab:blue",
    "natural": "tab:green",
    "adam": "tab:orange",
    "transformer_adam": "tab:red",
}


def plot_asr_vs_budget(s: dict, folder: str) -> list[str]:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, snaps in s["trained"].items():
        budgets = sorted(snaps, key=int)
        ax.plot(
            [int(b) for b in budgets],
            [np.mean(snaps[b]["undecided_conditional"]) for b in budgets],
            "-o",
            color=COLORS.get(name),
            label=NAMES.get(name, name),
        )
    for key, style, label in (
        ("base", "k-", "base π0"),
        ("optimum", "k--", "optimum π*_λ"),
        ("transformer_base", "r:", "transformer base"),
        ("transformer_optimum", "r-.", "transformer optimum"),
    ):
        if key in s["models"]:
            ax.axhline(
                np.mean(s["models"][key]["undecided_conditional"]),
                ls=style[1:],
                color=style[0],
                lw=1.2,
                label=label,
            )
    ax.set(
        xscale="log",
        xlabel="training steps on the exact L_λ",
        ylim=(-0.02, 1.02),
        ylabel="ASR at undecided forced prefixes (mean over k)",
        title="Undecided prefixes: the optimum recovers, the optimizer decides how fast",
    )
    ax.legend(fontsize=8)
    return _save(fig, folder, "asr_vs_budget")


def plot_asr_split(s: dict, folder: str) -> list[str]:
    ks = np.asarray(s["split"]["k"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    decided = np.asarray(s["split"]["decided_mass"])
    ax.fill_between(ks, 0, decided, color="0.85", label="decided part (harm already in the prefix)")
    ax.plot(ks, s["models"]["base"]["asr"], "k-o", lw=2, label="base π0")
    ax.plot(ks, s["models"]["optimum"]["asr"], "k--s", label="optimum π*_λ")
    for name, parts in s["final"].items():
        if not name.startswith("transformer"):
            ax.plot(
                ks,
                parts["asr"],
                "-^",
                color=COLORS.get(name),
                label=f"{NAMES.get(name, name)}, {max(s['budgets'])} steps",
            )
    gd = s["trained"].get("gd", {})
    for budget in sorted(gd, key=int)[:-1]:  # plain GD on the way there (thin, fading in)
        ax.plot(
            ks,
            gd[budget]["asr"],
            "-",
            lw=0.8,
            color=COLORS["gd"],
            alpha=0.3 + 0.6 * int(budget) / max(s["budgets"]),
        )
        ax.annotate(
            f"{budget}",
            (ks[0], gd[budget]["asr"][0]),
            fontsize=7,
            color=COLORS["gd"],
            xytext=(-18, 0),
            textcoords="offset points",
        )
    ax.set(
        xlabel="k = forced harmful prefix length",
        ylabel="ASR(k)",
        ylim=(-0.02, 1.02),
        xticks=ks,
        title="Prefill ASR(k): decided part (objective) vs undecided part (optimizer)",
    )
    ax.legend(fontsize=8)
    return _save(fig, folder, "asr_split")


def plot_steps_to_recover(s: dict, folder: str) -> list[str]:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, fit in s["recovery"].items():
        pts = [(p, r) for p, r, _ in fit["points"]]
        hit = np.array([(p, r) for p, r in pts if r is not None]).reshape(-1, 2)
        miss = np.array([p for p, r in pts if r is None])
        color = COLORS.get(name)
        ax.scatter(
            hit[:, 0],
            hit[:, 1],
            s=14,
            color=color,
            label=f"{NAMES.get(name, name)} (slope {fit['slope_vs_P0']:.2f})",
        )
        if miss.size:
            ax.scatter(
                miss,
                np.full(miss.size, fit["budget"]),
                s=14,
                marker="^",
                facecolors="none",
                edgecolors=color,
            )
    eta = s["learning_rates"]["gd"]
    spread = s["recovery"].get("gd", {}).get("eta_sum_P_at_recovery")
    c = spread["median"] if spread else 1.0
    top = 10 * max(fit["budget"] for fit in s["recovery"].values())
    ps = np.logspace(np.log10(c / (eta * top)), 0, 50)
    ax.plot(
        ps,
        c / (eta * ps),
        "k--",
        lw=1,
        label=f"c/(η P), T14; c = {c:.3g} = median η Σ_n P_πn(u) at recovery (plain GD)",
    )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="P_π0(u), probability of reaching the forced prefix",
        ylabel="steps until H(u) is half-way to the optimum",
        title="Steps to recover at undecided prefixes (open: not within the budget)",
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, folder, "steps_to_recover")


def make_figures(out: str, summary: dict) -> list[str]:
    """Every figure into ``out/figures``; returns the paths relative to ``out``."""
    folder = os.path.join(out, "figures")
    os.makedirs(folder, exist_ok=True)
    paths = (
        plot_asr_vs_budget(summary, folder)
        + plot_asr_split(summary, folder)
        + plot_steps_to_recover(summary, folder)
    )
    return [os.path.relpath(p, out) for p in paths]
