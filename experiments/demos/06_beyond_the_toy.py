# %% [markdown]
# # 06 · Beyond the toy: what the theory predicts for real models
#
# **Question.** Qi et al. (ICLR 2025) measured, for real chat models, the per-token KL divergence
# between the aligned model and its base model on harmful responses — and found it concentrated
# on the first few tokens. Does the theory *predict* that shape, and what would change it?
#
# What Qi et al. report (a fact about their models, not a result of ours): **Figure 1** of
# *Safety Alignment Should Be Made More Than Just a Few Tokens Deep* (arXiv:2406.05946) plots the
# per-token KL between Llama-2-7B-Chat and Llama-2-7B (and Gemma-1.1-7B-IT and Gemma-7B) on the
# harmful HEx-PHI responses; the KL is large on the first few tokens and small afterwards. They
# also report that 96.1% of Llama-2-7B-Chat's responses to the 330 HEx-PHI harmful instructions
# start with "I cannot" or "I apologize". We do not reproduce their numbers; see the paper.
#
# What the theory says (demo 04, T7): at the optimum of KL-regularized alignment,
# `KL_t ≈ I_t / (2λ²)` — the KL at position `t` follows the base model's harm information `I_t`.
# So the question becomes: where does a *base* model decide whether its response will be
# harmful? We build two long-response base models (T = 64) and compute everything exactly with
# the Markov × automaton dynamic-programming engine (no enumeration of 5⁶⁴ responses).

# %%
import matplotlib.pyplot as plt
import numpy as np

from experiments.demos._support import setup
from proofs_check import make_instance
from toy_lm import harmful_before_refusal
from toy_lm.engines.markov_analysis import analyze_markov

demo = setup("06_beyond_the_toy")
T = 32 if demo.quick else 64
LAMBDAS = (0.3, 1.0, 3.0)
END, REFUSE, COMPLY, HARMFUL, NEUTRAL = range(5)
dfa = harmful_before_refusal(5, 3, harmful_tokens=[HARMFUL], refusal_tokens=[REFUSE])
demo.instance(
    make_instance("markov", 3, 4, seed=0, harm_kind="automaton"),
    ["T7"],
    note="T7 on a Markov policy with a harmful-before-refusal automaton small enough to "
    "enumerate (V=3, T=4); the demo's models have 5**64 responses",
)


def markov_model(first, rows, late=None):
    """Order-1 logits (T, 5, 5): ``first`` at position 1, ``rows[prev]`` after token ``prev``.

    ``late`` (position, rows) switches to other transition rows from that position on.
    """
    table = np.full((T, 5, 5), 1e-6)
    table[0, :] = first
    for t in range(1, T):
        for prev, row in (late[1] if late and t >= late[0] else rows).items():
            table[t, prev] = row
    table = np.maximum(table, 1e-6)  # full support: every logit finite
    table /= table.sum(axis=-1, keepdims=True)
    return np.log(table)


ROWS = {
    END: [1, 0, 0, 0, 0],
    REFUSE: [0.4, 0, 0, 0, 0.6],
    COMPLY: [0, 0.02, 0, 0.9, 0.08],
    HARMFUL: [0.01, 0.02, 0, 0.95, 0.02],
    NEUTRAL: [0.05, 0.05, 0, 0.05, 0.85],
}
models = {
    # Like a pretrained model on a harmful request: the opener decides (comply -> harmful content).
    "decides early (compliant opener)": markov_model([0, 0.25, 0.6, 0, 0.15], ROWS),
    # A contrast: many neutral tokens first, the harmful/refusal choice comes around t = 12.
    "decides late (neutral preamble)": markov_model(
        [0, 0, 0, 0, 1],
        {**ROWS, NEUTRAL: [0, 0, 0, 0, 1]},
        late=(12, {**ROWS, NEUTRAL: [0, 0.3, 0, 0.6, 0.1]}),
    ),
}

# %% [markdown]
# ## Harm information and the equilibrium KL, position by position
#
# For each base model: `I_t` (how much harm variance position `t` resolves) and the exact
# `KL_t(π*_λ ‖ π0)` of the aligned optimum for three values of `λ`, with the prediction
# `I_t / (2λ²)` dashed.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
positions = np.arange(1, T + 1)
shares = {}
for ax, (name, logits) in zip(axes, models.items()):
    info = analyze_markov(logits, dfa).harm_information
    ax.semilogy(positions, np.maximum(info, 1e-30), "k-", lw=2, label="I_t (base)")
    for lam in LAMBDAS:
        kl = analyze_markov(logits, dfa, lam=lam).equilibrium_kl
        (line,) = ax.semilogy(positions, np.maximum(kl, 1e-30), "o-", ms=2, label=f"KL_t, λ={lam}")
        ax.semilogy(
            positions, np.maximum(info / (2 * lam**2), 1e-30), "--", color=line.get_color(), lw=0.8
        )
        shares[(name, lam)] = np.cumsum(kl) / kl.sum()
    ax.set(xlabel="position t", ylabel="I_t and KL_t(π*_λ ‖ π0)", ylim=(1e-8, 1), title=name)
    ax.legend(fontsize=8)
    demo.note(
        **{
            f"{name.split()[1]}_I_t_first_8": info[:8],
            f"{name.split()[1]}_share_of_I_in_first_5": float(info[:5].sum() / info.sum()),
        }
    )
for (name, lam), share in shares.items():
    if lam == 1.0:
        axes[2].plot(positions, share, label=name)
axes[2].axvline(5, color="k", ls=":", lw=1)
axes[2].set(
    xlabel="position t",
    ylabel="fraction of Σ KL in positions ≤ t",
    title="where the aligned optimum differs (λ = 1)",
    ylim=(0, 1.02),
)
axes[2].legend(fontsize=8)
demo.save(
    fig,
    "beyond_the_toy",
    "Harm information, equilibrium KL (dashed: I_t/2λ²), and the "
    "cumulative share of KL by position.",
)
demo.note(share_of_kl_in_first_5={f"{n}, λ={lam}": float(s[4]) for (n, lam), s in shares.items()})

# %% [markdown]
# ## What you should now believe
#
# * The theory does not say "alignment is shallow" by itself: it says the aligned model moves
#   where the *base* model's harm is decided. For a base model whose opener decides (comply, then
#   persistent harmful content) the harm information sits on the first few positions, and so does
#   the KL of the aligned optimum — almost all of it in the first five tokens. That is the shape of
#   Qi et al.'s Figure 1, predicted from the base model's behaviour rather than observed.
# * Move the decision later (a neutral preamble) and the KL moves with it: the depth of
#   alignment follows `I_t`, position by position, with `KL_t ≈ I_t / 2λ²` for large `λ`.
# * Two caveats when comparing with real models. Qi et al. measure KL teacher-forced on harmful
#   responses, while `KL_t` here is averaged over the aligned model's own prefixes (demo 05 and
#   the experiments report both). And real alignment is not run to its exact optimum; demo 03
#   shows that gradient training has *no* signal after the horizon, which only strengthens the
#   concentration. Deepening alignment needs an objective with signal there — demo 05.
