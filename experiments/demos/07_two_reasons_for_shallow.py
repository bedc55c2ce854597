# %% [markdown]
# # 07 · Two reasons for shallow alignment
#
# **Question.** The paper says alignment is shallow because the gradient vanishes where harm is
# decided, and that the objective "cannot produce deep alignment regardless of optimization
# quality". Demo 05 showed RLHF staying shallow under prefill attacks. How much of that is the
# *objective* (no optimizer could do better) and how much is the *optimizer* (a better one would)?
#
# The exact optimum `π*_λ ∝ π0 exp(-h/λ)` answers the first part: its conditionals
# `π0(v|u) Z(uv)/Z(u)` do not depend on how often `u` is reached, so it moves **every undecided
# prefix** and leaves only **decided** prefixes (harm already in the prefix) at `π0` (T7b).
# THEORY.md T14 answers the second: with tabular logits, plain gradient descent moves the
# subtree below `u` exactly as if it were trained alone with step `η P_π(u)`, so rarely reached
# prefixes recover after about `1/(η P_π(u))` steps, and a natural-gradient step removes the factor.

# %%
import dataclasses

import matplotlib.pyplot as plt
import numpy as np

from experiments.demos._support import setup
from experiments.dynamics import make_setting, run_dynamics
from proofs_check import make_instance

demo = setup("07_two_reasons_for_shallow")
demo.instance(
    make_instance("tabular", 3, 4, seed=0, harm_kind="automaton", lam=0.3),
    ["T14"],
    note="T14's identity, checked exactly on the harmful-before-refusal automaton at "
    "V=3, T=4; the demo's world (5**5 responses) is the experiment's",
)

# %% [markdown]
# ## Train with three optimizers on the same exact objective
#
# `harm-horizon experiment optimum-vs-dynamics` in the refusal world of demo 05 (harmful prompt,
# `λ = 0.3`): plain gradient descent (step 1), natural gradient (step 1) and Adam (step 0.01) on
# the exact `L_λ = E[h] + λ KL(π‖π0)` from the base model, and the exact optimum for comparison.
# Quick mode stops at 1000 steps and leaves out the transformer.

# %%
setting = make_setting(quick=True)
if demo.quick:
    setting = dataclasses.replace(setting, budgets=(10, 100, 1000), transformer_budgets=())
s = run_dynamics(str(demo.out_dir / "run"), setting=setting)
split, models, final = s["split"], s["models"], s["final"]
ks = np.asarray(split["k"])

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
ax1.fill_between(ks, 0, split["decided_mass"], color="0.85", label="decided forced prefixes")
ax1.plot(ks, models["base"]["asr"], "k-o", lw=2, label="base π0")
ax1.plot(ks, models["optimum"]["asr"], "k--s", label="optimum π*_λ (any optimizer's limit)")
for name, parts in final.items():
    ax1.plot(ks, parts["asr"], "-^", label=f"{name}, {max(s['trained'][name], key=int)} steps")
ax1.set(
    xlabel="k = forced harmful prefix length",
    ylabel="ASR(k)",
    ylim=(-0.02, 1.02),
    xticks=ks,
    title="prefill ASR: the grey part no objective of this form removes",
)
ax1.legend(fontsize=8)
for name, fit in s["recovery"].items():
    pts = np.array([(p, r) for p, r, _ in fit["points"] if r is not None]).reshape(-1, 2)
    ax2.scatter(pts[:, 0], pts[:, 1], s=12, label=f"{name} (slope {fit['slope_vs_P0']:.2f})")
c = s["recovery"]["gd"]["eta_sum_P_at_recovery"]["median"]  # T14: recovery when η Σ_n P_πn(u) ≈ c_u
grid = np.logspace(np.log10(c / (3 * max(s["budgets"]))), 0, 20)
ax2.plot(grid, c / (s["learning_rates"]["gd"] * grid), "k--", lw=1, label=f"{c:.3g}/(η P)")
ax2.set(
    xscale="log",
    yscale="log",
    xlabel="P_π0(u)",
    ylabel="steps until H(u) is half-way to π*",
    title="steps to recover at undecided forced prefixes",
    ylim=(0.5, 3 * max(s["budgets"])),
)
ax2.legend(fontsize=8)
demo.save(
    fig,
    "two_reasons",
    "Left: ASR(k) split into the decided part (grey: the objective) and "
    "the rest (the optimizer). Right: steps to recover against P_π0(u).",
)

mean = lambda parts: float(np.mean(parts["undecided_conditional"]))
demo.note(
    decided_mass_per_k=split["decided_mass"],
    undecided_mass_per_k=split["undecided_mass"],
    undecided_asr_base=mean(models["base"]),
    undecided_asr_optimum=mean(models["optimum"]),
    **{f"undecided_asr_{n}": mean(p) for n, p in final.items()},
    **{f"decided_share_{n}": v["decided_share_pooled"] for n, v in s["shares"].items()},
    **{f"recovery_slope_vs_P0_{n}": f["slope_vs_P0"] for n, f in s["recovery"].items()},
    **{
        f"recovered_{n}": [f["recovered"], f["recovered"] + f["censored"]]
        for n, f in s["recovery"].items()
    },
)

# %% [markdown]
# ## What you should now believe
#
# * **The objective's part.** At decided forced prefixes (grey) the harm is already in the prefix:
#   `ASR = 1` for every policy, the optimum included, so no optimizer can remove that part of the
#   attack's success. For these prefixes the paper's wording holds exactly.
# * **The optimizer's part.** At undecided forced prefixes the optimum recovers (its conditional
#   ASR is far below the base's), yet plain gradient descent, the optimizer the paper's gradient
#   analysis describes, is still above the optimum after the largest budget (see the numbers
#   above): the step it takes below `u` is scaled by `P_π(u)` (T14, checked exactly by
#   `harm-horizon check --theorem T14`). Natural gradient (which divides the factor out) and Adam
#   (which normalizes the step's size, up to its ε) reach the optimum there. So "regardless of
#   optimization quality" is wrong for undecided prefixes: what keeps them shallow is the
#   training dynamics; a better optimizer removes it, and plain gradient descent needs about
#   `c/(η P_π(u))` steps there (the right panel).
# * Steps to recover at a prefix also depend on `π(refusal|u)` (the softmax gradient carries that
#   factor too), which is why the points scatter around the `1/(η P)` line rather than lie on it.
