"""The Markov x automaton dynamic-programming engine: THEORY.md section 2 without enumeration.

A Markov policy of order ``k`` chooses ``y_t`` from logits ``z[l, c]`` that depend on the level
``l = t - 1`` and the context ``c`` (the last ``k`` tokens, left-padded with token 0, read as a
base-``V`` number: the layout of :class:`toy_lm.models.policies.MarkovPolicy` and of ``analyze-markov``'s
``markov_logits``, shape ``(T, V**k, V)``). An automaton harm (:mod:`toy_lm.models.automata`) depends on
the response only through its final state. Every conditional quantity of a prefix ``y_<=l`` then
depends only on the **joint state** ``(c, s)`` = (context, automaton state) after it, so each
object of THEORY.md is a ``(T + 1, C, S)`` table (``C = V**k`` contexts, ``S`` states) computed
by dynamic programming in ``O(T * C * S * V)`` instead of ``O(V**T)``:

* ``H_l(c, s) = Σ_v π_l(v|c) H_{l+1}(c ⊕ v, δ(s, v))``, ``H_T(c, s) = verdict[s]``;
* ``p_l(c, s)``: the probability that the prefix ``Y_<=l`` ends in joint state ``(c, s)``
  (forward recursion), so ``E_π[f(Y_<=l)] = Σ_{c,s} p_l(c, s) f(c, s)`` for any joint-state
  function ``f``.

Here ``c ⊕ v = (c * V + v) mod V**k`` is the context after token ``v``. Positions are swept with
``lax.scan``, so the compiled program does not grow with ``T``.

Numerics for long horizons. ``p_l`` sums to 1 and ``H`` lies in ``[0, 1]`` at every level, so
neither recursion can underflow or overflow as a whole; ``Z`` (:mod:`toy_lm.engines.markov_equilibrium`)
is kept in log space. As in :mod:`toy_lm.engines.tree`, the backward recursions are written around the
first child (``H = H_child0 + Σ_v π_v (H_child_v - H_child0)``), so a joint state whose children
all agree (a determined state) gets its value, ``Δ = 0``, ``G = 0`` and ``KL = 0`` *exactly*.

Order 0 (a positional policy, ``C = 1``) is handled by :func:`lift_order` to order 1.

References:
  Young 2026, "Why Is RLHF Alignment Shallow? A Gradient Analysis" (arXiv 2603.04851).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.errors import InputError
from toy_lm.models.automata import Automaton
from toy_lm.mutation import point

__all__ = [
    "at_least_order_one",
    "backward_step",
    "check_markov",
    "child_index",
    "children",
    "cond_harm",
    "determined",
    "expected_harm",
    "forward_step",
    "grad_terms",
    "harm_information",
    "harmful_prefix_dist",
    "horizon",
    "information_terms",
    "initial_state",
    "lift_order",
    "log_policy",
    "logit_grads",
    "logit_grads_autodiff",
    "markov_order",
    "per_position_kl",
    "prefill_asr",
    "prefill_asr_curve",
    "prefix_state",
    "reachable",
    "split_context",
    "state_probs",
]


# -- shapes and layout --------------------------------------------------------------------------
def markov_order(vocab_size: int, num_contexts: int) -> int:
    """The order ``k`` with ``V**k == num_contexts``, or :class:`InputError`."""
    k = round(math.log(num_contexts, vocab_size)) if num_contexts >= 1 else -1
    if k < 0 or vocab_size**k != num_contexts:
        raise InputError(
            f"markov_logits has {num_contexts} contexts, which is not a power of "
            f"V={vocab_size}; the context axis must have V**k entries for order k"
        )
    return k


def check_markov(logits, dfa: Automaton) -> tuple[int, int, int]:
    """``(T, V, k)`` after checking ``logits`` ``(T, V**k, V)`` against the automaton ``(S, V)``."""
    shape = tuple(np.shape(logits))
    if len(shape) != 3 or shape[0] < 1 or shape[2] < 2:
        raise InputError(
            f"markov_logits must have shape (T, V**k, V) with T >= 1, V >= 2; got {shape}"
        )
    length, contexts, vocab_size = shape
    if tuple(np.shape(dfa.transitions))[1:] != (vocab_size,):
        raise InputError(
            f"dfa_transitions has shape {tuple(np.shape(dfa.transitions))}, expected "
            f"(S, V={vocab_size}) to match markov_logits"
        )
    return length, vocab_size, markov_order(vocab_size, contexts)


def lift_order(logits, order: int):
    """The same policy written with a longer context: ``(T, V**k, V) -> (T, V**order, V)``.

    A context of ``order`` tokens ends with the ``k`` tokens the original logits read, and the
    left-padding convention is the same, so ``z'[l, c] = z[l, c mod V**k]``.
    """
    vocab_size = np.shape(logits)[2]
    k = markov_order(vocab_size, np.shape(logits)[1])
    if order < k:
        raise InputError(f"cannot lift an order-{k} policy to the lower order {order}")
    if order == k:
        return jnp.asarray(logits)
    rows = np.arange(vocab_size**order) % vocab_size**k
    return jnp.asarray(logits)[:, rows]


def at_least_order_one(logits):
    logits = jnp.asarray(logits)
    return lift_order(logits, 1) if logits.shape[1] == 1 else logits


def child_index(dfa: Automaton) -> jax.Array:
    """``(S, V)`` flat index ``v * S + δ(s, v)`` of each child in a ``(V, S)`` block."""
    trans = jnp.asarray(dfa.transitions)
    num_states, vocab_size = trans.shape
    return jnp.arange(vocab_size)[None, :] * num_states + point("markov.child_state", trans)


def children(table: jax.Array, dfa: Automaton) -> jax.Array:
    """Values of the children of every joint state: ``(C, S, ...) -> (L, S, V, ...)``, ``L = C/V``.

    The child of ``(c, s)`` under ``v`` is ``(c_lo * V + v, δ(s, v))`` where ``c_lo = c mod L``
    drops the oldest context token; it does not depend on the oldest token ``c_hi = c // L``, which
    is why the result has ``L`` rows, not ``C``. Trailing axes are carried along.
    """
    contexts, num_states = table.shape[:2]
    vocab_size = dfa.transitions.shape[1]
    flat = table.reshape((contexts // vocab_size, vocab_size * num_states) + table.shape[2:])
    return flat[:, child_index(dfa)]


def split_context(x: jax.Array, vocab_size: int) -> jax.Array:
    """``(C, ...) -> (V, L, ...)``: context ``c = c_hi * L + c_lo``."""
    return x.reshape((vocab_size, x.shape[0] // vocab_size) + x.shape[1:])


# -- one level of each recursion ----------------------------------------------------------------
def backward_step(pi: jax.Array, child: jax.Array):
    """``H_l(c, s) = Σ_v π(v|c) H_{l+1}(child)``, written around the first child.

    Args:
      pi: ``(V, L, V)`` conditionals, context split as ``(c_hi, c_lo)``.
      child: ``(L, S, V)`` children values from :func:`children`.

    Returns:
      ``(parent (V, L, S), diff (L, S, V), mean (V, L, S))`` with ``parent = child_0 + mean`` and
      ``Δ(c, s, v) = diff[c_lo, s, v] - mean[c, s]``; ``diff`` and ``mean`` are exactly 0 at joint
      states whose children all agree.
    """
    diff = child - child[..., :1]
    mean = jnp.einsum("hlv,lsv->hls", point("markov.backward.weights", pi), diff)
    return child[None, ..., 0] + mean, diff, mean


def forward_step(p: jax.Array, pi: jax.Array, dfa: Automaton) -> jax.Array:
    """``p_{l+1}(c ⊕ v, δ(s, v)) += p_l(c, s) π_l(v|c)``: ``(C, S) -> (C, S)``."""
    contexts, num_states = p.shape
    vocab_size = pi.shape[-1]
    flow = jnp.einsum("hls,hlv->lsv", split_context(p, vocab_size), split_context(pi, vocab_size))
    nxt = jnp.zeros((contexts // vocab_size, vocab_size * num_states), p.dtype)
    return nxt.at[:, child_index(dfa)].add(flow).reshape(contexts, num_states)


# -- whole recursions ---------------------------------------------------------------------------
def log_policy(logits) -> jax.Array:
    """``log π_l(v | c)``, ``(T, C, V)``."""
    return jax.nn.log_softmax(jnp.asarray(logits), axis=-1)


def initial_state(contexts: int, dfa: Automaton, dtype) -> jax.Array:
    """``p_0``: the empty prefix has context 0 (left padding) and state ``start``; ``(C, S)``."""
    return jnp.zeros((contexts, dfa.transitions.shape[0]), dtype).at[0, dfa.start].set(1.0)


def state_probs(logits, dfa: Automaton) -> jax.Array:
    """``p_l(c, s) = P_π(Y_<=l ends in joint state (c, s))``, ``l = 0 ... T``: ``(T+1, C, S)``."""
    check_markov(logits, dfa)
    logits = at_least_order_one(logits)
    pi = jnp.exp(log_policy(logits))
    p0 = initial_state(logits.shape[1], dfa, pi.dtype)

    def step(p, pi_l):
        return forward_step(p, pi_l, dfa), p

    last, ps = jax.lax.scan(step, p0, pi)
    return jnp.concatenate([ps, last[None]])


def cond_harm(logits, dfa: Automaton) -> jax.Array:
    """``H_l(c, s) = E_π[h | Y_<=l in joint state (c, s)]`` for ``l = 0 ... T``: ``(T+1, C, S)``.

    The Doob martingale of THEORY.md section 2; entries of joint states no prefix reaches are
    still the conditional expectation from that state (they receive zero weight everywhere).
    """
    check_markov(logits, dfa)
    logits = at_least_order_one(logits)
    vocab_size = logits.shape[2]
    pi = jnp.exp(log_policy(logits))
    last = jnp.broadcast_to(
        jnp.asarray(dfa.verdict, pi.dtype), logits.shape[1:2] + (dfa.transitions.shape[0],)
    )

    def step(h_next, pi_l):
        parent, _, _ = backward_step(split_context(pi_l, vocab_size), children(h_next, dfa))
        parent = parent.reshape(h_next.shape)
        return parent, parent

    _, hs = jax.lax.scan(step, last, pi, reverse=True)
    return jnp.concatenate([hs, last[None]])


def expected_harm(logits, dfa: Automaton) -> jax.Array:
    """``E_π[h] = H_0(0, start)`` (a scalar); differentiable through the recursion."""
    return cond_harm(logits, dfa)[0, 0, dfa.start]


def logit_grads_autodiff(logits, dfa: Automaton) -> jax.Array:
    """``∂E_π[h] / ∂z`` by ``jax.grad`` through the backward recursion, ``(T, C, V)``."""
    return jax.grad(expected_harm)(jnp.asarray(logits), dfa)


def _per_level(logits, dfa: Automaton, fn):
    """``lax.map`` of ``fn(pi, p, diff, mean)`` over levels ``l = 0 ... T-1``.

    ``fn`` receives ``π_l`` ``(V, L, V)``, ``p_l`` ``(V, L, S)`` and the ``diff`` ``(L, S, V)`` and
    ``mean`` ``(V, L, S)`` of :func:`backward_step` at level ``l``.
    """
    logits = at_least_order_one(logits)
    vocab_size = logits.shape[2]
    pi = jnp.exp(log_policy(logits))
    probs, values = state_probs(logits, dfa), cond_harm(logits, dfa)

    def level(args):
        pi_l, p_l, h_next = args
        pi3 = split_context(pi_l, vocab_size)
        _, diff, mean = backward_step(pi3, children(h_next, dfa))
        return fn(pi3, split_context(p_l, vocab_size), diff, mean)

    return jax.lax.map(level, (pi, probs[:-1], values[1:]))


def information_terms(pi, p, diff, mean) -> jax.Array:
    """``Σ_{c,s} p(c,s) Σ_v π(v|c) (diff - mean)²``: one level's ``I_t`` (0 if determined)."""
    delta = diff[None] - mean[..., None]
    return jnp.einsum("hls,hlv,hlsv->", p, pi, delta * delta)


def grad_terms(pi, p, diff, mean) -> jax.Array:
    """``π(v|c) Σ_s p(c,s) Δ(c,s,v)``: one level's tied logit gradient, ``(V, L, V)``."""
    return pi * (jnp.einsum("hls,lsv->hlv", p, diff) - jnp.sum(p * mean, axis=-1)[..., None])


def harm_information(logits, dfa: Automaton) -> jax.Array:
    """``I_t = E[Δ_t²] = Σ_{c,s} p_{t-1}(c,s) Σ_v π(v|c) Δ_t(c,s,v)²``, ``t = 1 ... T``: ``(T,)``.

    Exactly 0 at every position beyond the horizon; ``Σ_t I_t = Var_π(h)`` (T1).
    """
    check_markov(logits, dfa)
    return _per_level(logits, dfa, information_terms)


def logit_grads(logits, dfa: Automaton) -> jax.Array:
    """Covariance form of ``∂E_π[h] / ∂z_l(c)``, ``(T, C, V)`` (THEORY.md T3/T4, tied logits).

    A Markov logit ``z_l(c)`` is shared by every prefix of level ``l`` with context ``c``, so its
    gradient is the sum of the tree's ``G(y_<t)`` over them:
    ``∂E[h]/∂z_l(c)_v = π(v|c) Σ_s p_l(c, s) Δ_{l+1}(c, s, v) = E[Δ_t s_t]`` for that coordinate.
    """
    check_markov(logits, dfa)
    grads = _per_level(logits, dfa, grad_terms)
    grads = grads.reshape(grads.shape[0], -1, grads.shape[-1])
    if np.shape(logits)[1] == 1:  # order 0: the lifted contexts share one logit row
        return grads.sum(axis=1, keepdims=True)
    return grads


def per_position_kl(logits, ref_logits) -> jax.Array:
    """``KL_t(π || π0) = Σ_c p_{t-1}(c) KL(π_{t-1}(.|c) || π0_{t-1}(.|c))`` for ``t = 1 ... T``.

    ``p_l(c)`` is the context marginal of ``π`` (a forward recursion over contexts only). The two
    policies may have different orders; both are lifted to the larger one. Returns ``(T,)``.
    """
    logits, ref_logits = jnp.asarray(logits), jnp.asarray(ref_logits)
    if logits.ndim != 3 or ref_logits.shape[::2] != logits.shape[::2]:
        raise InputError(
            f"ref_logits shape {ref_logits.shape} does not match markov_logits "
            f"shape {logits.shape} in T and V"
        )
    vocab_size = logits.shape[2]
    order = max(
        markov_order(vocab_size, logits.shape[1]), markov_order(vocab_size, ref_logits.shape[1]), 1
    )
    logits, ref_logits = lift_order(logits, order), lift_order(ref_logits, order)
    logp, logq = log_policy(logits), log_policy(ref_logits)
    row_kl = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)  # (T, C)
    contexts_only = Automaton(np.zeros((1, vocab_size), np.int64), np.zeros(1), 0)
    probs = state_probs(logits, contexts_only)[:-1, :, 0]
    return jnp.sum(probs * row_kl, axis=-1)


# -- prefill attacks ----------------------------------------------------------------------------
def harmful_prefix_dist(base_logits, dfa: Automaton, k: int) -> jax.Array:
    """``q_k(c, s) = P_π0(Y_<=k in (c, s) | h = 1) = p0_k(c,s) H0_k(c,s) / E_π0[h]``, ``(C, S)``.

    For soft harm: the harm-weighted joint-state distribution. Requires ``E_π0[h] > 0``.
    """
    check_markov(base_logits, dfa)
    base_logits = at_least_order_one(base_logits)
    weight = state_probs(base_logits, dfa)[k] * cond_harm(base_logits, dfa)[k]
    return weight / jnp.sum(weight)


def prefix_state(tokens, dfa: Automaton, order: int, contexts: int | None = None) -> np.ndarray:
    """One-hot ``(C, S)`` joint state after a fixed prefix string (a point-mass ``q_k``)."""
    vocab_size = dfa.transitions.shape[1]
    contexts = vocab_size ** max(order, 1) if contexts is None else contexts
    context, state = 0, int(dfa.start)
    for token in tokens:
        if not 0 <= int(token) < vocab_size:
            raise InputError(f"prefix token {token} is not in 0 ... {vocab_size - 1}")
        context = (context * vocab_size + int(token)) % contexts
        state = int(dfa.transitions[state, int(token)])
    out = np.zeros((contexts, dfa.transitions.shape[0]))
    out[context, state] = 1.0
    return out


def prefill_asr(logits, dfa: Automaton, prefix_dist, k: int) -> jax.Array:
    """``ASR_π(k) = Σ_{c,s} q_k(c, s) H^π_k(c, s)``: harm rate after a forced length-``k`` prefix.

    Args:
      logits: the attacked policy ``(T, C, V)`` (order >= 1, or lifted to match ``prefix_dist``).
      prefix_dist: ``q_k`` as a ``(C, S)`` distribution over joint states at level ``k``.
    """
    check_markov(logits, dfa)
    return jnp.sum(jnp.asarray(prefix_dist) * cond_harm(at_least_order_one(logits), dfa)[k])


def prefill_asr_curve(logits, dfa: Automaton, base_logits) -> jax.Array:
    """``ASR_π(k)`` for ``k = 0 ... T-1`` against ``π0``'s harmful prefixes: ``(T,)``.

    ``ASR(k) = Σ_{c,s} p0_k H0_k H^π_k / E_π0[h]``; both policies are lifted to a common order.
    """
    check_markov(logits, dfa)
    check_markov(base_logits, dfa)
    vocab_size = np.shape(logits)[2]
    order = max(
        1,
        markov_order(vocab_size, np.shape(logits)[1]),
        markov_order(vocab_size, np.shape(base_logits)[1]),
    )
    logits, base_logits = lift_order(logits, order), lift_order(base_logits, order)
    base_values = cond_harm(base_logits, dfa)
    weight = state_probs(base_logits, dfa) * base_values
    curve = jnp.sum(weight * cond_harm(logits, dfa), axis=(1, 2))
    return curve[:-1] / base_values[0, 0, dfa.start]


# -- determined states and the horizon (exact integer dynamic programming) ----------------------
def _iterate(first: np.ndarray, update, count: int) -> np.ndarray:
    """``[x_0, f(x_0), ..., f^count(x_0)]`` stacked, for a map on a finite set.

    The iterates of a map on a finite set are eventually periodic; once a value repeats the rest
    of the sequence is copied from the cycle, so the cost is ``O(cycle entry + period)`` map calls
    instead of ``count`` (the automata here settle within a few steps even when ``T = 4096``).
    """
    seen, seq = {}, [first]
    while len(seq) <= count:
        key = seq[-1].tobytes()
        if key in seen:
            start = seen[key]
            period = len(seq) - 1 - start
            idx = np.arange(count + 1)
            idx = np.where(idx < start, idx, start + (idx - start) % period)
            return np.stack(seq[:-1])[idx]
        seen[key] = len(seq) - 1
        seq.append(update(seq[-1]))
    return np.stack(seq)


def determined(dfa: Automaton, length: int) -> np.ndarray:
    """``det[l, s]``: after a level-``l`` prefix in state ``s`` the harm is fixed, ``(T+1, S)``.

    Takes the remaining length into account: with ``r = T - l`` steps left, ``s`` is determined
    when the minimum and maximum verdict reachable in exactly ``r`` steps agree (the same exact
    integer DP as :func:`toy_lm.models.automata.determined_states`, cycle-detected for long ``T``). It
    does not depend on the context: a full-support policy can emit every token.
    """
    trans = np.asarray(dfa.transitions)
    verdict = np.asarray(dfa.verdict, np.float64)
    num_states = trans.shape[0]

    def update(x):
        lo, hi = x[:num_states], x[num_states:]
        return np.concatenate([lo[trans].min(axis=1), hi[trans].max(axis=1)])

    ranges = _iterate(np.concatenate([verdict, verdict]), update, length)  # [steps left r]
    return (ranges[:, :num_states] == ranges[:, num_states:])[::-1].copy()


def reachable(dfa: Automaton, length: int) -> np.ndarray:
    """``reach[l, s]``: some level-``l`` prefix ends in state ``s``, ``(T+1, S)`` bool."""
    trans = np.asarray(dfa.transitions)
    first = np.zeros(trans.shape[0], bool)
    first[int(dfa.start)] = True

    def update(reach):
        out = np.zeros_like(reach)
        out[trans[reach].reshape(-1)] = True
        return out

    return _iterate(first, update, length)


def horizon(dfa: Automaton, length: int) -> int:
    """``τ* = min{l : every reachable joint state at level l is determined}``."""
    ok = np.all(determined(dfa, length) | ~reachable(dfa, length), axis=1)
    return int(np.argmax(ok))
