"""A straightforward numpy implementation of the tree analysis, level by level.

It follows THEORY.md literally (plain ``Σ_v π_v H_v`` sums, ``log Σ exp`` for ``Z``, an explicit
forward pass over ``π*``) and shares no code with :mod:`toy_lm.engines.tree` or :mod:`toy_lm.engines.analysis`:
it is the benchmark's baseline ("ratio_to_reference") and an independent second opinion in the
tests. It makes no effort to produce exact zeros at determined prefixes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["reference_analysis"]


def _log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def reference_analysis(logits, harm, lam=None, ref_logits=None) -> dict:
    """Every ``analyze`` output with the same keys as ``harm-horizon analyze --out``."""
    length = len(logits)
    vocab_size = logits[0].shape[1]
    logp = [_log_softmax(np.asarray(z, np.float64)) for z in logits]
    pi = [np.exp(lp) for lp in logp]
    probs = [np.ones(1)]
    for level in range(length):
        probs.append((probs[level][:, None] * pi[level]).reshape(-1))
    harm = np.asarray(harm, np.float64)
    values: list = [None] * (length + 1)
    values[length] = harm
    lo, hi = harm, harm
    det: list = [None] * (length + 1)
    det[length] = np.ones(harm.shape, bool)
    for level in reversed(range(length)):
        child = values[level + 1].reshape(-1, vocab_size)
        values[level] = (pi[level] * child).sum(axis=1)
        lo = lo.reshape(-1, vocab_size).min(axis=1)
        hi = hi.reshape(-1, vocab_size).max(axis=1)
        det[level] = lo == hi
    grads, info = [], np.zeros(length)
    for level in range(length):
        delta = values[level + 1].reshape(-1, vocab_size) - values[level][:, None]
        grads.append(probs[level][:, None] * pi[level] * delta)
        info[level] = (probs[level + 1] * delta.reshape(-1) ** 2).sum()
    out = {
        "expected_harm": values[0][0],
        "harm_information": info,
        "horizon": next(l for l, d in enumerate(det) if d.all()),
    }
    out.update({f"H_{l}": v for l, v in enumerate(values)})
    out.update({f"grad_{l}": g for l, g in enumerate(grads)})
    out.update({f"determined_{l}": d for l, d in enumerate(det)})
    if lam is not None:
        logz: list = [None] * (length + 1)
        logz[length] = -harm / lam
        for level in reversed(range(length)):
            a = logp[level] + logz[level + 1].reshape(-1, vocab_size)
            m = a.max(axis=1)
            logz[level] = m + np.log(np.exp(a - m[:, None]).sum(axis=1))
        eq = [
            logp[l] + logz[l + 1].reshape(-1, vocab_size) - logz[l][:, None] for l in range(length)
        ]
        eq_probs, eq_kl = np.ones(1), np.zeros(length)
        for level in range(length):
            p_star = np.exp(eq[level])
            eq_kl[level] = (eq_probs * (p_star * (eq[level] - logp[level])).sum(axis=1)).sum()
            eq_probs = (eq_probs[:, None] * p_star).reshape(-1)
        out.update({f"equilibrium_logits_{l}": e for l, e in enumerate(eq)})
        out["equilibrium_kl"] = eq_kl
    if ref_logits is not None:
        logq = [_log_softmax(np.asarray(z, np.float64)) for z in ref_logits]
        out["per_position_kl"] = np.array(
            [(probs[l] * (pi[l] * (logp[l] - logq[l])).sum(axis=1)).sum() for l in range(length)]
        )
    return out
