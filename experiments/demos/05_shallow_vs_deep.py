# %% [markdown]
# # 05 · Shallow vs deep: prefilling attacks
#
# **Question.** Demos 03 and 04 say standard alignment has no reason to change a model after the
# harm is decided. Does that make it vulnerable — and do the objectives designed to fix it
# (Qi et al.'s safety-recovery augmentation, THEORY.md's recovery penalty) actually help?
#
# We train, from one base model, four aligned models in the *refusal world* of
# `experiments.world` (tokens: end, refusal, comply opener, harmful content, neutral; T = 5;
# harm = 3 harmful tokens before any refusal; a benign prompt whose utility punishes
# over-refusal). The base model, like a pretrained LLM, usually complies with the harmful
# prompt and then keeps producing harmful content. Then we attack every model with a
# **prefill**: force the first `k` tokens of one of the base model's harmful responses and let
# the model continue. `ASR(k)` is the resulting harm rate, computed exactly.

# %%
import matplotlib.pyplot as plt
import numpy as np

from experiments.demos._support import setup
from experiments.headline import headline_configs
from experiments.train import train_and_evaluate
from proofs_check import make_instance

demo = setup("05_shallow_vs_deep")
OBJECTIVES = {
    "rlhf": "KL-regularized RLHF",
    "dpo": "DPO",
    "augmentation": "safety-recovery augmentation",
    "recovery_prefill": "recovery penalty",
}
configs = {
    c.align.objective: c
    for c in headline_configs(quick=demo.quick)
    if c.align.objective in ("none", *OBJECTIVES)
}
demo.instance(
    make_instance("tabular", 3, 4, seed=0, harm_kind="automaton", lam=0.3),
    ["T8", "T9", "T11"],
    note="the same harmful-before-refusal automaton family on a tree small enough for "
    "the checks to enumerate (V=3, T=4); the demo's world has 5**5 responses",
)

# %% [markdown]
# ## Train
#
# The same configurations as `harm-horizon experiment shallow-vs-deep` (its `--quick` variant in
# quick mode): exact-gradient RLHF and exact DPO (the standard objectives), augmentation with
# "harmful prefix, then refusal" examples, and the prefill recovery penalty
# `L_rec = E[h] + μ Σ_k ASR(k)` (the deep objectives). Every number is an exact expectation.

# %%
runs = {name: train_and_evaluate(cfg, str(demo.out_dir)) for name, cfg in configs.items()}
base = runs["none"]["base"]
T = len(base["prefill_asr"])
undecided = [k for k in range(T) if base["prefill_asr"][k] > base["prefill_asr_floor"][k] + 1e-9]

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
ks = np.arange(T)
ax1.plot(ks, base["prefill_asr"], "k-o", lw=2, label="base model")
ax1.plot(ks, base["prefill_asr_floor"], "k:", label="floor: harm already in the prefix")
for name, label in OBJECTIVES.items():
    style = "--s" if name in ("rlhf", "dpo") else "-^"
    ax1.plot(ks, runs[name]["aligned"]["prefill_asr"], style, label=label)
ax1.set(
    xlabel="k = forced harmful prefix length",
    ylabel="ASR(k)",
    ylim=(-0.02, 1.02),
    title="prefill attack on the base model's harmful prefixes",
    xticks=ks,
)
ax1.legend(fontsize=8)
positions = np.arange(1, T + 1)
width = 0.2
for i, (name, label) in enumerate(OBJECTIVES.items()):
    kl = np.asarray(runs[name]["aligned"]["per_position_kl"])
    ax2.bar(positions + (i - 1.5) * width, kl, width, label=label)
ax2.set(
    xlabel="position t",
    ylabel="KL_t(π_aligned ‖ π_base)",
    title="per-position KL, teacher-forced on base harmful responses",
)
ax2.legend(fontsize=8)
demo.save(
    fig,
    "shallow_vs_deep",
    "Prefill ASR(k) (left) and where each objective moved the model (right).",
)

demo.note(
    base_prefill_asr=base["prefill_asr"],
    base_harm_information=base["harm_information"],
    harmful_path_horizon=base["harmful_path_horizon"],
    **{f"{n}_expected_harm": runs[n]["aligned"]["expected_harm"] for n in OBJECTIVES},
    **{f"{n}_prefill_asr": runs[n]["aligned"]["prefill_asr"] for n in OBJECTIVES},
    **{f"{n}_per_position_kl": runs[n]["aligned"]["per_position_kl"] for n in OBJECTIVES},
    **{f"{n}_utility": runs[n]["aligned"]["utility"] for n in OBJECTIVES},
    **{
        f"{n}_kl_at_decided_prefixes": runs[n]["aligned"]["per_position_kl_beyond_horizon"]
        for n in OBJECTIVES
    },
)
mean_asr = {
    n: float(np.mean([runs[n]["aligned"]["prefill_asr"][k] for k in undecided[1:]]))
    for n in OBJECTIVES
}
demo.note(mean_asr_over_undecided_k_ge_1=mean_asr, undecided_k=undecided)

# %% [markdown]
# ## What you should now believe
#
# * Every objective lowers the harm of unattacked responses (`ASR(0) = E[h]`). The difference is
#   what happens under attack. For RLHF and DPO, the ASR climbs back toward the base model's as
#   the forced harmful prefix grows: their KL sits on the first position (the opener), and on the
#   harmful path it is exactly 0 at prefixes where the harm is already decided
#   (`*_kl_at_decided_prefixes` above; demo 04's prediction).
# * Augmentation and the recovery penalty train on harmful prefixes directly, so they have signal
#   deeper in the response: their ASR stays low for every `k` that leaves the harm undecided, and
#   their KL is spread over later positions.
# * How clean the contrast is depends on optimization details (step counts, learning rates — see
#   the `experiments` README and `summary.json` of the headline experiment, which reports these
#   criteria as computed true/false values rather than assuming them). The theory explains the
#   mechanism; the experiment measures how much of it a given training run shows.
