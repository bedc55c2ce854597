# %% [markdown]
# # 02 · The alignment gradient is a covariance
#
# **Question.** Alignment lowers the expected harm `E_π[h]` by gradient descent. How much of that
# gradient comes from each position `t` of the response, and what decides its size?
#
# Split the gradient by position: `g_t` is `∇_θ E_π[h]` with only the factor `π_θ(y_t | y<t)`
# differentiated (THEORY.md §2), so `Σ_t g_t = ∇_θ E[h]`. The theorem (T3) says
#
# `g_t = E[h s_t] = E[H_t s_t] = E[Δ_t s_t] = Cov(H_t, s_t)`, with `s_t = ∇_θ log π_θ(y_t | y<t)`:
#
# the gradient at position `t` is the covariance between the conditional expected harm *after*
# token `t` and the score of that token. We compute `g_t` three independent ways for a tiny
# causal **transformer** (weights shared across positions) and put them side by side.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments.demos._support import setup
from proofs_check import Instance
from toy_lm import (
    TransformerPolicy,
    cond_harm,
    per_position_grads_autodiff,
    per_position_grads_surrogate,
    random_decided_harm,
    response_log_probs,
    total_grad,
)
from toy_lm.tables import all_prefixes, prefix_index

demo = setup("02_gradient_is_covariance")
V, T, TAU, SEED = 3, 4, 2, 0
policy = TransformerPolicy(V, T, d_model=8, num_heads=2, num_layers=1)
k_pol, k_harm = jax.random.split(jax.random.key(SEED))
params = policy.init(k_pol)
harm = random_decided_harm(k_harm, V, T, TAU)
tables_fn = policy.level_tables
demo.instance(
    Instance("02 transformer V3 T4 tau2", policy, params, harm, seed=SEED), ["T2", "T3", "T4", "T5"]
)

# %% [markdown]
# ## Three routes to `g_t`
#
# 1. **Autodiff with stop-gradients**: `jax.grad` of the exact `Σ_y P(y) h(y)` in which every
#    level of the policy except level `t−1` sits under `stop_gradient`.
# 2. **Martingale surrogate**: `jax.grad` of `Σ_y sg(P(y)) sg(Δ_t(y)) log π_θ(y_t|y<t)` — the
#    enumerated `E[Δ_t s_t]`.
# 3. **Literal covariance**: the score `s_t(y)` of every response by `jax.jacrev`, then
#    `Σ_y P(y) H_t(y≤t) s_t(y)` (the covariance, since `E[s_t] = 0`).


# %%
def flat_per_position(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in leaves], axis=1)


# Each route is one jitted program: compiling it whole is much faster than running op by op.
g_autodiff = flat_per_position(
    jax.jit(lambda p: per_position_grads_autodiff(tables_fn, p, harm))(params)
)
g_surrogate = flat_per_position(
    jax.jit(lambda p: per_position_grads_surrogate(tables_fn, p, harm))(params)
)

responses = jnp.asarray(all_prefixes(V, T))
jac = jax.jit(jax.jacrev(lambda p: policy.token_log_probs(p, responses)))(params)  # (Y, T, ...)
scores = np.concatenate(
    [np.asarray(x).reshape(len(responses), T, -1) for x in jax.tree_util.tree_leaves(jac)], axis=2
).transpose(1, 0, 2)
tables = jax.jit(tables_fn)(params)
prob = np.exp(np.asarray(jax.jit(response_log_probs)(tables)))
values = jax.jit(cond_harm)(tables, harm)
g_covariance = np.stack(
    [
        np.einsum(
            "y,y,yp->p",
            prob,
            np.asarray(values[t])[prefix_index(np.asarray(responses)[:, :t], V)],
            scores[t - 1],
        )
        for t in range(1, T + 1)
    ]
)
full = flat_per_position(
    jax.tree_util.tree_map(
        lambda x: x[None], jax.jit(lambda p: total_grad(tables_fn, p, harm))(params)
    )
)[0]

# %% [markdown]
# ## Side by side
#
# Left: every coordinate of every `g_t` by the covariance route against the autodiff route — all
# points on the diagonal. Right: the size of `g_t` by position; positions after the horizon
# (`t > τ* = 2`) get nothing, even though the transformer shares its weights across positions.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
for t in range(T):
    ax1.plot(g_autodiff[t], g_covariance[t], ".", ms=4, label=f"t = {t + 1}")
lim = np.abs(g_autodiff).max() * 1.1
ax1.plot([-lim, lim], [-lim, lim], "k-", lw=0.5)
ax1.set(
    xlabel="g_t by stop-gradient autodiff",
    ylabel="g_t as Cov(H_t, s_t)",
    title="every coordinate of every g_t",
    xlim=(-lim, lim),
    ylim=(-lim, lim),
)
ax1.legend()
width = 0.27
positions = np.arange(1, T + 1)
for i, (name, g) in enumerate(
    [("autodiff", g_autodiff), ("surrogate", g_surrogate), ("covariance", g_covariance)]
):
    ax2.bar(positions + (i - 1) * width, np.linalg.norm(g, axis=1), width, label=name)
ax2.axvline(TAU + 0.5, ls="--", color="k", lw=1, label="harm horizon")
ax2.set(xlabel="position t", ylabel="‖g_t‖", title="per-position gradient norm, three routes")
ax2.legend()
demo.save(fig, "gradient_covariance", "g_t by autodiff, martingale surrogate and covariance.")

demo.note(
    max_diff_autodiff_vs_covariance=float(np.abs(g_autodiff - g_covariance).max()),
    max_diff_autodiff_vs_surrogate=float(np.abs(g_autodiff - g_surrogate).max()),
    max_diff_sum_vs_full_grad=float(np.abs(g_autodiff.sum(0) - full).max()),
    grad_norm_by_position=np.linalg.norm(g_autodiff, axis=1),
    num_parameters=int(g_autodiff.shape[1]),
)

# %% [markdown]
# ## What you should now believe
#
# * The three routes agree to rounding (about `1e-17`; see the numbers above), and the per-position
#   pieces add up to the full `jax.grad` of `E[h]`. The covariance is not an approximation: it *is*
#   the gradient, position by position.
# * A position receives gradient only through the covariance of its token's score with the harm
#   that token helps decide. Where `H_t` no longer depends on `y_t` — after the harm horizon — the
#   covariance is zero, and so is the gradient, *whatever the parameterization*: shared weights do
#   not leak signal to those positions at this point. Demo 03 looks at that zero closely.
