# %% [markdown]
# # 01 · The harm martingale
#
# **Question.** While a model writes a response token by token, how does the chance that the
# finished response is harmful evolve — and at which token is the harm actually *decided*?
#
# The object that answers this is the *conditional expected harm*
# `H_t(y≤t) = E[h(Y) | Y≤t = y≤t]`: the harm we expect after seeing the first `t` tokens
# (THEORY.md §2). It starts at `H_0 = E[h]`, ends at `H_T = h(y)`, and in between it is a
# martingale: on average, the next token neither raises nor lowers it,
# `E[H_t | Y<t] = H_{t-1}`. Each token moves it by an increment `Δ_t = H_t − H_{t−1}`.
#
# A prefix is *determined* when every continuation has the same harm; from then on `H_t` is flat.
# The first such `t` is the response's *harm horizon* `τ(y)`, and `τ* = max_y τ(y)` is the global
# horizon. We follow sampled responses of a small exact model and watch where their paths go flat.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments.demos._support import setup
from proofs_check import Instance
from toy_lm import (
    TabularPolicy,
    automaton_harm_table,
    cond_harm,
    harm_information,
    harmful_before_refusal,
    horizon,
    random_decided_harm,
    response_horizons,
    response_log_probs,
)
from toy_lm.tables import prefix_index

demo = setup("01_harm_martingale")
SEED, NUM_PATHS = 0, 12 if demo.quick else 24

# %% [markdown]
# ## Two harms on the same kind of policy
#
# *Decided early:* a random binary harm that depends only on the first `TAU = 3` tokens
# (V = 3, T = 6). *Refusal world:* an automaton harm over V = 4 tokens (0 neutral, 1 harmful
# content, 2 refusal, 3 filler) that fires when K = 2 harmful tokens appear before any refusal —
# a refusal ends the harmful path safely, so harm can be averted at many positions (T = 5).


# %%
def paths(policy, params, harm, key, num):
    """Sampled responses and their H_t paths (levels 0..T), computed exactly."""
    tables = policy.level_tables(params)
    values = jax.jit(cond_harm)(tables, harm)  # one compiled program, not op by op
    ys = np.asarray(policy.sample(key, params, num))
    h_paths = np.stack(
        [
            np.asarray(values[l])[prefix_index(ys[:, :l], policy.vocab_size)]
            for l in range(policy.length + 1)
        ],
        axis=1,
    )
    taus = response_horizons(np.asarray(harm), policy.vocab_size)[
        prefix_index(ys, policy.vocab_size)
    ]
    return ys, h_paths, taus, np.asarray(jax.jit(harm_information)(tables, harm))


k_pol, k_harm, k_samp, k_pol2, k_samp2 = jax.random.split(jax.random.key(SEED), 5)
early = TabularPolicy(3, 6)
early_params = early.init(k_pol)
early_harm = random_decided_harm(k_harm, 3, 6, 3)

world = TabularPolicy(4, 5)
world_params = world.init(k_pol2)
dfa = harmful_before_refusal(4, 2, harmful_tokens=[1], refusal_tokens=[2])
world_harm = automaton_harm_table(dfa, 5)
demo.instance(
    Instance("01 decided early (tabular V3 T6)", early, early_params, early_harm, seed=SEED), ["T1"]
)
refusal_world = ("01 refusal world (tabular V4 T5)", world, world_params, world_harm)
demo.instance(Instance(*refusal_world, seed=SEED, harm_kind="automaton", dfa=dfa), ["T1"])

cases = {
    "decided by the first 3 tokens": (early, early_params, early_harm, k_samp),
    "refusal world (K=2 harmful before any refusal)": (world, world_params, world_harm, k_samp2),
}

# %% [markdown]
# ## Paths of `H_t`
#
# Each line is one sampled response. A dot marks its horizon `τ(y)`: after it the path is flat,
# because the remaining tokens cannot change the harm. The dashed line is the global horizon `τ*`.

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 2]})
for col, (title, (policy, params, harm, key)) in enumerate(cases.items()):
    ys, h_paths, taus, info = paths(policy, params, harm, key, NUM_PATHS)
    tau_star = horizon(np.asarray(harm), policy.vocab_size)
    ax = axes[0, col]
    for path, tau in zip(h_paths, taus):
        (line,) = ax.plot(range(policy.length + 1), path, alpha=0.6, lw=1.2)
        ax.plot(tau, path[tau], "o", color=line.get_color(), ms=5)
    ax.axvline(tau_star, ls="--", color="k", lw=1, label=f"global horizon τ* = {tau_star}")
    ax.set(
        title=title,
        xlabel="level t (tokens written)",
        ylabel="H_t = E[h | y≤t]",
        ylim=(-0.05, 1.05),
    )
    ax.legend(loc="center right")
    axes[1, col].bar(range(1, policy.length + 1), info, color="tab:purple")
    axes[1, col].set(
        xlabel="position t",
        ylabel="I_t = E[Δ_t²]",
        title="harm information: where the harm variance gets resolved",
    )
    flat_after = bool(np.all([np.all(p[t:] == p[t]) for p, t in zip(h_paths, taus)]))
    probs = np.exp(np.asarray(jax.jit(response_log_probs)(policy.level_tables(params))))
    var_h = float(probs @ np.asarray(harm) ** 2 - (probs @ np.asarray(harm)) ** 2)
    demo.note(
        **{
            f"case{col}_tau_star": tau_star,
            f"case{col}_taus": taus,
            f"case{col}_I_t": info,
            f"case{col}_flat_after_tau": flat_after,
            f"case{col}_var_h_minus_sum_I": var_h - float(info.sum()),
        }
    )
demo.save(
    fig, "martingale_paths", "Sampled paths of H_t (top) and the harm information I_t (bottom)."
)

# %% [markdown]
# ## The martingale, checked on the spot
#
# `E[Δ_t | Y<t] = 0` at every prefix, and the increments add up: `Σ_t Δ_t = h(y) − E[h]`. So the
# variance of the harm splits over positions, `Var(h) = Σ_t I_t` — the numbers above print
# `Var(h) − Σ_t I_t` (zero up to rounding). `harm-horizon check --theorem T1` checks all of it.

# %% [markdown]
# ## What you should now believe
#
# * `H_t` is a martingale: every sampled path wanders, but never drifts on average, from `E[h]` at
#   `t = 0` to the final verdict `h(y) ∈ {0, 1}` at `t = T`.
# * Harm is decided at a *stopping time* `τ(y)`: after it the path is exactly flat (the record
#   says `flat_after_tau = True` for every sampled path). With a harm fixed by the first three
#   tokens every path is flat from `t = 3` on; in the refusal world the time of decision varies
#   from response to response (a refusal or the K-th harmful token settles it).
# * `I_t = E[Δ_t²]` measures how much harm variance position `t` resolves, and it is exactly zero
#   beyond the horizon `τ*`. The next demos show that this is precisely where alignment gradients
#   vanish.
