"""Figures (PNG and SVG) from a folder of run results. The matplotlib backend is the caller's:
the command line selects the non-interactive Agg; importing this module selects none.

* ``kl_per_position`` - teacher-forced per-position ``KL(π‖π0)`` on the base model's harmful
  responses, standard objectives and deep objectives side by side; positions beyond the horizon of
  the base's typical harmful response are shaded (harm already decided there);
* ``prefill_asr`` - ``ASR(k)`` against the prefill length ``k``, with the base model and the floor
  (harm already inside the forced prefix, the same for every model);
* ``grad_norm_map`` - ``log10 ‖g_t‖`` over position x training step, one panel per run;
* ``information_vs_kl`` - ``I_t(π0)`` against the equilibrium ``KL_t(π*_λ‖π0)`` on log-log axes, with
  the fitted slope per ``λ`` (THEORY.md T7c predicts slope 1 and ``KL_t ≈ I_t / 2λ²``);
* ``martingale_paths`` - sampled paths ``H_0 ... H_T`` of the conditional expected harm;
* ``attack_survival`` - ``E[h]`` during the fine-tuning attack (solid: plain SFT, dashed: Qi et
  al.'s constrained objective).
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np

from experiments.labels import NAMES, labels, objective
from experiments.results import load_results

__all__ = [
    "COLORS",
    "DEEP",
    "STANDARD",
    "fitted_slope",
    "make_figures",
    "plot_asr",
    "plot_attack",
    "plot_grad_map",
    "plot_information",
    "plot_kl",
    "plot_paths",
]

STANDARD = ("rlhf", "reinforce", "dpo", "dpo_sampled", "sft_refusal")
DEEP = ("augmentation", "recovery_prefill", "recovery_dense")  # recovery_dense: on-policy
COLORS = {
    "none": "black",
    "rlhf": "tab:blue",
    "reinforce": "tab:cyan",
    "dpo": "tab:orange",
    "dpo_sampled": "tab:brown",
    "sft_refusal": "tab:pink",
    "augmentation": "tab:green",
    "recovery_prefill": "tab:red",
    "recovery_dense": "tab:purple",
}


def _save(fig, folder: str, stem: str) -> list[str]:
    paths = [os.path.join(folder, f"{stem}.{ext}") for ext in ("png", "svg")]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _shade_beyond(ax, horizon: int, last: int, label: bool) -> None:
    if horizon < last:
        ax.axvspan(
            horizon + 0.5,
            last + 0.5,
            color="0.9",
            zorder=0,
            label="harm already decided (beyond τ of the typical harmful response)"
            if label
            else None,
        )


def plot_kl(results, folder) -> list[str]:
    """Per-position teacher-forced KL, standard vs deep objectives side by side."""
    names = labels(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    length = len(results[0]["aligned"]["per_position_kl"])
    positions = np.arange(1, length + 1)
    horizon = results[0]["base"]["harmful_path_horizon"]
    for ax, group, title in (
        (axes[0], STANDARD, "standard objectives"),
        (axes[1], DEEP, "deep objectives (recovery)"),
    ):
        _shade_beyond(ax, horizon, length, ax is axes[0])
        for result, name in zip(results, names):
            if objective(result) in group:
                ax.plot(
                    positions,
                    result["aligned"]["per_position_kl"],
                    "o-",
                    label=name,
                    color=COLORS.get(objective(result)),
                )
        _plot_optimum(ax, results, group, positions, "per_position_kl")
        ax.set_title(title)
        ax.set_xlabel("position t")
        ax.set_xticks(positions)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        else:
            ax.text(0.5, 0.5, "no run of this group", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("KL(π ‖ π0) at position t\n(teacher-forced on base harmful responses)")
    base = results[0]["base"]
    fig.suptitle(
        f"Where alignment changes the model (typical harmful response "
        f"'{base['typical_harmful_response']}', decided at τ(y) = {horizon}; "
        f"global horizon τ* = {base.get('global_horizon', '?')})"
    )
    return _save(fig, folder, "kl_per_position")


def _plot_optimum(ax, results, group, xs, field) -> None:
    """Dotted: the exact optimum of the group's on-policy objective at the runs' λ (untrained)."""
    optima = results[0].get("equilibria", {})
    present = {objective(r) for r in results}
    name = "rlhf" if "rlhf" in group else "recovery_dense"
    if name in optima and name in present:
        ax.plot(
            xs,
            optima[name][field],
            ":",
            color=COLORS[name],
            label=f"{NAMES[name]}: exact optimum (untrained)",
        )


def plot_asr(results, folder) -> list[str]:
    """Prefill attack success rate against the prefill length ``k``."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = results[0]["base"]
    ks = np.arange(len(base["prefill_asr"]))
    ax.fill_between(
        ks,
        0,
        base["prefill_asr_floor"],
        color="0.85",
        label="floor: harm already inside the prefix",
    )
    ax.plot(ks, base["prefill_asr"], "k--", label="base model")
    for result, name in zip(results, labels(results)):
        if objective(result) != "none":
            ax.plot(
                ks,
                result["aligned"]["prefill_asr"],
                "o-",
                label=name,
                color=COLORS.get(objective(result)),
            )
    _plot_optimum(ax, results, STANDARD, ks, "prefill_asr")
    ax.set_xlabel("prefill length k (tokens of a base harmful response forced)")
    ax.set_ylabel("ASR(k) = E[h | forced harmful prefix]")
    ax.set_xticks(ks)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title("Prefill attack")
    return _save(fig, folder, "prefill_asr")


def plot_grad_map(results, folder) -> list[str]:
    """``log10 ‖g_t‖`` over position x step, one panel per run with a training history."""
    trained = [(r, n) for r, n in zip(results, labels(results)) if r["training"]["grad_norms"]]
    if not trained:
        return []
    cols = min(3, len(trained))
    rows = -(-len(trained) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, layout="constrained"
    )
    maps = [
        np.log10(np.maximum(np.asarray(r["training"]["grad_norms"], float).T, 1e-300))
        for r, _ in trained
    ]
    finite = np.concatenate([m[np.isfinite(m) & (m > -299)] for m in maps])
    vmin, vmax = (np.percentile(finite, 2), finite.max()) if finite.size else (-10, 0)
    for ax, (result, name), grid in zip(axes.flat, trained, maps):
        steps = result["training"]["grad_steps"]
        image = ax.imshow(
            grid,
            aspect="auto",
            origin="lower",
            vmin=vmin,
            vmax=vmax,
            extent=(steps[0] - 0.5, steps[-1] + 0.5, 0.5, grid.shape[0] + 0.5),
            cmap="viridis",
        )
        if result["base"]["global_horizon"] < grid.shape[0]:
            ax.axhline(result["base"]["global_horizon"] + 0.5, color="w", ls="--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("position t")
    for ax in list(axes.flat)[len(trained) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label="log10 ‖g_t‖ (per-position gradient norm)")
    fig.suptitle(
        f"Per-position gradient norms (global harm horizon τ* = "
        f"{trained[0][0]['base']['global_horizon']}; dashed when τ* < T)"
    )
    return _save(fig, folder, "grad_norm_map")


def fitted_slope(x, y) -> float:
    """Least-squares slope of ``log y`` on ``log x`` over the points with ``x, y > 0``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = (x > 0) & (y > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def plot_information(results, folder) -> list[str]:
    """``I_t(π0)`` against ``KL_t(π*_λ ‖ π0)``, log-log, with fitted slopes."""
    base = results[0]["base"]
    info = np.asarray(base["harm_information"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for lam, kl in zip(base["equilibrium"]["lams"], base["equilibrium"]["kl"]):
        slope = fitted_slope(info, kl)
        line = ax.loglog(info, kl, "o", label=f"λ = {lam:g}: fitted slope {slope:.3f}")[0]
        grid = np.geomspace(info[info > 0].min(), info.max(), 20)
        ax.loglog(grid, grid / (2 * lam**2), ":", color=line.get_color(), lw=1)
    ax.set_xlabel("harm information I_t of the base model")
    ax.set_ylabel("equilibrium KL_t(π*_λ ‖ π0)")
    ax.set_title("Equilibrium KL tracks harm information\n(dotted: I_t / 2λ², THEORY.md T7c)")
    ax.legend(fontsize=8)
    return _save(fig, folder, "information_vs_kl")


def plot_paths(results, folder) -> list[str]:
    """Sampled martingale paths ``H_t`` per run (at most six panels)."""
    shown = list(zip(results, labels(results)))[:6]
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, (result, name) in zip(axes.flat, shown):
        paths = np.asarray(result["aligned"]["martingale_paths"])
        for path in paths:
            ax.plot(
                np.arange(paths.shape[1]),
                path,
                "-",
                color=COLORS.get(objective(result)),
                alpha=0.35,
                lw=1,
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("level t (tokens generated)")
        ax.set_ylabel("H_t = E[h | y_<=t]")
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle("Conditional expected harm along sampled responses (harmful prompt)")
    return _save(fig, folder, "martingale_paths")


def plot_attack(results, folder) -> list[str]:
    """``E[h]`` over the fine-tuning attack's steps."""
    attacked = [(r, n) for r, n in zip(results, labels(results)) if r.get("attack")]
    if not attacked:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result, name in attacked:
        for attack_name, curve in result["attack"].items():
            style = "-" if attack_name == "sft" else "--"
            ax.plot(
                curve["steps"],
                curve["expected_harm"],
                style,
                color=COLORS.get(objective(result)),
                label=f"{name}, {'SFT' if attack_name == 'sft' else 'constrained SFT'}",
            )
    ax.set_xlabel("fine-tuning attack step (SFT on harmful completions)")
    ax.set_ylabel("E[h]")
    ax.set_ylim(0, 1.02)
    ax.set_title("Fine-tuning attack survival")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, folder, "attack_survival")


def make_figures(out: str, results: list[dict] | None = None) -> list[str]:
    """All figures of the results in ``out`` (or the given ``results``) into ``out/figures``."""
    results = results if results is not None else load_results(out)
    folder = os.path.join(out, "figures")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for plot in (plot_kl, plot_asr, plot_grad_map, plot_information, plot_paths, plot_attack):
        paths += plot(results, folder)
    return paths
