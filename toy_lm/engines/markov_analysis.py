"""The full Markov x automaton analysis in one scan (what ``harm-horizon analyze-markov`` runs).

:mod:`toy_lm.engines.markov` states each quantity as its own function, each re-running the recursions it
needs and summing per joint state. :func:`analyze_markov` is the fast path: one ``lax.scan`` of
``T`` steps advances the forward recursion (``p_l``) at level ``i`` and the backward ones
(``H_l`` and ``log Z_l``) at level ``T-1-i`` together (they do not depend on each other), and the
per-position sums then come from martingale identities over whole levels, with no per-token work:

* ``I_t = E[Δ_t²] = E[H_t²] - E[H_{t-1}²]`` (orthogonal increments), ``E[H_l²] = Σ p_l H_l²``;
* ``KL_t(π*_λ || π) = E_{π*}[log Z_t] - E_{π*}[log Z_{t-1}]``, because
  ``log π*(v|u) - log π(v|u) = log Z_t(uv) - log Z_{t-1}(u)``, with the joint-state law of
  ``π*_λ`` at level ``l`` equal to ``p_l Z_l / Z_0``.

Both are set to exactly 0 at the positions beyond the horizon, where every reachable joint state
is determined (an exact integer fact about the automaton), instead of keeping the ``~1e-17``
rounding residue of a difference. The tests check these identities against the per-joint-state
forms of :mod:`toy_lm.engines.markov` at ``T = 4096`` and both against the tree engine.

Compile time does not depend on ``T`` (one scan body); the level sums run in numpy, which costs
less than compiling them.

:func:`expand_to_tree` maps the joint-state tables back to the canonical prefix-tree tables
(THEORY.md section 1), for comparison with the exact tree engine.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.bounds import check_concrete_lam
from toy_lm.compile_options import compiler_options
from toy_lm.engines import markov, markov_equilibrium
from toy_lm.errors import InputError
from toy_lm.models.automata import Automaton, level_states, make_automaton
from toy_lm.mutation import point

__all__ = [
    "MarkovAnalysis",
    "aggregate_tree_grads",
    "analyze_markov",
    "compiled_program",
    "expand_to_tree",
    "joint_states",
    "markov_scan",
]


class MarkovAnalysis(NamedTuple):
    """Everything ``analyze-markov`` computes (levels ``l = 0 ... T``; positions ``t = l + 1``).

    Attributes:
      expected_harm: ``E_π[h]``, a float.
      cond_harm: ``H_l(c, s)``, ``(T+1, C, S)``.
      state_probs: ``p_l(c, s)``, ``(T+1, C, S)``.
      determined: ``det[l, s]``, ``(T+1, S)`` bool (remaining length taken into account).
      horizon: ``τ*``, an int.
      harm_information: ``I_t``, ``(T,)``.
      logit_grads: ``∂E_π[h]/∂z_l(c)`` (covariance form) ``(T, C, V)``, or None unless asked.
      log_partition: ``log Z_l(c, s)`` ``(T+1, C, S)``, or None without ``lam``.
      equilibrium_kl: ``KL_t(π*_λ || π)`` ``(T,)``, or None without ``lam``.
      equilibrium_harm: ``E_{π*_λ}[h]``, or None without ``lam``.
      per_position_kl: ``KL_t(π || π_ref)`` ``(T,)``, or None without a reference.
    """

    expected_harm: float
    cond_harm: np.ndarray
    state_probs: np.ndarray
    determined: np.ndarray
    horizon: int
    harm_information: np.ndarray
    logit_grads: np.ndarray | None
    log_partition: np.ndarray | None
    equilibrium_kl: np.ndarray | None
    equilibrium_harm: float | None
    per_position_kl: np.ndarray | None


def markov_scan(logits, dfa, lam, *, with_lam: bool, scaled: bool):
    """One bidirectional scan: ``(p, p_T, H, log Z)``, the last two in reverse level order.

    Scan step ``i`` advances ``p`` from level ``i`` to ``i+1`` and finishes ``H`` and ``log Z`` at
    level ``T-1-i``. Conditionals are computed from the logits inside the step (each level's
    softmax twice), which is cheaper here than writing and re-reading a ``(T, C, V)`` table.
    """
    length, contexts, vocab_size = logits.shape
    num_states = dfa.transitions.shape[0]
    unscaled = with_lam and not scaled
    split = functools.partial(markov.split_context, vocab_size=vocab_size)
    verdict = jnp.broadcast_to(jnp.asarray(dfa.verdict, logits.dtype), (contexts, num_states))

    def step(carry, level):
        p, h_next, logz_next = carry
        pi_fwd = jax.nn.softmax(logits[level], axis=-1)
        z_bwd = logits[length - 1 - level]
        if with_lam and scaled:  # H and the scaled partition sum in one matrix product
            both = markov.children(jnp.stack([h_next, logz_next], axis=-1), dfa)
            child, child_logz = both[..., 0], both[..., 1]
            top = jnp.max(child_logz, axis=-1, keepdims=True)
            rhs = jnp.concatenate([child - child[..., :1], jnp.exp(child_logz - top)], axis=1)
            pi3 = point("markov.backward.weights", split(jax.nn.softmax(z_bwd, axis=-1)))
            mean, sigma = jnp.split(jnp.einsum("hlv,lsv->hls", pi3, rhs), 2, axis=2)
            h = child[None, ..., 0] + mean
            constant = jnp.all(child_logz == top, axis=-1)[None]
            logz_next = jnp.where(constant, top[None, ..., 0], top[None, ..., 0] + jnp.log(sigma))
        else:
            logp3 = split(jax.nn.log_softmax(z_bwd, axis=-1))
            h, _, _ = markov.backward_step(jnp.exp(logp3), markov.children(h_next, dfa))
            if unscaled:
                logz_next, _ = markov_equilibrium.log_partition_step(
                    logp3, markov.children(logz_next, dfa), scaled=False
                )
        h = h.reshape(contexts, num_states)
        logz_next = logz_next.reshape(contexts, num_states)
        return (markov.forward_step(p, pi_fwd, dfa), h, logz_next), (p, h, logz_next)

    init = (markov.initial_state(contexts, dfa, logits.dtype), verdict, -verdict / lam)
    (last_p, _, _), (probs, values, logz) = jax.lax.scan(step, init, jnp.arange(length))
    return probs, last_p, values, logz


def _level_sums(probs, last_p, values, logz, verdict, lam, beyond) -> dict:
    """Assemble level-ordered tables from the scan and take the level sums, in numpy.

    (numpy here costs less than compiling the same few whole-array operations with XLA.)
    """
    length = probs.shape[0]
    table = np.empty((length + 1,) + probs.shape[1:], probs.dtype)
    table[:length], table[length] = probs, last_p
    probs = table
    table = np.empty_like(probs)
    table[:length], table[length] = values[::-1], verdict
    values = table

    def differences(level_means):  # m_t - m_{t-1}, exactly 0 beyond the horizon
        return np.where(beyond, 0.0, np.diff(level_means))

    second = np.einsum("lcs,lcs->l", probs * values, values)
    out = dict(
        cond_harm=values, state_probs=probs, harm_information=np.maximum(differences(second), 0.0)
    )
    if lam is not None:
        table = np.empty_like(probs)
        table[:length], table[length] = logz[::-1], -verdict / lam
        logz = table
        with np.errstate(divide="ignore"):
            mass = np.log(probs)  # log of the tilted law p_l Z_l / Z_0, per level
        mass += logz
        mass -= np.max(mass, axis=(1, 2), keepdims=True)
        np.exp(mass, out=mass)
        total = np.sum(mass, axis=(1, 2))
        out.update(
            log_partition=logz,
            equilibrium_kl=differences(np.einsum("lcs,lcs->l", mass, logz) / total),
            equilibrium_harm=float(np.sum(mass[-1] * verdict) / total[-1]),
        )
    return out


@functools.cache
def compiled_program(fn, backend: str, static=()):
    return jax.jit(fn, static_argnames=static, compiler_options=compiler_options(backend))


@jax.jit
def _grads(logits, probs, values, dfa):
    """Tied logit gradients (covariance form of :func:`toy_lm.engines.markov.grad_terms`), all levels."""
    length, contexts, vocab_size = logits.shape
    pi = jax.nn.softmax(logits, axis=-1)
    pi4 = pi.reshape(length, vocab_size, -1, vocab_size)
    p4 = probs.reshape(length, vocab_size, -1, probs.shape[-1])
    child = jax.vmap(markov.children, in_axes=(0, None))(values, dfa)
    diff = child - child[..., :1]
    mean = jnp.einsum("thlv,tlsv->thls", pi4, diff)
    weighted = jnp.einsum("thls,tlsv->thlv", p4, diff) - jnp.sum(p4 * mean, axis=-1)[..., None]
    return pi * weighted.reshape(length, contexts, vocab_size)


@jax.jit
def _reference_kl(logits, ref_logits, probs):
    """``KL_t(π || π_ref) = Σ_c p_{t-1}(c) KL(π(.|c) || π_ref(.|c))``."""
    logp, logq = markov.log_policy(logits), markov.log_policy(ref_logits)
    row_kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    return jnp.sum(jnp.sum(probs, axis=-1) * row_kl, axis=-1)


def analyze_markov(
    logits,
    dfa: Automaton,
    *,
    lam: float | None = None,
    ref_logits=None,
    logit_grads: bool = False,
    dtype=None,
) -> MarkovAnalysis:
    """Run the complete dynamic-programming analysis of a Markov policy and an automaton harm.

    Args:
      logits: ``(T, V**k, V)`` Markov logits (``k >= 0``; order 0 is lifted to order 1).
      dfa: the automaton harm.
      lam: KL weight ``λ > 0`` of ``π*_λ``; None skips the equilibrium.
      ref_logits: optional reference Markov logits ``(T, V**k', V)`` for ``KL_t(π || π_ref)``.
      logit_grads: also compute the tied logit gradients ``(T, C, V)`` (covariance form).
      dtype: floating dtype of the computation (default JAX's default float, float64 under x64).
        float32 is for GPUs; its error grows like ``eps(float32) * T * V²`` (see the tests).

    Returns:
      A :class:`MarkovAnalysis` of numpy arrays (context axis of the common lifted order).

    Example:
      >>> import numpy as np
      >>> from toy_lm.models.automata import pattern_harm
      >>> res = analyze_markov(np.zeros((3, 2, 2)), pattern_harm(2, [1]))
      >>> round(res.expected_harm, 6), res.horizon
      (0.875, 3)
    """
    length, vocab_size, order = markov.check_markov(logits, dfa)
    dfa = make_automaton(dfa.transitions, dfa.verdict, dfa.start)
    for name, table in (("markov_logits", logits), ("ref_logits", ref_logits)):
        if table is not None and not np.all(np.isfinite(np.asarray(table))):
            raise InputError(
                f"{name} has non-finite entries (NaN or inf); logits must be finite "
                "(use a large negative number, e.g. -30, for a near-zero probability)"
            )
    if lam is not None:
        check_concrete_lam(lam)
    order = max(order, 1)
    if ref_logits is not None:
        _, _, ref_order = markov.check_markov(ref_logits, dfa)
        if np.shape(ref_logits)[0] != length:
            raise InputError(
                f"ref_logits has T={np.shape(ref_logits)[0]}, expected T={length} "
                "as in markov_logits"
            )
        order = max(order, ref_order)
        ref_logits = markov.lift_order(ref_logits, order)
    dtype = np.dtype(jnp.result_type(float) if dtype is None else dtype)
    if isinstance(logits, jax.Array):
        logits = logits.astype(dtype)
    else:  # device_put: one copy of a numpy input (jnp.asarray makes two, ~0.1 s at 128 MB)
        logits = jax.device_put(np.asarray(logits, dtype))
    logits = markov.lift_order(logits, order)
    det, tau = markov.determined(dfa, length), markov.horizon(dfa, length)
    scaled = lam is not None and markov_equilibrium.scaling_is_safe(lam, vocab_size, dtype)
    core = compiled_program(markov_scan, jax.default_backend(), ("with_lam", "scaled"))
    scanned = core(
        logits,
        dfa,
        jnp.asarray(1.0 if lam is None else lam, dtype),
        with_lam=lam is not None,
        scaled=scaled,
    )
    verdict = np.broadcast_to(dfa.verdict.astype(dtype), scanned[0].shape[1:])
    out = _level_sums(
        *(np.asarray(x) for x in scanned), verdict, lam, np.arange(1, length + 1) > tau
    )
    if logit_grads:
        out["logit_grads"] = np.asarray(
            _grads(logits, out["state_probs"][:-1], out["cond_harm"][1:], dfa)
        )
    if ref_logits is not None:
        out["per_position_kl"] = np.asarray(
            _reference_kl(logits, jnp.asarray(ref_logits, dtype), out["state_probs"][:-1])
        )
    return MarkovAnalysis(
        expected_harm=float(out["cond_harm"][0, 0, dfa.start]),
        cond_harm=out["cond_harm"],
        state_probs=out["state_probs"],
        determined=det,
        horizon=tau,
        harm_information=out["harm_information"],
        logit_grads=out.get("logit_grads"),
        log_partition=out.get("log_partition"),
        equilibrium_kl=out.get("equilibrium_kl"),
        equilibrium_harm=out.get("equilibrium_harm"),
        per_position_kl=out.get("per_position_kl"),
    )


def joint_states(dfa: Automaton, contexts: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """``(context, state)`` of every level-``level`` prefix in canonical order, each ``(V**l,)``.

    The context of row ``i`` is ``i mod V**k`` (the last ``k`` tokens, left-padded with 0).
    """
    vocab_size = dfa.transitions.shape[1]
    rows = np.arange(vocab_size**level)
    return rows % contexts, level_states(dfa, level)[level]


def expand_to_tree(table, dfa: Automaton, levels=None) -> tuple[np.ndarray, ...]:
    """Per-prefix tables from a joint-state table: ``table[l][c, s, ...] -> (V**l, ...)``.

    Args:
      table: ``(L, C, S, ...)`` joint-state values for levels ``0 ... L-1`` (e.g. ``cond_harm``,
        ``log_partition``, :func:`toy_lm.engines.markov.equilibrium_policy`); or ``(L, S)`` per-state
        values such as ``determined`` (the context axis is then absent).
      levels: the levels to expand (default: all ``L``).

    Returns:
      One array per level in canonical prefix order, ready to compare with :mod:`toy_lm.engines.tree`.
    """
    table = np.asarray(table)
    levels = range(table.shape[0]) if levels is None else levels
    out = []
    for level in levels:
        states = level_states(dfa, level)[level]
        if table.ndim == 2:
            out.append(table[level][states])
        else:
            contexts, _ = joint_states(dfa, table.shape[1], level)
            out.append(table[level][contexts, states])
    return tuple(out)


def aggregate_tree_grads(tree_grads, contexts: int) -> np.ndarray:
    """Sum the tree's per-prefix ``G(y_<t)`` over prefixes sharing a context: ``(T, C, V)``.

    This is the gradient with respect to tied Markov logits, to compare with
    :func:`toy_lm.engines.markov.logit_grads` (chain rule: ``z_l(c)`` enters every such prefix).
    """
    out = []
    for g in tree_grads:
        g = np.asarray(g)
        agg = np.zeros((contexts, g.shape[1]), g.dtype)
        np.add.at(agg, np.arange(g.shape[0]) % contexts, g)
        out.append(agg)
    return np.stack(out)
