"""Monte Carlo estimators with confidence intervals, for policies too large to enumerate.

Each estimator samples from the policy (any :class:`toy_lm.models.policies.Policy`: tabular, Markov or a
shared-weight transformer such as ``TransformerPolicy(64, 32)``, whose ``64**32`` responses no
engine can enumerate) and returns an :class:`Estimate`: the mean, its standard error and a
Student-t confidence interval from independent replicates. The quantities are those of
THEORY.md section 2:

* :func:`cond_harm_mc` - ``H_k(y_<=k) = E[h | y_<=k]`` by rollouts from given prefixes;
* :func:`per_position_kl_mc` - ``KL_t(π || π0)`` from responses of ``π``, as Qi et al. (2025)
  measure it on real models: the full next-token KL at every sampled prefix (``"full"``), or the
  single-token log-ratio ``log π(y_t|y_<t) - log π0(y_t|y_<t)`` (``"sampled"``); both unbiased;
* :func:`reinforce_grads` - ``g_t = E[(h(Y) - b_t) s_t]`` (REINFORCE, T10) without a baseline,
  with a leave-one-out batch-mean baseline, or with any baseline ``b_t(y_<t)`` such as the exact
  ``H_{t-1}`` (:func:`table_baseline`, :func:`markov_baseline`), which makes the estimate exactly
  0 beyond the horizon;
* :func:`prefill_asr_mc` - ``ASR_π(k)`` after prefixes drawn from the base model's harmful
  responses (:func:`harmful_prefixes`, exact rejection sampling, soft harm included).

Keys are explicit and first; sampling runs under ``jit`` with the policy static. Intervals are
checked for coverage in ``tests/test_montecarlo.py``.

References:
  Qi et al. 2025, "Safety Alignment Should Be Made More Than Just a Few Tokens Deep" (ICLR).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from toy_lm.errors import InputError
from toy_lm.models.automata import Automaton
from toy_lm.models.policies import Policy
from toy_lm.mutation import point

__all__ = [
    "Estimate",
    "HarmFn",
    "automaton_harm_fn",
    "cond_harm_mc",
    "continue_prefixes",
    "harmful_prefixes",
    "kl_samples",
    "markov_baseline",
    "per_position_kl_mc",
    "prefill_asr_mc",
    "reinforce_batch_grads",
    "reinforce_grads",
    "rollout_harms",
    "sample",
    "t_interval",
    "table_baseline",
    "table_harm_fn",
]

HarmFn = Callable[[jax.Array], jax.Array]


class Estimate(NamedTuple):
    """A Monte Carlo estimate with a two-sided Student-t interval at ``level``.

    Attributes: ``mean``, ``stderr``, ``low``, ``high`` (same shape), ``replicates`` (independent
    replicates behind the interval: samples, or batches for gradients), ``level``.
    """

    mean: np.ndarray
    stderr: np.ndarray
    low: np.ndarray
    high: np.ndarray
    replicates: int
    level: float

    def covers(self, truth, atol: float = 0.0) -> np.ndarray:
        """Whether ``[low - atol, high + atol]`` contains ``truth`` (elementwise).

        ``atol`` is the caller's bound on the rounding error of ``truth`` itself: an exact engine
        leaves ~1e-17 where a zero-variance estimate is exactly 0.
        """
        truth = np.asarray(truth)
        return (self.low - atol <= truth) & (truth <= self.high + atol)


def t_interval(replicates, level: float = 0.95, axis: int = 0) -> Estimate:
    """Mean and Student-t interval from i.i.d. replicates along ``axis``.

    ``mean ± t_{n-1, (1+level)/2} · s / sqrt(n)`` with the sample standard deviation ``s``.
    """
    x = np.asarray(replicates, np.float64)
    n = x.shape[axis]
    if n < 2:
        raise InputError(f"an interval needs at least 2 replicates, got {n}")
    if not 0 < level < 1:
        raise InputError(f"confidence level {level} must lie strictly between 0 and 1")
    mean = x.mean(axis=axis)
    stderr = x.std(axis=axis, ddof=1) / np.sqrt(n)
    half = float(scipy.stats.t.ppf(0.5 + level / 2, n - 1)) * stderr
    return Estimate(mean, stderr, mean - half, mean + half, n, level)


# -- harms of sampled responses -----------------------------------------------------------------
def automaton_harm_fn(dfa: Automaton) -> HarmFn:
    """``h(y) = verdict[state after y]`` for a batch of responses ``(B, T) -> (B,)``."""
    trans, verdict = jnp.asarray(dfa.transitions), jnp.asarray(dfa.verdict)

    def harm(responses):
        def step(state, tokens):
            return trans[state, tokens], None

        start = jnp.full(responses.shape[:1], dfa.start, trans.dtype)
        final, _ = jax.lax.scan(step, start, jnp.asarray(responses).T)
        return verdict[final]

    return harm


def table_harm_fn(harm, vocab_size: int) -> HarmFn:
    """Look responses up in a harm table ``(V**T,)`` (canonical order)."""
    harm = jnp.asarray(harm)

    def lookup(responses):
        rows = jnp.zeros(responses.shape[:1], jnp.int64)
        for j in range(responses.shape[1]):
            rows = rows * vocab_size + responses[:, j]
        return harm[rows]

    return lookup


# -- sampling -----------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("policy",))
def continue_prefixes(
    key: jax.Array, policy: Policy, params, prefixes: jax.Array, prompt=0
) -> jax.Array:
    """Complete forced prefixes ``(B, k)`` to responses ``(B, T)`` by sampling from the policy.

    One ``fori_loop`` over positions ``k ... T-1``: each step reads the next-token logits from
    ``teacher_forced_logits`` of the partly filled buffer (causal: position ``l`` sees only the
    ``l`` tokens already drawn), so the compiled program is one loop body whatever ``T`` and ``k``.
    """
    prefixes = jnp.asarray(prefixes, jnp.int32)
    num, k = prefixes.shape
    tokens = jnp.zeros((num, policy.length), jnp.int32).at[:, :k].set(prefixes)

    def draw(level, tokens):
        logits = policy.teacher_forced_logits(params, tokens, prompt)
        logits = jax.lax.dynamic_index_in_dim(logits, level, axis=1, keepdims=False)
        nxt = jax.random.categorical(jax.random.fold_in(key, level), logits, axis=-1)
        return tokens.at[:, level].set(nxt.astype(jnp.int32))

    return jax.lax.fori_loop(k, policy.length, draw, tokens)


def sample(key: jax.Array, policy: Policy, params, num_samples: int, prompt=0) -> jax.Array:
    """``num_samples`` responses ``(n, T)`` from the policy (jitted, policy static)."""
    return continue_prefixes(key, policy, params, jnp.zeros((num_samples, 0), jnp.int32), prompt)


# -- estimators ---------------------------------------------------------------------------------
def rollout_harms(
    key: jax.Array,
    policy: Policy,
    params,
    harm_fn: HarmFn,
    prefixes,
    num_rollouts: int,
    *,
    prompt=0,
) -> np.ndarray:
    """``h`` of ``num_rollouts`` continuations of each of ``P`` prefixes: ``(P, num_rollouts)``."""
    prefixes = jnp.asarray(prefixes, jnp.int32)
    repeated = jnp.repeat(prefixes, num_rollouts, axis=0)
    harms = harm_fn(continue_prefixes(key, policy, params, repeated, prompt))
    return np.asarray(harms).reshape(prefixes.shape[0], num_rollouts)


def cond_harm_mc(
    key: jax.Array,
    policy: Policy,
    params,
    harm_fn: HarmFn,
    prefixes,
    num_rollouts: int,
    *,
    prompt=0,
    level: float = 0.95,
) -> Estimate:
    """``H_k(y_<=k)`` for each of ``P`` prefixes ``(P, k)`` from ``num_rollouts`` rollouts each.

    Returns an :class:`Estimate` of shape ``(P,)``.
    """
    harms = rollout_harms(key, policy, params, harm_fn, prefixes, num_rollouts, prompt=prompt)
    return t_interval(harms, level, axis=1)


def per_position_kl_mc(
    key: jax.Array,
    policy: Policy,
    params,
    ref_policy: Policy,
    ref_params,
    num_samples: int,
    *,
    estimator: str = "full",
    prompt=0,
    level: float = 0.95,
) -> Estimate:
    """``KL_t(π || π0)`` for ``t = 1 ... T`` from ``num_samples`` responses of ``π``.

    ``"full"``: ``KL(π(.|y_<t) || π0(.|y_<t))`` at each sampled prefix (Rao-Blackwellized, what
    Qi et al. plot); ``"sampled"``: ``log π(y_t|y_<t) - log π0(y_t|y_<t)``. Shape ``(T,)``.
    """
    return t_interval(
        kl_samples(
            key,
            policy,
            params,
            ref_policy,
            ref_params,
            num_samples,
            estimator=estimator,
            prompt=prompt,
        ),
        level,
    )


def kl_samples(
    key: jax.Array,
    policy: Policy,
    params,
    ref_policy: Policy,
    ref_params,
    num_samples: int,
    *,
    estimator: str = "full",
    prompt=0,
) -> np.ndarray:
    """The per-response terms behind :func:`per_position_kl_mc`: ``(num_samples, T)``."""
    if estimator not in ("full", "sampled"):
        raise InputError(f"estimator={estimator!r}; use 'full' or 'sampled'")
    responses = sample(key, policy, params, num_samples, prompt)
    return np.asarray(
        _kl_terms(
            policy, params, ref_policy, ref_params, responses, prompt, full=estimator == "full"
        )
    )


@functools.partial(jax.jit, static_argnames=("policy", "ref_policy", "full"))
def _kl_terms(policy, params, ref_policy, ref_params, responses, prompt, *, full):
    logp = jax.nn.log_softmax(policy.teacher_forced_logits(params, responses, prompt), axis=-1)
    logq = jax.nn.log_softmax(
        ref_policy.teacher_forced_logits(ref_params, responses, prompt), axis=-1
    )
    if full:
        return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    picked = responses[..., None]
    return (jnp.take_along_axis(logp, picked, -1) - jnp.take_along_axis(logq, picked, -1))[..., 0]


def reinforce_grads(
    key: jax.Array,
    policy: Policy,
    params,
    harm_fn: HarmFn,
    num_samples: int,
    *,
    baseline: str | Callable | None = None,
    num_batches: int = 32,
    prompt=0,
    level: float = 0.95,
):
    """REINFORCE estimates of ``g_t = ∇_θ E[h]`` restricted to position ``t`` (THEORY.md T10).

    ``ĝ_t = mean_i (h(y^i) - b_t(y^i_<t)) ∇_θ log π_θ(y^i_t | y^i_<t)``. The ``num_samples``
    responses are split into ``num_batches`` independent batches; the interval comes from the
    batch means (Student t with ``num_batches - 1`` degrees of freedom).

    Args:
      baseline: None (plain ``h s_t``); ``"batch_mean"`` (leave-one-out mean of ``h`` within the
        batch, unbiased); or a callable ``responses (n, T) -> b (n, T)`` with ``b[:, t-1]``
        depending on ``y_<t`` only (e.g. :func:`table_baseline` for the exact ``H_{t-1}``).

    Returns:
      ``(estimates, harms)``: a pytree like ``params`` whose leaves are :class:`Estimate` s with a
      leading axis ``T``, and the sampled harms ``(n,)``.
    """
    per_batch, harms = reinforce_batch_grads(
        key,
        policy,
        params,
        harm_fn,
        num_samples,
        baseline=baseline,
        num_batches=num_batches,
        prompt=prompt,
    )
    estimates = jax.tree_util.tree_map(lambda g: t_interval(np.asarray(g), level), per_batch)
    return estimates, harms


def reinforce_batch_grads(
    key: jax.Array,
    policy: Policy,
    params,
    harm_fn: HarmFn,
    num_samples: int,
    *,
    baseline: str | Callable | None = None,
    num_batches: int = 32,
    prompt=0,
):
    """The independent batch means behind :func:`reinforce_grads`: a pytree of ``(B, T, ...)``
    leaves, and the sampled harms ``(n,)``."""
    if num_samples % num_batches or num_samples // num_batches < 2:
        raise InputError(
            f"num_samples={num_samples} must be a multiple of num_batches="
            f"{num_batches} with at least 2 samples per batch"
        )
    responses = sample(key, policy, params, num_samples, prompt)
    harms = jnp.asarray(harm_fn(responses), jnp.result_type(float))
    size = num_samples // num_batches
    if baseline is None:
        advantage = jnp.broadcast_to(harms[:, None], responses.shape).astype(harms.dtype)
    elif baseline == "batch_mean":
        grouped = harms.reshape(num_batches, size)
        loo = (grouped.sum(axis=1, keepdims=True) - grouped) / (size - 1)
        advantage = jnp.broadcast_to((grouped - loo).reshape(-1)[:, None], responses.shape)
    elif callable(baseline):
        advantage = harms[:, None] - jnp.asarray(baseline(responses), harms.dtype)
    else:
        raise InputError(f"baseline={baseline!r}; use None, 'batch_mean' or a callable")
    per_batch = _batch_grads(
        policy,
        params,
        responses.reshape(num_batches, size, -1),
        advantage.reshape(num_batches, size, -1),
        prompt,
    )
    return per_batch, np.asarray(harms)


@functools.partial(jax.jit, static_argnames=("policy",))
def _batch_grads(policy, params, responses, advantage, prompt):
    """Per batch, ``∇_θ mean_i A_it log π_θ(y_it | y_i<t)`` for every ``t``: ``(B, T, ...)``."""

    def surrogate(p, batch, adv):
        return jnp.mean(adv * policy.token_log_probs(p, batch, prompt), axis=0)  # (T,)

    return jax.vmap(jax.jacrev(surrogate), in_axes=(None, 0, 0))(params, responses, advantage)


def harmful_prefixes(
    key: jax.Array,
    base_policy: Policy,
    base_params,
    harm_fn: HarmFn,
    k: int,
    num_prefixes: int,
    *,
    prompt=0,
    batch: int = 4096,
    max_batches: int = 1000,
) -> jax.Array:
    """``num_prefixes`` i.i.d. draws of ``y_<=k`` from ``q_k = P_π0(y_<=k | h = 1)``.

    Rejection sampling: responses of ``π0`` are accepted with probability ``h(y)`` (exact for soft
    harm too: the accepted ``y`` have law ``π0(y) h(y) / E_π0[h]``).

    Raises:
      InputError: when ``max_batches`` batches yield too few harmful responses (``E_π0[h]`` ~ 0).
    """
    kept, total = [], 0
    for i in range(max_batches):
        key_y, key_u = jax.random.split(jax.random.fold_in(key, i))
        ys = sample(key_y, base_policy, base_params, batch, prompt)
        accept = jax.random.uniform(key_u, (batch,)) < harm_fn(ys)
        chosen = np.asarray(ys)[np.asarray(accept)][:, :k]
        kept.append(chosen)
        total += chosen.shape[0]
        if total >= num_prefixes:
            return jnp.asarray(np.concatenate(kept)[:num_prefixes])
    raise InputError(
        f"only {total} harmful responses in {max_batches * batch} samples of the "
        "base model; E[h] is too small for prefill attacks by sampling"
    )


def prefill_asr_mc(
    key: jax.Array,
    policy: Policy,
    params,
    harm_fn: HarmFn,
    prefixes,
    *,
    prompt=0,
    level: float = 0.95,
) -> Estimate:
    """``ASR_π(k) = E_{y_<=k ~ q_k}[H^π_k(y_<=k)]``: one continuation per forced prefix.

    ``prefixes`` ``(n, k)`` are i.i.d. draws from ``q_k`` (:func:`harmful_prefixes`) or ``n``
    copies of one fixed harmful string. Returns a scalar :class:`Estimate`.
    """
    harms = harm_fn(continue_prefixes(key, policy, params, jnp.asarray(prefixes), prompt))
    return t_interval(np.asarray(harms), level)


# -- exact baselines ----------------------------------------------------------------------------
def table_baseline(cond_harm, vocab_size: int) -> Callable:
    """``b_t(y_<t) = H_{t-1}(y_<t)`` from the tree engine's tables ``H_0 ... H_T``."""
    tables = [jnp.asarray(h) for h in cond_harm]

    def baseline(responses):
        rows = jnp.zeros(responses.shape[:1], jnp.int64)
        cols = []
        for t in range(responses.shape[1]):
            cols.append(
                point(
                    "montecarlo.baseline",
                    tables[t][rows],
                    t=t,
                    tables=tables,
                    rows=rows,
                    tokens=responses[:, t],
                )
            )
            rows = rows * vocab_size + responses[:, t]
        return jnp.stack(cols, axis=1)

    return baseline


def markov_baseline(cond_harm, dfa: Automaton) -> Callable:
    """``b_t(y_<t) = H_{t-1}(c, s)`` from the DP engine's ``(T+1, C, S)`` table (order >= 1)."""
    table = jnp.asarray(cond_harm)
    contexts = table.shape[1]
    trans = jnp.asarray(dfa.transitions)
    vocab_size = trans.shape[1]

    def baseline(responses):
        def step(carry, tokens_t):
            context, state, t = carry
            value = table[t, context, state]
            return (
                (context * vocab_size + tokens_t) % contexts,
                trans[state, tokens_t],
                t + 1,
            ), value

        init = (
            jnp.zeros(responses.shape[:1], jnp.int64),
            jnp.full(responses.shape[:1], dfa.start, trans.dtype),
            0,
        )
        _, values = jax.lax.scan(step, init, jnp.asarray(responses).T)
        return values.T

    return baseline
