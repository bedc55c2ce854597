"""Brute-force sums over all ``V**T`` responses, written afresh in numpy.

This is the "direct" side of most checks: nothing here calls :mod:`toy_lm.engines.tree`. A quantity
conditional on a prefix is computed from its definition, as a sum over every response that
extends the prefix, e.g. ``H_l(u) = Σ_{y ⊒ u} P(y) h(y) / Σ_{y ⊒ u} P(y)``, instead of the
engine's backward recursion. In the canonical order the responses extending a level-``l`` prefix
are one contiguous block of ``V**(T-l)`` rows, so such sums are a reshape and a row sum.

Response probabilities come from the policy's *teacher-forced* log-probabilities of every
response (``Policy.token_log_probs``), not from its level tables, so a parameterization is also
read through two different code paths.
"""

from __future__ import annotations

import numpy as np

from toy_lm.tables import all_prefixes

__all__ = [
    "all_responses",
    "block_sums",
    "direct_cond_harm",
    "direct_conditionals",
    "direct_determined",
    "direct_horizon",
    "expand",
    "log_normalize",
    "log_softmax",
    "per_position_kl_direct",
    "per_prefix_kl",
    "prefix_marginals",
    "response_log_probs_from_tables",
    "sequence_kl",
]


def all_responses(vocab_size: int, length: int) -> np.ndarray:
    """Every response ``(V**T, T)`` in canonical order (row ``i`` = base-V digits of ``i``)."""
    return all_prefixes(vocab_size, length)


def block_sums(values: np.ndarray, vocab_size: int, level: int) -> np.ndarray:
    """``Σ_{y ⊒ u} values(y)`` for every level-``l`` prefix ``u``: ``(V**T, ...) -> (V**l, ...)``."""
    values = np.asarray(values)
    return values.reshape((vocab_size**level, -1) + values.shape[1:]).sum(axis=1)


def expand(values: np.ndarray, vocab_size: int, length: int) -> np.ndarray:
    """Broadcast a per-prefix level-``l`` array ``(V**l, ...)`` to every response ``(V**T, ...)``."""
    values = np.asarray(values)
    level = round(np.log(values.shape[0]) / np.log(vocab_size)) if values.shape[0] > 1 else 0
    return np.repeat(values, vocab_size ** (length - level), axis=0)


def prefix_marginals(probs: np.ndarray, vocab_size: int, length: int) -> list[np.ndarray]:
    """``P_l(u) = Σ_{y ⊒ u} P(y)`` for ``l = 0 ... T`` (direct sums, ``(V**l,)`` each)."""
    return [block_sums(probs, vocab_size, level) for level in range(length + 1)]


def direct_cond_harm(
    probs: np.ndarray, harm: np.ndarray, vocab_size: int, length: int
) -> list[np.ndarray]:
    """``H_l(u) = Σ_{y ⊒ u} P(y) h(y) / P_l(u)`` for ``l = 0 ... T`` from the definition."""
    return [
        block_sums(probs * harm, vocab_size, level) / block_sums(probs, vocab_size, level)
        for level in range(length + 1)
    ]


def direct_conditionals(probs: np.ndarray, vocab_size: int, length: int) -> list[np.ndarray]:
    """``π(v|u) = P_{l+1}(uv) / P_l(u)`` for ``l = 0 ... T-1`` (``(V**l, V)`` each)."""
    marg = prefix_marginals(probs, vocab_size, length)
    return [marg[l + 1].reshape(-1, vocab_size) / marg[l][:, None] for l in range(length)]


def direct_determined(harm: np.ndarray, vocab_size: int, length: int) -> list[np.ndarray]:
    """``det_l(u)``: ``h`` takes one value on every response extending ``u`` (``l = 0 ... T``).

    Compared value by value against the block's first response: exact, no arithmetic.
    """
    harm = np.asarray(harm)
    out = []
    for level in range(length + 1):
        block = harm.reshape(vocab_size**level, -1)
        out.append(np.all(block == block[:, :1], axis=1))
    return out


def direct_horizon(harm: np.ndarray, vocab_size: int, length: int) -> int:
    """``τ* = min{l : every level-l prefix is determined}``, from :func:`direct_determined`."""
    return next(l for l, d in enumerate(direct_determined(harm, vocab_size, length)) if d.all())


def sequence_kl(log_p: np.ndarray, log_q: np.ndarray) -> float:
    """``KL(p || q) = Σ_y p(y) (log p(y) - log q(y))`` over whole responses."""
    p = np.exp(log_p)
    return float(np.sum(p * (log_p - log_q)))


def log_normalize(log_weights: np.ndarray) -> np.ndarray:
    """``log w(y) - log Σ_y w(y)`` (stable)."""
    top = np.max(log_weights)
    return log_weights - top - np.log(np.sum(np.exp(log_weights - top)))


def per_position_kl_direct(
    log_p: np.ndarray, log_q: np.ndarray, vocab_size: int, length: int
) -> np.ndarray:
    """``KL_t(p || q)`` for ``t = 1 ... T`` from whole-response distributions, by marginals.

    ``KL_t = Σ_{y_<=t} P_t(y_<=t) log[(P_t(y_<=t)/P_{t-1}(y_<t)) / (Q_t(y_<=t)/Q_{t-1}(y_<t))]``.
    """
    p, q = np.exp(log_p), np.exp(log_q)
    mp, mq = prefix_marginals(p, vocab_size, length), prefix_marginals(q, vocab_size, length)
    out = np.zeros(length)
    for t in range(1, length + 1):
        cp = mp[t] / np.repeat(mp[t - 1], vocab_size)
        cq = mq[t] / np.repeat(mq[t - 1], vocab_size)
        keep = mp[t] > 0
        out[t - 1] = np.sum(mp[t][keep] * (np.log(cp[keep]) - np.log(cq[keep])))
    return out


def per_prefix_kl(logp_tables, logq_tables) -> list[np.ndarray]:
    """``KL(p(.|u) || q(.|u))`` at every prefix ``u`` from log-conditional tables, ``(V**l,)``."""
    return [
        np.sum(np.exp(a) * (a - b), axis=1)
        for a, b in zip(map(np.asarray, logp_tables), map(np.asarray, logq_tables))
    ]


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax`` in numpy."""
    z = np.asarray(z, np.float64)
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.sum(np.exp(z - top), axis=-1, keepdims=True))


def response_log_probs_from_tables(log_tables, vocab_size: int, length: int) -> np.ndarray:
    """``log π(y) = Σ_t log π(y_t|y_<t)`` read off per-level log-conditional tables, ``(V**T,)``."""
    out = np.zeros(vocab_size**length)
    for level, table in enumerate(log_tables):
        flat = np.asarray(table).reshape(-1)  # row-major: index (prefix, token) = level-(l+1) row
        out = out + np.repeat(flat, vocab_size ** (length - level - 1))
    return out
