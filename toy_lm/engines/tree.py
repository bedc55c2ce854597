"""The exact prefix-tree engine: every quantity of THEORY.md section 2 by enumeration.

All functions are pure, jittable (``V`` and ``T`` are read from static shapes) and vectorized by
level: a Python loop runs over the ``T`` levels, never over prefixes. Inputs are the canonical
level tables (``logits[l]`` of shape ``(V**l, V)``, ``l = 0 ... T-1``, unnormalized logits) and the
harm vector ``(V**T,)``; see :mod:`toy_lm.tables` for the layout and the level/position convention.

Exact zeros at determined prefixes. The backward recursion is written as
``H_{l}(u) = c + Σ_v π(v|u) (H_{l+1}(uv) - c)`` with ``c = H_{l+1}(u0)``: when every child has
the same value, the differences are exactly 0.0, so ``H_l(u) = c`` and ``Δ_{l+1}(uv) = 0.0``
exactly, with no rounding residue. Logit gradients, harm information and equilibrium KL inherit
those exact zeros. (A plain ``Σ_v π_v H_v`` would leave ``c * (Σ_v π_v - 1) ~ 1e-16`` there, and
``I_t ~ 1e-34`` beyond the horizon, as THEORY.md section 4 warns.)

References:
  Young 2026, "Why Is RLHF Alignment Shallow? A Gradient Analysis" (arXiv 2603.04851).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from toy_lm.bounds import check_concrete_lam
from toy_lm.mutation import point
from toy_lm.tables import infer_sizes

__all__ = [
    "Tables",
    "backward_step",
    "cond_harm",
    "equilibrium_policy",
    "expected_harm",
    "harm_information",
    "harm_information_mi",
    "harmful_prefix_dist",
    "harmful_prefix_dists",
    "increments",
    "log_partition",
    "log_policy",
    "logit_grads",
    "per_position_kl",
    "prefill_asr",
    "prefill_asr_curve",
    "prefix_probs",
    "response_log_probs",
]

Tables = Sequence[jax.Array]


def log_policy(logits: Tables) -> tuple[jax.Array, ...]:
    """``log π(v | y_<t)`` for every prefix: log-softmax of each level table."""
    infer_sizes(logits)
    return tuple(jax.nn.log_softmax(jnp.asarray(z), axis=-1) for z in logits)


def prefix_probs(logits: Tables) -> tuple[jax.Array, ...]:
    """Prefix probabilities ``P_l(y_<=l) = Π_{s<=l} π(y_s | y_<s)`` for ``l = 0 ... T``.

    Returns:
      ``T + 1`` arrays, ``P_l`` of shape ``(V**l,)``; ``P_0 = [1]``.
    """
    probs = [jnp.ones((1,), jnp.result_type(float))]
    for level, logp in enumerate(log_policy(logits)):
        step = point("tree.prefix_probs.step", probs[-1][:, None] * jnp.exp(logp), level=level)
        probs.append(step.reshape(-1))
    return tuple(probs)


def backward_step(pi: jax.Array, child: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step of ``H_{l}(u) = Σ_v π(v|u) H_{l+1}(uv)`` with exact zeros for constant children.

    Args:
      pi: ``(n, V)`` conditionals ``π(v | u)`` of the level's ``n`` prefixes.
      child: ``(n, V)`` values of the children ``H_{l+1}(uv)``.

    Returns:
      ``(parent (n,), delta (n, V))`` with ``delta = child - parent`` (the increments).
    """
    ref = point("tree.backward.reference", child[:, :1], child=child)
    diff = child - ref
    mean = jnp.sum(point("tree.backward.weights", pi) * diff, axis=1, keepdims=True)
    return (ref + mean)[:, 0], diff - mean


def cond_harm(logits: Tables, harm: jax.Array) -> tuple[jax.Array, ...]:
    """Conditional expected harm ``H_l(y_<=l) = E_π[h | y_<=l]`` for ``l = 0 ... T``.

    The Doob martingale of THEORY.md section 2, by the backward recursion
    ``H_{l-1}(y_<l) = Σ_v π(v | y_<l) H_l(y_<l v)``, ``H_T = h``.

    Returns:
      ``T + 1`` arrays, ``H_l`` of shape ``(V**l,)``; ``H_0[0] = E_π[h]``.
    """
    vocab_size, _ = infer_sizes(logits)
    values = [jnp.asarray(harm)]
    for logp in reversed(log_policy(logits)):
        parent, _ = backward_step(jnp.exp(logp), values[-1].reshape(-1, vocab_size))
        values.append(parent)
    return tuple(reversed(values))


def expected_harm(logits: Tables, harm: jax.Array) -> jax.Array:
    """``E_π[h]`` (a scalar), the root of :func:`cond_harm`."""
    return cond_harm(logits, harm)[0][0]


def increments(logits: Tables, harm: jax.Array) -> tuple[jax.Array, ...]:
    """Martingale increments ``Δ_t = H_t - H_{t-1}`` for positions ``t = 1 ... T``.

    Returns:
      ``T`` arrays; ``Δ_t`` has shape ``(V**t,)`` (one value per prefix ``y_<=t``) and is exactly
      0.0 wherever ``y_<t`` is determined.
    """
    vocab_size, _ = infer_sizes(logits)
    values = cond_harm(logits, harm)
    deltas = []
    for level, logp in enumerate(log_policy(logits)):
        _, delta = backward_step(jnp.exp(logp), values[level + 1].reshape(-1, vocab_size))
        deltas.append(delta.reshape(-1))
    return tuple(deltas)


def logit_grads(logits: Tables, harm: jax.Array) -> tuple[jax.Array, ...]:
    """Closed-form logit gradients of ``E_π[h]`` (THEORY.md T4).

    ``G(y_<t)_v = ∂E_π[h] / ∂z(y_<t)_v = P(y_<t) π(v | y_<t) (H_t(y_<t v) - H_{t-1}(y_<t))``.

    Returns:
      ``T`` arrays shaped like the level tables, ``(V**l, V)``; exactly zero at determined prefixes.
    """
    vocab_size, _ = infer_sizes(logits)
    probs = prefix_probs(logits)
    deltas = increments(logits, harm)
    return tuple(
        point("tree.grads.prefix_weight", probs[level], level=level)[:, None]
        * jnp.exp(logp)
        * deltas[level].reshape(-1, vocab_size)
        for level, logp in enumerate(log_policy(logits))
    )


def harm_information(logits: Tables, harm: jax.Array) -> jax.Array:
    """Harm information ``I_t = E[Δ_t²]`` for ``t = 1 ... T`` (variance form), shape ``(T,)``.

    ``Σ_t I_t = Var_π(h)`` (T1); ``I_t = 0`` exactly for every ``t > τ*``.
    """
    probs = prefix_probs(logits)
    deltas = increments(logits, harm)
    return jnp.stack(
        [
            jnp.sum(point("tree.information.weight", probs[t], level=t) * deltas[t - 1] ** 2)
            for t in range(1, len(deltas) + 1)
        ]
    )


def _bernoulli_kl(p: jax.Array, q: jax.Array) -> jax.Array:
    """``KL(Bern(p) || Bern(q))`` in nats, exactly 0.0 when ``p == q``."""
    return (
        jax.scipy.special.xlogy(p, p)
        - jax.scipy.special.xlogy(p, q)
        + jax.scipy.special.xlogy(1 - p, 1 - p)
        - jax.scipy.special.xlogy(1 - p, 1 - q)
    )


def harm_information_mi(logits: Tables, harm: jax.Array) -> jax.Array:
    """Mutual-information form ``I_t^MI = I(h(Y); Y_t | Y_<t)`` in nats, shape ``(T,)``.

    For binary harm, ``P(h = 1 | y_<=t) = H_t(y_<=t)``, so
    ``I_t^MI = E_{Y_<t}[ Σ_v π(v|Y_<t) KL(Bern(H_t(Y_<t v)) || Bern(H_{t-1}(Y_<t))) ]``.
    The caller is responsible for the harm being binary (see :func:`toy_lm.tables.is_binary`).
    """
    vocab_size, _ = infer_sizes(logits)
    probs = prefix_probs(logits)
    values = cond_harm(logits, harm)
    out = []
    for level, logp in enumerate(log_policy(logits)):
        child = values[level + 1].reshape(-1, vocab_size)
        kl = point("tree.mi.kl", _bernoulli_kl(child, values[level][:, None]))
        out.append(jnp.sum(probs[level][:, None] * jnp.exp(logp) * kl))
    return jnp.stack(out)


def per_position_kl(logits: Tables, ref_logits: Tables) -> jax.Array:
    """``KL_t(π || π0) = E_{Y_<t ~ π}[KL(π(.|Y_<t) || π0(.|Y_<t))]`` for ``t = 1 ... T``.

    Returns:
      ``(T,)``; the sum over ``t`` is the sequence-level ``KL(π || π0)`` (chain rule, T7e).
    """
    infer_sizes(ref_logits, "ref_logits")
    probs = prefix_probs(logits)
    out = []
    for level, pair in enumerate(zip(log_policy(logits), log_policy(ref_logits))):
        logp, logq = point("tree.kl.rows", pair, level=level)
        kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=1)
        out.append(
            jnp.sum(point("tree.kl.weight", probs[level], level=level, ref_logits=ref_logits) * kl)
        )
    return jnp.stack(out)


def response_log_probs(logits: Tables) -> jax.Array:
    """``log π(y)`` for every response, ``(V**T,)`` in canonical order."""
    acc = jnp.zeros((1,), jnp.result_type(float))
    for logp in log_policy(logits):
        acc = (acc[:, None] + logp).reshape(-1)
    return acc


def log_partition(base_logits: Tables, harm: jax.Array, lam) -> tuple[jax.Array, ...]:
    """``log Z_l(y_<=l) = log E_{π0}[exp(-h/λ) | y_<=l]`` for ``l = 0 ... T`` (log space, no underflow)."""
    check_concrete_lam(lam)
    vocab_size, _ = infer_sizes(base_logits)
    values = [point("tree.tilt", -jnp.asarray(harm) / lam)]
    for logp in reversed(log_policy(base_logits)):
        child = values[-1].reshape(-1, vocab_size)
        top = jnp.max(child, axis=1, keepdims=True)
        constant = jnp.all(child == top, axis=1)
        lse = top[:, 0] + jnp.log(jnp.sum(jnp.exp(logp + child - top), axis=1))
        values.append(jnp.where(constant, top[:, 0], lse))
    return tuple(reversed(values))


def equilibrium_policy(base_logits: Tables, harm: jax.Array, lam) -> tuple[jax.Array, ...]:
    """Log-probability tables of ``π*_λ ∝ π0 exp(-h/λ)``, the minimizer of ``E[h] + λ KL(π||π0)``.

    ``log π*_λ(v | y_<t) = log π0(v | y_<t) + log Z_t(y_<t v) - log Z_{t-1}(y_<t)``. At prefixes
    whose children all have the same ``Z`` (determined prefixes) the table equals ``log π0``
    exactly, so ``per_position_kl(eq, log_policy(base_logits))`` is exactly 0 at and beyond the
    horizon (T7b). Against the raw ``base_logits`` it is 0 up to one re-normalization
    (``log_softmax`` of an already normalized row moves it by a few ulp).

    Returns:
      ``T`` tables ``(V**l, V)`` of normalized log-probabilities.
    """
    vocab_size, _ = infer_sizes(base_logits)
    logz = log_partition(base_logits, harm, lam)
    tables = []
    for level, logp in enumerate(log_policy(base_logits)):
        child = point("tree.partition.level", logz[level + 1], level=level, logz=logz)
        child = child.reshape(-1, vocab_size)
        constant = point(
            "tree.equilibrium.constant",
            jnp.all(child == child[:, :1], axis=1, keepdims=True),
            child=child,
        )
        tables.append(jnp.where(constant, logp, logp + child - logz[level][:, None]))
    return tuple(tables)


def harmful_prefix_dist(base_logits: Tables, harm: jax.Array, k: int) -> jax.Array:
    """``q_k(y_<=k) = P_{π0}(y_<=k | h = 1)``: the base model's harmful prefixes of length ``k``.

    For soft harm this is the harm-weighted prefix distribution ``P0(y_<=k) H0_k(y_<=k) / E0[h]``.

    Returns:
      ``(V**k,)`` probabilities summing to 1 (requires ``E_{π0}[h] > 0``).
    """
    return harmful_prefix_dists(base_logits, harm)[k]


def harmful_prefix_dists(base_logits: Tables, harm: jax.Array) -> tuple[jax.Array, ...]:
    """:func:`harmful_prefix_dist` for every ``k = 0 ... T`` at once (``P0`` and ``H0`` computed
    once: a caller that needs several ``q_k`` traces one pass, not one per ``k``)."""
    probs = prefix_probs(base_logits)
    values = cond_harm(base_logits, harm)
    return tuple(
        point("tree.asr.prefix_weight", p * v, level=k, probs=p) / values[0][0]
        for k, (p, v) in enumerate(zip(probs, values))
    )


def prefill_asr(logits: Tables, harm: jax.Array, prefix_dist: jax.Array, k: int) -> jax.Array:
    """``ASR_π(k) = E_{y_<=k ~ q_k}[H^π_k(y_<=k)]``: harm rate after a forced length-``k`` prefix.

    Args:
      logits: the attacked policy's level tables.
      harm: ``(V**T,)``.
      prefix_dist: ``q_k``, ``(V**k,)`` probabilities over forced prefixes.
      k: prefix length, ``0 <= k <= T``.
    """
    return jnp.sum(jnp.asarray(prefix_dist) * cond_harm(logits, harm)[k])


def prefill_asr_curve(logits: Tables, harm: jax.Array, base_logits: Tables) -> jax.Array:
    """``ASR_π(k)`` for ``k = 0 ... T-1`` against the base model's harmful prefixes, ``(T,)``.

    ``q_k`` is :func:`harmful_prefix_dist` of ``base_logits``; ``ASR(0) = E_π[h]``.
    """
    _, length = infer_sizes(logits)
    values = cond_harm(logits, harm)
    base_probs = prefix_probs(base_logits)
    base_values = cond_harm(base_logits, harm)
    return jnp.stack(
        [
            jnp.sum(base_probs[k] * base_values[k] * values[k]) / base_values[0][0]
            for k in range(length)
        ]
    )
