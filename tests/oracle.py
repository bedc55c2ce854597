"""A brute-force numpy oracle over whole responses, for the engine tests.

Everything here is computed from the response-level distribution ``P(y) = Π_t π(y_t | y_<t)``
(no backward recursion), so it is independent of :mod:`toy_lm.engines.tree`, :mod:`toy_lm.engines.analysis`
and :mod:`toy_lm.engines.reference`.
"""

from __future__ import annotations

import numpy as np

from toy_lm.tables import all_prefixes


def log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def response_log_probs(tables):
    """``log P(y)`` for every response in canonical order, by summing along each path."""
    vocab_size, length = tables[0].shape[1], len(tables)
    ys = all_prefixes(vocab_size, length).astype(np.int64)
    out = np.zeros(len(ys))
    row = np.zeros(len(ys), np.int64)
    for level, z in enumerate(tables):
        out += log_softmax(z)[row, ys[:, level]]
        row = row * vocab_size + ys[:, level]
    return out


def prefix_mass(values, vocab_size, level):
    """``Σ`` of a per-response array over the continuations of every level-``level`` prefix."""
    return np.asarray(values).reshape(vocab_size**level, -1).sum(axis=1)


def cond_harm(tables, harm):
    """``H_l = Σ_{y ⊒ u} P(y) h(y) / Σ_{y ⊒ u} P(y)`` for ``l = 0 ... T``."""
    vocab_size, length = tables[0].shape[1], len(tables)
    probs = np.exp(response_log_probs(tables))
    return [
        prefix_mass(probs * harm, vocab_size, l) / prefix_mass(probs, vocab_size, l)
        for l in range(length + 1)
    ]


def expected_harm_of_tables(tables, harm):
    """``Σ_y P(y) h(y)`` written with jax.numpy, for ``jax.grad`` w.r.t. the tables."""
    import jax
    import jax.numpy as jnp

    vocab_size, length = tables[0].shape[1], len(tables)
    ys = all_prefixes(vocab_size, length).astype(np.int64)
    logp = jnp.zeros(len(ys))
    row = np.zeros(len(ys), np.int64)
    for level, z in enumerate(tables):
        logp = logp + jax.nn.log_softmax(z, axis=-1)[row, ys[:, level]]
        row = row * vocab_size + ys[:, level]
    return jnp.sum(jnp.exp(logp) * harm)


def entropy(p):
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))
