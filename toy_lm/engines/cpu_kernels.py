"""Compiled CPU kernels (Numba) for :func:`toy_lm.engines.analysis.analyze_tree`, one call per level.

Why Numba here. The analysis is a handful of elementwise passes whose cost is transcendental
functions and memory traffic. XLA on CPU (the ``backend="xla"`` path) splits the backward step
into about 17 separate fused loops over each chunk, and JAX must copy every chunk in and out of
numpy; Numba lets one loop nest per level read the inputs and write straight into the output
arrays, on every core (``prange`` over blocks of rows), with the vectorizable ``exp`` / ``log``
of :mod:`toy_lm.engines.fastmath`.

Two passes. :func:`probs_level` runs top-down and writes the prefix probabilities ``P_{l+1}``
into the memory of level ``l``'s gradient output (the same size, ``V**(l+1)`` values).
:func:`analysis_level` then runs leaves first and computes everything else for a level in one
call: ``π``, ``H``, the masks, the logit gradients ``P π (H_child - H)`` (overwriting ``P_{l+1}``,
whose last reader, level ``l + 1``, is done), ``log Z``, the equilibrium tables, and the
level's sums (``I_t``, the equilibrium KL numerators, the reference KL, the MI form) per block.
No per-row KL or ``π`` array goes to memory, and the equilibrium KL needs no forward pass:
``Σ_u P(u) Z(u)`` over any level is the root's ``Z``, so ``KL_t`` is the sum of the block
numerators divided by ``Z(root)`` (combined in log space by the caller).

Measured side by side on a 2-core CPU at ``2**24`` responses (``harm-horizon bench --suite tree``,
float64; see README): V = 4, T = 12 in 0.13-0.17 s and V = 2, T = 24 in 0.27-0.28 s, 1.45-2.3x the
memory-traffic floor measured in the same run (the previous design, a backward pass storing
``π`` and per-row KLs and then a forward pass, took 0.15-0.21 s and 0.37-0.43 s); the XLA
backend takes 3-6x as long.

Determined prefixes. Where every child of a prefix has the same partition function (beyond the
harm horizon), ``π* = π`` exactly: a block of such rows skips the tilt ``exp``/``log`` work and
adds nothing to the equilibrium KL.

Vectorization. LLVM vectorizes a loop across rows only when every index derives from the loop
counters (an offset index brings a negative-index check that blocks it), no floating-point sum
runs across rows inside it (those go through :func:`_block_sum`), and the arrays it touches are
few and provably distinct (separate allocations, not views of one scratch buffer). The block
functions are written in that style: views of the block's rows, short loops over ``v`` inside
loops over rows, every ``exp`` and ``log`` in a loop of its own or with few companions. For
``V = 2`` the softmax is one loop with one ``exp`` per row.

Determinism. Sums over a level are accumulated per block of a fixed size, in a fixed order, and
combined in block order by the caller: results do not depend on the number of threads.

Numba is an optional dependency (``pip install "harm-horizon[numba]"``): this module is imported
only when ``backend="numba"`` runs. The formulas are those of the level step of
:mod:`toy_lm.engines.level_step` (the same exact-zero conventions, see :mod:`toy_lm.engines.tree`): ``H = c + Σ π (H_child - c)`` with ``c`` the first child,
log-space partition functions ``log Z = top + log Σ π exp(log Z_child - top)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numba as nb
import numpy as np

from toy_lm.engines.fastmath import KERNEL_FASTMATH, fexp, flog

__all__ = [
    "BLOCK",
    "BlockSums",
    "KERNELS",
    "analysis_level",
    "block_sums",
    "cached_on_disk",
    "probs_level",
    "sums_buffer",
]

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


@nb.njit(inline="always")
def _shifted_logits(z, rows, vocab, x):
    """``x = z - max`` per row (``z`` holds the block's rows); False when an entry is not finite."""
    for r in range(rows):
        m = z[r * vocab]
        for v in range(1, vocab):
            m = max(m, z[r * vocab + v])
        for v in range(vocab):
            x[r * vocab + v] = z[r * vocab + v] - m
    finite = True
    for j in range(rows * vocab):
        finite &= z[j] - z[j] == 0.0  # NaN for NaN or ±inf
    return finite


@nb.njit(inline="always")
def _row_sums(a, rows, vocab, out):
    """``out[r] = Σ_v a[r*V + v]``, in order over ``v``."""
    for r in range(rows):
        total = 0.0
        for v in range(vocab):
            total += a[r * vocab + v]
        out[r] = total


@nb.njit(inline="always")
def _softmax(z, rows, vocab, x, e, row):
    """The block's logit rows ``z``: ``x = z - max``, ``e = π``, ``row = Σ exp(z - max)``;
    returns False when an entry of ``z`` is not finite."""
    if vocab == 2:
        # One loop, one exp per row (of the smaller entry; the larger one's is 1.0 exactly): the
        # same values as the general branch.
        finite = True
        for r in range(rows):
            a = z[2 * r]
            b = z[2 * r + 1]
            m = max(a, b)
            xa = a - m
            xb = b - m
            x[2 * r] = xa
            x[2 * r + 1] = xb
            small = fexp(min(xa, xb))
            ea = 1.0 if xa == 0.0 else small
            eb = 1.0 if xb == 0.0 else small
            total = ea + eb
            row[r] = total
            e[2 * r] = ea / total
            e[2 * r + 1] = eb / total
            finite &= (a - a == 0.0) & (b - b == 0.0)  # NaN for NaN or ±inf
        return finite
    finite = _shifted_logits(z, rows, vocab, x)
    _row_exp(x, e, rows, vocab, row)
    _row_sums(e, rows, vocab, row)
    for r in range(rows):
        for v in range(vocab):
            e[r * vocab + v] = e[r * vocab + v] / row[r]
    return finite


@nb.njit(**_BLOCK_JIT)
def _probs_block(start, vocab, z, probs, next_probs):
    """Rows ``start ... start + BLOCK - 1`` of :func:`probs_level`."""
    rows = min(probs.shape[0], start + BLOCK) - start
    first = start * vocab
    x = np.empty(rows * vocab)
    e = np.empty(rows * vocab)
    row = np.empty(rows)
    _softmax(z[first : first + rows * vocab], rows, vocab, x, e, row)
    # Views of the block's rows: indices derived from range loops alone let LLVM vectorize (an
    # offset index costs a negative-index check that blocks it).
    p = probs[start : start + rows]
    out = next_probs[first : first + rows * vocab]
    for r in range(rows):
        for v in range(vocab):
            out[r * vocab + v] = p[r] * e[r * vocab + v]


@nb.njit(**_JIT)
def probs_level(vocab, z, probs, next_probs):
    """The prefix probabilities one level down: ``next_probs[i*V + v] = probs[i] π(v | i)``.

    ``z`` ``(n*V,)`` logits (flat), ``probs`` ``(n,)`` = ``P_l``, ``next_probs`` ``(n*V,)`` =
    ``P_{l+1}`` (the caller passes the memory of the level's gradient output, see
    :func:`analysis_level`).
    """
    n = probs.shape[0]
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        if vocab == 2:  # specialized block functions, as in analysis_level
            _probs_block(b * BLOCK, 2, z, probs, next_probs)
        elif vocab == 4:
            _probs_block(b * BLOCK, 4, z, probs, next_probs)
        else:
            _probs_block(b * BLOCK, vocab, z, probs, next_probs)


@nb.njit(**_BLOCK_JIT)
def _mi_rows(vocab, rows, leaf, h, ch, chb, e, p, hb_o, out):
    """The MI form's rows: ``hb_o`` = binary entropy of ``H``, ``out = P Σ_v π (hb - hb_child)``.

    Out of line, with a run-time ``vocab`` (callers pass ``vocab + 0``, not the literal), so
    one compiled copy serves every specialization of :func:`_analysis_block`: inlined into
    each, these rarely used loops tripled the one-time compile (94 s against 35 s).
    """
    for r in range(rows):
        hb = _binary_entropy(h[r])
        hb_o[r] = hb
        acc = 0.0
        for v in range(vocab):
            j = r * vocab + v
            hbc = _binary_entropy(ch[j]) if leaf else chb[j]
            acc += e[j] * (hb - hbc)
        out[r] = p[r] * acc


@nb.njit(**_BLOCK_JIT)
def _ref_rows(vocab, rows, rz, e, x, p, out):
    """``out = P KL(π || π_ref)`` per row (``x`` = log π); out of line like :func:`_mi_rows`."""
    for r in range(rows):
        m = rz[r * vocab]
        for v in range(1, vocab):
            m = max(m, rz[r * vocab + v])
        total = 0.0
        for v in range(vocab):
            total += fexp(rz[r * vocab + v] - m)
        lq = m + flog(total)
        acc = 0.0
        for v in range(vocab):
            j = r * vocab + v
            acc += e[j] * (x[j] - (rz[j] - lq))
        out[r] = p[r] * acc


@nb.njit(**_BLOCK_JIT)
def _analysis_block(
    start,
    vocab,
    z,
    probs,
    child_h,
    child_det,
    child_logz,
    child_hb,
    ref_z,
    inv_lam,
    leaf,
    with_lam,
    with_ref,
    with_mi,
    h_out,
    det_out,
    grad_out,
    logz_out,
    eq_out,
    hb_out,
    sums,
):
    """Rows ``start ... start + BLOCK - 1`` of :func:`analysis_level`.

    Each loop touches few arrays: LLVM then vectorizes it across rows (with more arrays it gives
    up on the run-time checks that the arrays do not overlap).
    """
    n = probs.shape[0]
    rows = min(n, start + BLOCK) - start
    width = rows * vocab
    first = start * vocab
    block = start // BLOCK
    x = np.empty(width)  # z - max z, then log π
    e = np.empty(width)  # π
    y = np.empty(width)  # log Z_child - top
    t = np.empty(width)  # exp(y), then the tilted masses
    h = np.empty(rows)  # (separate allocations: LLVM knows that they do not overlap)
    row_a = np.empty(rows)
    row_b = np.empty(rows)
    row_c = np.empty(rows)
    # Views of the block's rows: indices derived from range loops alone let LLVM vectorize (an
    # offset index costs a negative-index check that blocks it).
    stop = first + width
    p = probs[start : start + rows]
    ch = child_h[first:stop]
    h_o, det_o = h_out[start : start + rows], det_out[start : start + rows]
    g_o = grad_out[first:stop]
    sums[block, 5] = 0.0 if _softmax(z[first:stop], rows, vocab, x, e, row_a) else 1.0
    # H (exact zeros where the children agree) and the determined masks.
    for r in range(rows):
        ref = ch[r * vocab]
        mean = 0.0
        for v in range(vocab):
            mean += e[r * vocab + v] * (ch[r * vocab + v] - ref)
        h[r] = ref + mean
    for r in range(rows):
        h_o[r] = h[r]
    for r in range(rows):
        ref = ch[r * vocab]
        same = True
        for v in range(vocab):
            same &= ch[r * vocab + v] == ref
        det_o[r] = same
    if not leaf:
        cd = child_det[first:stop]
        for r in range(rows):
            same = det_o[r]
            for v in range(vocab):
                same &= cd[r * vocab + v]
            det_o[r] = same
    # The logit gradients P π (H_child - H) and this block's part of I_t = Σ P π (H_child - H)².
    # (Sums across rows run through _block_sum, outside the row loops.)
    for r in range(rows):
        for v in range(vocab):
            j = r * vocab + v
            t[j] = (p[r] * e[j]) * (ch[j] - h[r])
    for j in range(width):
        g_o[j] = t[j]
    for r in range(rows):
        info = 0.0
        for v in range(vocab):
            j = r * vocab + v
            info += t[j] * (ch[j] - h[r])
        row_c[r] = info
    sums[block, 0] = _block_sum(row_c, rows)
    if with_mi:
        _mi_rows(
            vocab + 0,
            rows,
            leaf,
            h,
            ch,
            child_hb[first:stop],
            e,
            p,
            hb_out[start : start + rows],
            row_c,
        )
        sums[block, 4] = _block_sum(row_c, rows)
    if not (with_lam or with_ref):
        return
    # An empty eq_out: the caller keeps no equilibrium tables (analyze_tree(tables=False)).
    with_eq = eq_out.shape[0] > 0
    if with_eq or with_ref:
        # log π = (z - max) - log Σ exp(z - max) (read by the equilibrium tables and the
        # reference KL only).
        for r in range(rows):
            log_total = flog(row_a[r])
            for v in range(vocab):
                x[r * vocab + v] -= log_total
    if with_ref:
        _ref_rows(vocab + 0, rows, ref_z[first:stop], e, x, p, row_c)
        sums[block, 3] = _block_sum(row_c, rows)
    if not with_lam:
        return
    # Partition functions: y = log Z_child - top (log Z_child = -h / λ at the leaves), one flat
    # exp, then the row sums.
    src = ch if leaf else child_logz[first:stop]
    factor = -inv_lam if leaf else 1.0
    varying = False
    for r in range(rows):
        top = src[r * vocab] * factor
        for v in range(1, vocab):
            top = max(top, src[r * vocab + v] * factor)
        row_b[r] = top
        for v in range(vocab):
            shifted = src[r * vocab + v] * factor - top
            y[r * vocab + v] = shifted
            varying |= shifted != 0.0
    # This block's part of the equilibrium KL: Σ P Z KL(π*(.|u) || π(.|u)) at scale e^-scale
    # (the caller divides by Z at the root: Σ_u P(u) Z(u) over a level is the root's Z).
    sums[block, 1] = 0.0
    sums[block, 2] = -np.inf
    lz_o, eq_o = logz_out[start : start + rows], eq_out[first:stop]
    if not varying:
        # Every row's children share one Z (e.g. beyond the harm horizon): π* = π exactly, and
        # the tilted masses below would all be 1. The same values as the constant branch below.
        for r in range(rows):
            lz_o[r] = row_b[r]
        if with_eq:
            for j in range(width):
                eq_o[j] = x[j]
        return
    _row_exp(y, t, rows, vocab, row_a)
    for j in range(width):
        t[j] *= e[j]  # tilted = π exp(log Z_child - top)
    _row_sums(t, rows, vocab, row_a)
    for r in range(rows):
        row_c[r] = flog(row_a[r])  # log of the tilted mass
    for r in range(rows):
        # A row whose children all share one Z (y == 0) takes log mass 0 exactly: π* = π,
        # log Z = top and KL 0, the values of a branch (up to a zero's sign) from a select, so
        # that the loops below vectorize (a branch here cost 8-16% of the level at tau = T).
        constant = True
        for v in range(vocab):
            constant &= y[r * vocab + v] == 0.0
        row_c[r] = 0.0 if constant else row_c[r]
    for r in range(rows):
        lz_o[r] = row_b[r] + row_c[r]
    if with_eq:
        for r in range(rows):
            log_mass = row_c[r]
            for v in range(vocab):
                j = r * vocab + v
                eq_o[j] = x[j] + (y[j] - log_mass)
    for r in range(rows):
        log_mass = row_c[r]
        acc = 0.0
        for v in range(vocab):
            j = r * vocab + v
            acc += t[j] * (y[j] - log_mass)
        row_c[r] = acc / row_a[r]
    scale = -np.inf
    for r in range(rows):
        if p[r] > 0.0:
            scale = max(scale, lz_o[r])
    if scale > -np.inf:  # else no prefix of positive probability: weight 0
        for r in range(rows):  # a flat loop: the exp vectorizes
            row_b[r] = p[r] * fexp(lz_o[r] - scale) * row_c[r]
        sums[block, 1] = _block_sum(row_b, rows)
        sums[block, 2] = scale


@nb.njit(cache=True, error_model="numpy", fastmath=KERNEL_FASTMATH | {"reassoc"})
def _block_sum(a, n):
    """``Σ a[:n]``, reassociated (only here) so that LLVM vectorizes it: a fixed order, the same
    on every run and for every thread count."""
    total = 0.0
    for j in range(n):
        total += a[j]
    return total


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
def analysis_level(
    vocab,
    z,
    probs,
    child_h,
    child_det,
    child_logz,
    child_hb,
    ref_z,
    lam,
    leaf,
    with_lam,
    with_ref,
    with_mi,
    h_out,
    det_out,
    grad_out,
    logz_out,
    eq_out,
    hb_out,
    sums,
):
    """One level of the analysis, leaves first (after :func:`probs_level` has run on every level).

    Inputs (``n`` prefixes): ``z`` ``(n, V)`` logits; ``probs`` ``(n,)`` = ``P_l``; ``child_h``
    ``(n*V,)`` = ``H_{l+1}`` (the harm at the leaf level); ``child_det`` ``(n*V,)`` bool (ignored
    at the leaf level); ``child_logz`` ``(n*V,)`` = ``log Z_{l+1}`` (ignored at the leaf level,
    where it is ``-h/λ``); ``child_hb`` the children's binary entropies (MI only; ignored at the
    leaf level); ``ref_z`` ``(n, V)`` reference logits (``with_ref`` only).

    Outputs: ``h_out``, ``det_out``, ``grad_out`` ``(n, V)`` = the logit gradients
    ``P π (H_{l+1} - H_l)``; with ``with_lam``: ``logz_out`` and ``eq_out`` (log-probabilities of
    ``π*_λ``; an empty ``eq_out``: none are computed); with ``with_mi``: ``hb_out`` = binary
    entropy of ``H_l``. ``sums[b]`` receives
    block ``b``'s ``(I_t part, equilibrium-KL numerator Σ P Z_u/e^s KL(π*(.|u) || π(.|u)),
    its scale s (-inf for none), Σ P KL(π || π_ref), Σ P (MI part), 1.0 if a logit is not finite
    else 0.0)``.
    """
    n = probs.shape[0]
    inv_lam = 1.0 / lam
    for b in nb.prange((n + BLOCK - 1) // BLOCK):
        # A constant vocabulary size compiles a block function specialized to it (loops over a
        # row fully unrolled, about 15% faster at V = 4); other sizes share the generic one (each
        # specialization adds about 10 s to the one-time compile).
        if vocab == 2:
            _analysis_block(
                b * BLOCK,
                2,
                z,
                probs,
                child_h,
                child_det,
                child_logz,
                child_hb,
                ref_z,
                inv_lam,
                leaf,
                with_lam,
                with_ref,
                with_mi,
                h_out,
                det_out,
                grad_out,
                logz_out,
                eq_out,
                hb_out,
                sums,
            )
        elif vocab == 4:
            _analysis_block(
                b * BLOCK,
                4,
                z,
                probs,
                child_h,
                child_det,
                child_logz,
                child_hb,
                ref_z,
                inv_lam,
                leaf,
                with_lam,
                with_ref,
                with_mi,
                h_out,
                det_out,
                grad_out,
                logz_out,
                eq_out,
                hb_out,
                sums,
            )
        else:
            _analysis_block(
                b * BLOCK,
                vocab,
                z,
                probs,
                child_h,
                child_det,
                child_logz,
                child_hb,
                ref_z,
                inv_lam,
                leaf,
                with_lam,
                with_ref,
                with_mi,
                h_out,
                det_out,
                grad_out,
                logz_out,
                eq_out,
                hb_out,
                sums,
            )


class BlockSums(NamedTuple):
    """The per-block sums :func:`analysis_level` writes (the columns of its ``sums``, named here
    once so that no caller reads a sum back by column number), each ``(blocks,)``.

    Attributes:
      info: ``I_t`` part. eq_kl_num: ``Σ P Z_u e^{-s} KL(π*(.|u) || π(.|u))``.
      eq_kl_scale: ``s`` (``-inf``: no prefix of positive probability). ref_kl: ``Σ P KL(π || π_ref)``.
      mi: ``Σ P`` (MI part). non_finite: 1.0 where a logit of the block is not finite, else 0.0.
    """

    info: np.ndarray
    eq_kl_num: np.ndarray
    eq_kl_scale: np.ndarray
    ref_kl: np.ndarray
    mi: np.ndarray
    non_finite: np.ndarray


def sums_buffer(rows: int) -> np.ndarray:
    """The ``sums`` output of :func:`analysis_level` for a level of ``rows`` prefixes."""
    return np.empty(((rows + BLOCK - 1) // BLOCK, len(BlockSums._fields)))


def block_sums(sums: np.ndarray) -> BlockSums:
    """:func:`analysis_level`'s ``sums`` as named per-block arrays (copies)."""
    return BlockSums(*(sums[:, j].copy() for j in range(len(BlockSums._fields))))


def cached_on_disk() -> bool:
    """Whether every kernel has an index file in Numba's on-disk cache (best effort).

    Read from Numba's documented cache layout only (no private attributes): the index files
    ``<module>.<function>-<line>.<python>.nbi`` in ``NUMBA_CACHE_DIR`` when it is set, else in the
    ``__pycache__`` next to this file. False means the next call compiles (about 45-60 s on 2
    cores; or that Numba keeps its cache elsewhere); the CLI says so before it starts.
    """
    here = Path(__file__)
    custom = os.environ.get("NUMBA_CACHE_DIR")
    root = Path(custom) if custom else here.parent / "__pycache__"
    if not root.is_dir():
        return False
    names = {
        p.name
        for p in (root.rglob(f"{here.stem}.*.nbi") if custom else root.glob(f"{here.stem}.*.nbi"))
    }
    return all(
        any(n.startswith(f"{here.stem}.{d.py_func.__qualname__}-") for n in names) for d in KERNELS
    )


#: Every compiled function (what :func:`toy_lm.engines.analysis.compile_numba_kernels` recompiles).
KERNELS = (
    _block_sum,
    _mi_rows,
    _ref_rows,
    _probs_block,
    probs_level,
    _analysis_block,
    analysis_level,
)
