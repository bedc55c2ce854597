"""Compiled CPU kernels (Numba) for :func:`toy_lm.analysis.analyze_tree`, one call per level.

Why Numba here. The analysis is a handful of elementwise passes whose cost is transcendental
functions and memory traffic. XLA on CPU (the ``backend="xla"`` path) splits the backward step
into about 17 separate fused loops over each chunk, and JAX must copy every chunk in and out of
numpy; Numba lets one loop nest per level read the inputs and write straight into the output
arrays, on every core (``prange`` over blocks of rows), with the vectorizable ``exp`` / ``log``
of :mod:`toy_lm.fastmath`. Measured side by side on a 2-core CPU at ``2**24`` responses
(``harm-horizon bench --suite tree``, float64, three runs): V = 4, T = 12 in 0.15-0.21 s (XLA:
0.55-0.58 s; the memory-traffic floor 0.08-0.10 s); V = 2, T = 24 in 0.37-0.43 s (XLA: 1.4-1.9 s;
floor 0.11-0.16 s).

Determined prefixes. Where every child of a prefix has the same partition function (beyond the
harm horizon), ``π* = π`` exactly: a block of such rows skips the tilt ``exp``/``log`` work, and a
level of them skips the equilibrium-KL sums of the forward pass.

Structure of a block (``BLOCK`` rows, ``V`` entries each). Row-wise logic (maxima, sums over a
row, the exact-zero tests) runs in short loops over ``v``; every ``exp`` and ``log`` runs in a flat
loop over the block's entries or rows, which LLVM vectorizes.

Determinism. Sums over a level (``I_t``, the KL numerators) are accumulated per block of a fixed
size, in a fixed order, and combined in block order by the caller: results do not depend on the
number of threads.

The formulas are those of the XLA kernels in :mod:`toy_lm.analysis` (the same exact-zero
conventions, see :mod:`toy_lm.tree`): ``H = c + Σ π (H_child - c)`` with ``c`` the first child,
log-space partition functions ``log Z = top + log Σ π exp(log Z_child - top)``, and the
equilibrium KL weighted by ``P0 Z`` at a common scale.
"""

from __future__ import annotations

import os

import numba as nb
import numpy as np

from toy_lm.fastmath import KERNEL_FASTMATH, fexp, flog

#: Rows per block: the unit of work of one thread and of the per-block partial sums.
BLOCK = 1024

_JIT = dict(parallel=True, cache=True, error_model="numpy", fastmath=KERNEL_FASTMATH)
_BLOCK_JIT = dict(cache=True, error_model="numpy", fastmath=KERNEL_FASTMATH)


@nb.njit(inline="always")
def _xlogx(p):
    return 0.0 if p <= 0.0 else p * flog(p)


@nb.njit(inline="always")
def _binary_entropy(p):
    return -(_xlogx(p) + _xlogx(1.0 - p))


@nb.njit(**_BLOCK_JIT)
def _backward_block(start, vocab, z, child_h, child_det, child_logz, child_hb, ref_z, inv_lam, leaf,
                    with_lam, with_ref, with_mi, h_out, det_out, pi_out, logz_out, eq_out, kl_out,
                    ref_out, hb_out, mi_out):
    """Rows ``start ... start + BLOCK - 1`` of :func:`backward_level`."""
    n = z.shape[0]
    rows = min(n, start + BLOCK) - start
    width = rows * vocab
    x = np.empty(width)          # z - max z, then log π
    e = np.empty(width)          # exp(z - max z), then π
    y = np.empty(width)          # log Z_child - top
    t = np.empty(width)          # exp(y)
    row_a = np.empty(rows)
    row_b = np.empty(rows)
    row_c = np.empty(rows)
    # Softmax: shifted logits, then one flat vectorized exp.
    for r in range(rows):
        i = start + r
        m = z[i, 0]
        for v in range(1, vocab):
            m = max(m, z[i, v])
        for v in range(vocab):
            x[r * vocab + v] = z[i, v] - m
    _row_exp(x, e, rows, vocab, row_a)
    # π, H (exact zeros where the children agree), determined masks.
    for r in range(rows):
        i = start + r
        base = i * vocab
        total = 0.0
        for v in range(vocab):
            total += e[r * vocab + v]
        row_a[r] = total
        ref = child_h[base]
        mean = 0.0
        same = True
        for v in range(vocab):
            p = e[r * vocab + v] / total
            e[r * vocab + v] = p
            pi_out[i, v] = p
            d = child_h[base + v] - ref
            mean += p * d
            same &= d == 0.0
        h_out[i] = ref + mean
        if not leaf:
            for v in range(vocab):
                same &= child_det[base + v]
        det_out[i] = same
    if with_mi:
        for r in range(rows):
            i = start + r
            base = i * vocab
            hb = _binary_entropy(h_out[i])
            hb_out[i] = hb
            acc = 0.0
            for v in range(vocab):
                hbc = _binary_entropy(child_h[base + v]) if leaf else child_hb[base + v]
                acc += e[r * vocab + v] * (hb - hbc)
            mi_out[i] = acc
    if not (with_lam or with_ref):
        return
    # log π = (z - max) - log Σ exp(z - max).
    for r in range(rows):
        row_a[r] = flog(row_a[r])
    for r in range(rows):
        for v in range(vocab):
            x[r * vocab + v] -= row_a[r]
    if with_ref:
        for r in range(rows):
            i = start + r
            m = ref_z[i, 0]
            for v in range(1, vocab):
                m = max(m, ref_z[i, v])
            total = 0.0
            for v in range(vocab):
                total += fexp(ref_z[i, v] - m)
            lq = m + flog(total)
            acc = 0.0
            for v in range(vocab):
                j = r * vocab + v
                acc += e[j] * (x[j] - (ref_z[i, v] - lq))
            ref_out[i] = acc
    if not with_lam:
        return
    # Partition functions: y = log Z_child - top, one flat exp, then the row sums.
    first = start * vocab
    if leaf:
        for j in range(width):
            y[j] = -child_h[first + j] * inv_lam
    else:
        for j in range(width):
            y[j] = child_logz[first + j]
    for r in range(rows):
        top = y[r * vocab]
        for v in range(1, vocab):
            top = max(top, y[r * vocab + v])
        row_b[r] = top
        for v in range(vocab):
            y[r * vocab + v] -= top
    varying = False
    for j in range(width):
        varying |= y[j] != 0.0
    if not varying:
        # Every row's children share one Z (e.g. beyond the harm horizon): π* = π exactly, and
        # the tilted masses below would all be 1. The same values as the constant branch below.
        for r in range(rows):
            i = start + r
            logz_out[i] = row_b[r]
            kl_out[i] = 0.0
            for v in range(vocab):
                eq_out[i, v] = x[r * vocab + v]
        return
    _row_exp(y, t, rows, vocab, row_a)
    for j in range(width):
        t[j] *= e[j]                     # tilted = π exp(log Z_child - top)
    for r in range(rows):
        mass = 0.0
        for v in range(vocab):
            mass += t[r * vocab + v]
        row_a[r] = mass
    for r in range(rows):
        row_c[r] = flog(row_a[r])        # log of the tilted mass
    for r in range(rows):
        i = start + r
        constant = True
        for v in range(vocab):
            constant &= y[r * vocab + v] == 0.0
        if constant:                     # every child has the same Z: π* = π exactly
            logz_out[i] = row_b[r]
            kl_out[i] = 0.0
            for v in range(vocab):
                eq_out[i, v] = x[r * vocab + v]
        else:
            log_mass = row_c[r]
            logz_out[i] = row_b[r] + log_mass
            acc = 0.0
            for v in range(vocab):
                j = r * vocab + v
                shift = y[j] - log_mass
                eq_out[i, v] = x[j] + shift
                acc += t[j] * shift
            kl_out[i] = acc / row_a[r]


@nb.njit(inline="always")
def _row_exp(x, out, rows, vocab, scratch):
    """``out[j] = exp(x[j])`` for a block whose rows each hold a 0.0 at their maximum.

    For ``V = 2`` the other entry of a row is its minimum, so one ``exp`` per row suffices (half
    the work, bitwise the same result: ``fexp(0.0) == 1.0`` exactly); otherwise one flat loop.
    """
    if vocab == 2:
        for r in range(rows):
            scratch[r] = min(x[2 * r], x[2 * r + 1])
        for r in range(rows):
            scratch[r] = fexp(scratch[r])
        for r in range(rows):
            out[2 * r] = 1.0 if x[2 * r] == 0.0 else scratch[r]
            out[2 * r + 1] = 1.0 if x[2 * r + 1] == 0.0 else scratch[r]
    else:
        for j in range(rows * vocab):
            out[j] = fexp(x[j])


@nb.njit(**_JIT)
def backward_level(z, child_h, child_det, child_logz, child_hb, ref_z, lam, leaf, with_lam,
                   with_ref, with_mi, h_out, det_out, pi_out, logz_out, eq_out, kl_out,
                   ref_out, hb_out, mi_out):
    """One level of the backward pass, leaves first.

    Inputs (``n`` prefixes): ``z`` ``(n, V)`` logits; ``child_h`` ``(n*V,)`` = ``H_{l+1}`` (the
    harm at the leaf level); ``child_det`` ``(n*V,)`` bool (ignored at the leaf level);
    ``child_logz`` ``(n*V,)`` = ``log Z_{l+1}`` (ignored at the leaf level, where it is ``-h/λ``);
    ``child_hb`` the children's binary entropies (MI only; ignored at the leaf level);
    ``ref_z`` ``(n, V)`` reference logits (``with_ref`` only).

    Outputs: ``h_out``, ``det_out``; ``pi_out`` ``(n, V)`` = ``π(v | prefix)`` (the forward pass
    turns it into the logit gradients in place); with ``with_lam``: ``logz_out``, ``eq_out``
    (log-probabilities of ``π*_λ``) and ``kl_out`` = ``KL(π*(.|u) || π(.|u))`` per row; with
    ``with_ref``: ``ref_out`` = ``KL(π(.|u) || π_ref(.|u))`` per row; with ``with_mi``:
    ``hb_out`` = binary entropy of ``H_l`` and ``mi_out`` = ``Σ_v π (hb - hb_child)`` per row.
    """
    n, vocab = z.shape
    inv_lam = 1.0 / lam
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        # A constant vocabulary size compiles a block function specialized to it (loops over a
        # row fully unrolled, about 15% faster at V = 4); other sizes share the generic one (each
        # specialization adds about 10 s to the one-time compile).
        if vocab == 2:
            _backward_block(b * BLOCK, 2, z, child_h, child_det, child_logz, child_hb, ref_z,
                            inv_lam, leaf, with_lam, with_ref, with_mi, h_out, det_out, pi_out,
                            logz_out, eq_out, kl_out, ref_out, hb_out, mi_out)
        elif vocab == 4:
            _backward_block(b * BLOCK, 4, z, child_h, child_det, child_logz, child_hb, ref_z,
                            inv_lam, leaf, with_lam, with_ref, with_mi, h_out, det_out, pi_out,
                            logz_out, eq_out, kl_out, ref_out, hb_out, mi_out)
        else:
            _backward_block(b * BLOCK, vocab, z, child_h, child_det, child_logz, child_hb, ref_z,
                            inv_lam, leaf, with_lam, with_ref, with_mi, h_out, det_out, pi_out,
                            logz_out, eq_out, kl_out, ref_out, hb_out, mi_out)


@nb.njit(**_BLOCK_JIT)
def _forward_block(start, vocab, probs, grads, h, child_h, logz, row_kl, row_ref, row_mi, with_lam,
                   with_ref, with_mi, next_probs, last, sums):
    """Rows ``start ... start + BLOCK - 1`` of :func:`forward_level`."""
    n = grads.shape[0]
    stop = min(n, start + BLOCK)
    info = 0.0
    if not last:
        for i in range(start, stop):
            p = probs[i]
            for v in range(vocab):
                next_probs[i * vocab + v] = p * grads[i, v]
    for i in range(start, stop):
        p = probs[i]
        hi = h[i]
        base = i * vocab
        for v in range(vocab):
            d = child_h[base + v] - hi
            g = (p * grads[i, v]) * d
            grads[i, v] = g
            info += g * d
    sums[start // BLOCK, 0] = info
    if with_lam:
        scale = -np.inf
        for i in range(start, stop):
            scale = max(scale, logz[i] if probs[i] > 0.0 else -np.inf)
        num = 0.0
        den = 0.0
        if scale > -np.inf:              # else no prefix of positive probability: weight 0
            mass = np.empty(stop - start)
            for i in range(start, stop):   # a flat loop: the exp vectorizes
                mass[i - start] = probs[i] * fexp(logz[i] - scale)
            for i in range(start, stop):
                num += mass[i - start] * row_kl[i]
                den += mass[i - start]
        sums[start // BLOCK, 1] = num
        sums[start // BLOCK, 2] = den
        sums[start // BLOCK, 3] = scale
    if with_ref:
        acc = 0.0
        for i in range(start, stop):
            acc += probs[i] * row_ref[i]
        sums[start // BLOCK, 4] = acc
    if with_mi:
        acc = 0.0
        for i in range(start, stop):
            acc += probs[i] * row_mi[i]
        sums[start // BLOCK, 5] = acc


@nb.njit(**_JIT)
def forward_level(probs, grads, h, child_h, logz, row_kl, row_ref, row_mi, with_lam, with_ref,
                  with_mi, next_probs, last, sums):
    """One level of the forward pass, after the backward pass.

    ``probs`` ``(n,)`` = ``P_l``; ``grads`` ``(n, V)`` holds ``π`` on entry and the logit gradients
    ``P_l π (H_{l+1} - H_l)`` on exit; ``next_probs`` ``(n*V,)`` receives ``P_{l+1}`` unless
    ``last``. ``sums[b]`` receives block ``b``'s ``(I_t part, KL numerator, KL denominator,
    KL scale, reference KL, MI)``: the equilibrium-KL weights are ``P_l Z_l`` taken relative to the
    block's largest ``log Z_l`` over prefixes of positive probability, ``-inf`` when there is none
    (the caller combines blocks with a common scale).
    """
    n, vocab = grads.shape
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        if vocab == 2:                   # specialized block functions, as in backward_level
            _forward_block(b * BLOCK, 2, probs, grads, h, child_h, logz, row_kl, row_ref, row_mi,
                           with_lam, with_ref, with_mi, next_probs, last, sums)
        elif vocab == 4:
            _forward_block(b * BLOCK, 4, probs, grads, h, child_h, logz, row_kl, row_ref, row_mi,
                           with_lam, with_ref, with_mi, next_probs, last, sums)
        else:
            _forward_block(b * BLOCK, vocab, probs, grads, h, child_h, logz, row_kl, row_ref,
                           row_mi, with_lam, with_ref, with_mi, next_probs, last, sums)


def cached_on_disk() -> bool:
    """Whether every kernel has an on-disk cache index (best effort: True when unknown).

    False means the next call compiles (about 40 s on 2 cores); the CLI says so before it starts.
    """
    try:
        return all(os.path.exists(d._cache._cache_file._index_path)
                   for d in (_backward_block, _forward_block, backward_level, forward_level))
    except AttributeError:  # a Numba version with another cache layout
        return True
