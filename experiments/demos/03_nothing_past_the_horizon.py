# %% [markdown]
# # 03 · Nothing past the horizon
#
# **Question.** If the harm of a response is already decided by its first few tokens, what
# does alignment training do to the tokens after that?
#
# Demo 02 showed `g_t = Cov(H_t, s_t)`. At a *determined* prefix every continuation has the same
# harm, so `H_t` does not depend on the next token and the covariance is zero. In logit form
# (T4): `G(y<t)_v = P(y<t) π(v|y<t) (H_t(y<t v) − H_{t−1}(y<t))` — exactly zero there (T5).
#
# In practice, gradients are *estimated* from samples. REINFORCE uses `h(y) s_t(y)` per sample:
# unbiased, but beyond the horizon it is pure noise around a zero mean. With the baseline
# `H_{t−1}` the per-sample estimate becomes `Δ_t(y) s_t(y)`, which is exactly zero there,
# sample by sample (T10).

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

from experiments.demos._support import setup
from proofs_check import Instance
from toy_lm import TabularPolicy, cond_harm, horizon, logit_grads, prefix_probs, random_decided_harm
from toy_lm.tables import prefix_index

demo = setup("03_nothing_past_the_horizon")
V, T, TAU, SEED = 3, 6, 3, 1
NUM_SAMPLES = 2000 if demo.quick else 20000
policy = TabularPolicy(V, T)
k_pol, k_harm, k_samp = jax.random.split(jax.random.key(SEED), 3)
params = policy.init(k_pol)
harm = random_decided_harm(k_harm, V, T, TAU)
tables = policy.level_tables(params)
demo.instance(
    Instance("03 tabular V3 T6 tau3", policy, params, harm, seed=SEED), ["T4", "T5", "T10"]
)

# %% [markdown]
# ## Exact logit gradients, level by level
#
# `Σ|G|` over all prefixes of a level, on a log scale: positions `1 … τ*` carry gradient,
# positions after `τ*` carry *exactly* `0.0` (labelled on the plot; not `1e-17`: the engine
# computes `Δ_t` so that a determined prefix gives an exact zero).

# %%
grads = [np.asarray(g) for g in logit_grads(tables, harm)]
grad_mass = np.array([np.abs(g).sum() for g in grads])
tau_star = horizon(np.asarray(harm), V)

# %% [markdown]
# ## REINFORCE, with and without the `H_{t−1}` baseline
#
# For a tabular policy the score of token `y_t` with respect to the logits of its prefix is
# `onehot(y_t) − π(·|y<t)`, so the per-sample estimate of the level-`(t−1)` logit gradient is
# `A_t(y) (onehot(y_t) − π(·|y<t))` with advantage `A_t = h(y)` (plain) or `A_t = Δ_t(y)`
# (baseline `H_{t−1}`). We average the estimates over samples and compare with the exact `G`.

# %%
ys = np.asarray(policy.sample(k_samp, params, NUM_SAMPLES))
h_y = np.asarray(harm)[prefix_index(ys, V)]
values = [np.asarray(v) for v in cond_harm(tables, harm)]
probs = [np.asarray(p) for p in prefix_probs(tables)]
rows = {}
for name in ("plain", "baseline"):
    mean_err, sample_rms = [], []
    for t in range(1, T + 1):
        row = prefix_index(ys[:, : t - 1], V)
        pi = np.asarray(jax.nn.softmax(tables[t - 1], axis=-1))[row]
        score = np.eye(V)[ys[:, t - 1]] - pi
        adv = (
            h_y if name == "plain" else (values[t][prefix_index(ys[:, :t], V)] - values[t - 1][row])
        )
        per_sample = adv[:, None] * score
        estimate = np.zeros_like(grads[t - 1])
        np.add.at(estimate, row, per_sample / NUM_SAMPLES)
        mean_err.append(np.abs(estimate - grads[t - 1]).sum())
        sample_rms.append(np.sqrt(np.mean(np.sum(per_sample**2, axis=1))))
    rows[name] = (np.array(mean_err), np.array(sample_rms))

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
positions = np.arange(1, T + 1)
nonzero = grad_mass > 0
ax1.bar(positions[nonzero], grad_mass[nonzero], color="tab:blue")
ax1.set_yscale("log")
bottom = grad_mass[nonzero].min() / 100
for t in positions[~nonzero]:
    ax1.text(t, bottom * 3, "exactly\n0.0", ha="center", va="bottom", fontsize=9)
ax1.axvline(tau_star + 0.5, ls="--", color="k", lw=1, label=f"horizon τ* = {tau_star}")
ax1.set(
    xlabel="position t",
    ylabel="Σ |G| over level t−1 (exact)",
    title="exact logit gradients: exactly 0 after τ*",
    ylim=(bottom, None),
    xlim=(0.5, T + 0.5),
    xticks=positions,
)
ax1.legend()
ax2.plot(positions, rows["plain"][1], "o-", label="per-sample RMS, plain h(y)·s_t")
ax2.plot(positions, rows["baseline"][1], "s-", label="per-sample RMS, baseline Δ_t·s_t")
ax2.plot(positions, rows["plain"][0], "o:", label="|mean − exact|, plain")
ax2.axvline(tau_star + 0.5, ls="--", color="k", lw=1)
ax2.set(xlabel="position t", ylabel="size", title=f"REINFORCE from {NUM_SAMPLES} samples")
ax2.legend(fontsize=8)
demo.save(fig, "horizon_zero", "Exact logit gradients by position (left); REINFORCE noise (right).")

beyond = positions > tau_star
demo.note(
    tau_star=tau_star,
    grad_mass_by_position=grad_mass,
    grad_mass_beyond_horizon=float(grad_mass[beyond].sum()),
    plain_rms_beyond_horizon=rows["plain"][1][beyond],
    baseline_rms_beyond_horizon=rows["baseline"][1][beyond],
    plain_mean_error_beyond_horizon=rows["plain"][0][beyond],
)

# %% [markdown]
# ## What you should now believe
#
# * After the horizon the exact gradient is not small but *zero*: `Σ|G| = 0.0` for every position
#   `t > τ*` (numbers above). Alignment has nothing to push on there.
# * A plain REINFORCE estimate still moves those positions: its per-sample values have a clearly
#   positive RMS and its average is off by about `1/√N` — noise without signal, which can only
#   drift a model at positions where the objective has no opinion.
# * With the baseline `H_{t−1}` the advantage is `Δ_t`, which is exactly `0.0` at determined
#   prefixes: the estimate vanishes sample by sample (RMS exactly `0.0` after `τ*`).
# * Whatever the estimator, standard alignment cannot teach the model anything about tokens whose
#   harm is already decided — that is why it stays *shallow*. Demo 04 shows what the optimum of
#   the KL-regularized objective looks like position by position.
