"""The full prefix-tree analysis in two passes (what ``harm-horizon analyze`` runs).

:mod:`toy_lm.engines.tree` states each quantity as its own readable, jittable function; computing them one
by one re-walks the tree many times. :func:`analyze_tree` computes everything in two passes over
the levels and produces ``H``, the logit gradients ``G``, the determined masks, ``I_t`` (both
forms), the equilibrium tables of ``π*_λ`` and their per-position KL, and the KL against a
reference policy. Two implementations (``backend=``):

* ``"xla"`` (default): the level step of :mod:`toy_lm.engines.level_step` (the one step every XLA driver
  runs) jitted into two chunk kernels (forward pass first, then backward), on JAX's default device
  and in JAX's default float dtype; compiled in about a second.
* ``"numba"`` (optional, ``pip install "harm-horizon[numba]"``): the compiled CPU kernels of
  :mod:`toy_lm.engines.cpu_kernels`, float64. A top-down pass writes the prefix probabilities; one pass
  leaves first then computes per level ``π``, ``H``, the masks, the logit gradients, ``log Z``,
  the equilibrium tables and the level sums, one kernel call per level on every core, testing the
  logits for finiteness as it reads them. About 2-4x faster than XLA on large trees on a CPU, but
  compiled once per install (about 45-60 s on 2 cores, cached on disk; see
  :func:`compile_numba_kernels`). The tests hold it to the level step and the numpy reference.
  :func:`choose_backend` is what the command line uses.

The rest of this docstring describes the XLA path.

Chunks and compile time. Each pass applies one jitted kernel to fixed-size chunks of rows
(``chunk_rows`` prefixes; a smaller level, or the tail of a level, is padded with rows of zero
probability). Every level of every size therefore runs the *same* two compiled programs: compile
time does not grow with ``T`` (a program unrolled level by level compiled for more than 95 s on an
H200 at ``V=4, T=12``). Chunks also keep XLA's working set in cache and avoid allocating a fresh
array per level per operation. Results land in preallocated numpy arrays.

Performance notes (XLA on a 2-core CPU, jax 0.10; see ``harm-horizon bench --suite tree``, whose
rows carry ``xla_seconds`` next to the default backend's ``seconds``). XLA pays
heavily for fresh large buffers (page faults: ``x + 1`` on 2**24 float64 takes ~10x longer into a
fresh output than into a donated one) and for converting large numpy arrays (a 128 MB
``device_put`` copies at ~1 GB/s), so whole levels are never handed to XLA: chunks of :data:`CHUNK_ENTRIES`
table entries are copied in and out, and the next chunk's kernel is dispatched before the
previous chunk's results are copied out. (JAX takes a numpy chunk without a copy only when it
starts on a 64-byte boundary, which numpy's large arrays never do, and copies it at about
1.8 GB/s otherwise; aligning every chunk changed nothing end to end, alternated side by side:
the kernels bound the driver, whose main thread mostly waits for them.) Inside the kernels one
``exp`` per entry serves both ``π`` and ``log π``, and reductions over a row (``V`` entries) are
unrolled into elementwise ops on column slices for ``V <= UNROLL_MAX_V`` (XLA's reductions over
a tiny minor axis are slow). What remains is compute: the analysis needs at least two ``exp`` per table entry (three with the
forward pass) and two ``log`` per prefix, and XLA's fused kernels run at roughly 20-30 ns per entry
on this CPU, several times the memory-traffic floor of the benchmark (the optional Numba backend
comes closer to it). The transcendentals are about half of the backward kernel: with every
``exp`` and ``log`` of the step replaced by a multiply-add (wrong values, same program shape),
a chunk of ``2**17`` entries took 15-22 against 35-51 ns per row at ``V = 2`` and 32-36 against
50-63 at ``V = 4`` (four alternated rounds); the ``log`` alone accounted for 10-16 ns per row at
``V = 2`` (two per row), the ``exp`` for 5-9. Computing one ``exp`` per row instead of two at
``V = 2`` (the row maximum's is 1) gave 29-40 against 29-50 ns per row, within the spread, and
was not kept.

Equilibrium KL without a forward pass over ``π*``. ``π*_λ(y_<=l) = P0(y_<=l) Z_l(y_<=l) / Z_0`` and
``Z_0 = Σ_{y_<=l} P0(y_<=l) Z_l(y_<=l)`` at every level, so
``KL_t(π*||π0) = Σ P0 Z_{t-1} kl / Σ P0 Z_{t-1}`` over the prefixes ``y_<t``, where ``kl`` is the
row KL ``KL(π*(.|y_<t) || π0(.|y_<t))``; both sums are accumulated with a common scale
``exp(max log Z)``, so nothing underflows and the ratio is exact zero wherever ``kl`` is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.bounds import check_concrete_lam
from toy_lm.compile_options import compiler_options
from toy_lm.engines.level_step import (
    Children,
    LevelRows,
    combine,
    forward_rows,
    level_step,
    level_sums,
    stack_sums,
)
from toy_lm.errors import InputError
from toy_lm.models.harms import horizon_from_masks
from toy_lm.mutation import point
from toy_lm.tables import infer_sizes, is_binary, level_size, non_finite_error, validate_tables

__all__ = [
    "BACKENDS",
    "CHUNK_ENTRIES",
    "NUMBA_MIN_RESPONSES",
    "TreeAnalysis",
    "TreeSummary",
    "analyze_tree",
    "choose_backend",
    "compile_kernels",
    "compile_numba_kernels",
    "default_chunk_rows",
    "numba_available",
    "tree_summary",
]

#: Default size of a chunk in table entries (rows x ``V``): :func:`default_chunk_rows` prefixes.
#: Measured on the 2-core CPU at 2**24 responses, chunk sizes side by side in one process:
#: ``V = 2`` took 1.48 s with chunks of 2**16 entries and 0.76-0.83 s with 2**17; ``V = 4``
#: 0.45 s with 2**17 and 0.50 s with 2**18 - the best size is a number of entries, not of rows.
CHUNK_ENTRIES = 1 << 17


def default_chunk_rows(vocab_size: int) -> int:
    """Prefixes per chunk by default: :data:`CHUNK_ENTRIES` table entries."""
    return max(1, CHUNK_ENTRIES // max(1, int(vocab_size)))


def _chunk(vocab_size: int, length: int, chunk_rows: int | None) -> int:
    """The rows per kernel call: ``chunk_rows`` (default :func:`default_chunk_rows`), at most
    the largest level's rows."""
    rows = default_chunk_rows(vocab_size) if chunk_rows is None else int(chunk_rows)
    return max(1, min(rows, level_size(vocab_size, length - 1)))


class TreeAnalysis(NamedTuple):
    """Everything ``harm-horizon analyze`` reports (levels ``l``; positions ``t = l + 1``).

    Attributes:
      expected_harm: ``E_π[h]``, a float.
      cond_harm: ``H_0 ... H_T``, ``H_l`` of shape ``(V**l,)``.
      logit_grads: ``G_0 ... G_{T-1}``, shape ``(V**l, V)``.
      determined: ``det_0 ... det_T`` bool masks.
      harm_information: ``I_t``, ``(T,)``, variance form.
      harm_information_mi: ``I_t^MI`` in nats ``(T,)``, or None when not requested.
      horizon: ``τ*``, an int.
      equilibrium_logits: log-probability tables of ``π*_λ``, or None without ``lam``.
      equilibrium_kl: ``KL_t(π*_λ || π)`` ``(T,)``, or None.
      per_position_kl: ``KL_t(π || π_ref)`` ``(T,)``, or None without a reference.
    """

    expected_harm: float
    cond_harm: tuple
    logit_grads: tuple
    determined: tuple
    harm_information: np.ndarray
    harm_information_mi: np.ndarray | None
    horizon: int
    equilibrium_logits: tuple | None
    equilibrium_kl: np.ndarray | None
    per_position_kl: np.ndarray | None

    def determined_fraction(self) -> np.ndarray:
        """Fraction of determined prefixes ``y_<t`` at levels ``0 ... T-1``, ``(T,)``."""
        return np.array([float(np.mean(m)) for m in self.determined[:-1]])

    def grad_abs_sum(self) -> np.ndarray:
        """``Σ |G|`` over each level's table, ``(T,)``."""
        return np.array([float(np.abs(g).sum()) for g in self.logit_grads])

    def summary(self) -> TreeSummary:
        """The per-level results alone (what ``analyze_tree(..., tables=False)`` returns)."""
        return TreeSummary(
            expected_harm=self.expected_harm,
            horizon=self.horizon,
            harm_information=self.harm_information,
            equilibrium_kl=self.equilibrium_kl,
            per_position_kl=self.per_position_kl,
            grad_abs_sums=self.grad_abs_sum(),
            determined_fractions=self.determined_fraction(),
            harm_information_mi=self.harm_information_mi,
        )


class TreeSummary(NamedTuple):
    """The per-level results of the analysis without its per-prefix tables (what ``harm-horizon
    analyze`` prints): from ``analyze_tree(..., tables=False)``, :meth:`TreeAnalysis.summary`, or
    a run whose tables are spread over processes (:mod:`toy_lm.engines.sharded`). Levels ``l``,
    positions ``t = l + 1``.

    Attributes:
      expected_harm: ``E_π[h]``. horizon: ``τ*``.
      harm_information: ``I_t``, ``(T,)``. equilibrium_kl / per_position_kl: ``(T,)`` or None.
      grad_abs_sums: ``Σ |G|`` per level ``0 ... T-1``. determined_fractions: the fraction of
        determined prefixes per level ``0 ... T-1``.
      harm_information_mi: ``I_t^MI`` ``(T,)``, or None (not requested; the sharded engine has
        none).
    """

    expected_harm: float
    horizon: int
    harm_information: np.ndarray
    equilibrium_kl: np.ndarray | None
    per_position_kl: np.ndarray | None
    grad_abs_sums: np.ndarray
    determined_fractions: np.ndarray
    harm_information_mi: np.ndarray | None = None

    def grad_abs_sum(self) -> np.ndarray:
        return self.grad_abs_sums

    def determined_fraction(self) -> np.ndarray:
        return self.determined_fractions


def _backward_rows(logits, probs, children: Children, ref_logits, lam, *, with_mi, tables):
    """One chunk of the backward pass: the level step (:func:`toy_lm.engines.level_step.level_step`) and
    the chunk's :class:`~toy_lm.engines.level_step.LevelSums`; only the per-row outputs the driver
    stores leave the kernel (without ``tables``: no gradient or equilibrium table, whose
    computation XLA then drops but for ``Σ |G|``)."""
    rows = level_step(logits, probs, children, lam=lam, ref_logits=ref_logits, with_mi=with_mi)
    keep = rows._replace(info=None, eq_kl=None, ref_kl=None, mi=None)
    if not tables:
        keep = keep._replace(grads=None, eq=None)
    return keep, level_sums(rows, probs, grad_abs=not tables)


class _Kernels(NamedTuple):
    forward: Callable  # (logits, probs) -> P one level down, flattened to children order
    backward: Callable  # _backward_rows


@functools.cache
def _kernels(backend: str) -> _Kernels:
    """The two chunk kernels, jitted with :func:`toy_lm.compile_options.compiler_options` of
    ``backend`` (made on first use, not at import)."""
    options = compiler_options(backend)
    return _Kernels(
        jax.jit(forward_rows, compiler_options=options),
        jax.jit(_backward_rows, static_argnames=("with_mi", "tables"), compiler_options=options),
    )


def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def _padded(x, rows: int, fill=0):
    """``x`` as a float/bool numpy array padded with ``fill`` to ``rows`` rows."""
    x = np.asarray(x)
    if x.shape[0] == rows:
        return x
    pad = np.full((rows - x.shape[0],) + x.shape[1:], fill, x.dtype)
    return np.concatenate([x, pad])


def _in_turn(sizes: Sequence[int], dtype) -> Callable[[int], np.ndarray]:
    """Memory for what only the level above reads: two buffers, sized for the two deepest of the
    levels ``sizes``, that the levels use in turn; the returned function gives level ``l``'s
    (``sizes[l]`` entries, the other buffer than level ``l + 1``'s)."""
    buffers = [np.empty(n, dtype) for n in sizes[::-1][:2]]
    return lambda level: buffers[(len(sizes) - 1 - level) % 2][: sizes[level]]


def _pipelined(dispatched, store) -> None:
    """Consume ``(a, b, out)`` kernel results one call behind their dispatch.

    JAX dispatches asynchronously: the next chunk's kernel is already queued (and running on
    XLA's threads) while numpy copies the previous chunk's results into the output arrays.
    """
    pending = None
    for item in dispatched:
        if pending is not None:
            store(*pending)
        pending = item
    if pending is not None:
        store(*pending)


def _validate(
    logits, harm, lam, ref_logits, mutual_information, check_finite: bool = True
) -> tuple[int, int]:
    vocab_size, length = validate_tables(logits, check_finite=check_finite)
    if ref_logits is not None:
        validate_tables(ref_logits, "ref_logits")
        if len(ref_logits) != length or np.shape(ref_logits[0]) != np.shape(logits[0]):
            raise InputError(
                f"ref_logits have V={np.shape(ref_logits[0])[-1]}, T={len(ref_logits)} but logits "
                f"have V={vocab_size}, T={length}; the reference policy must have the same sizes"
            )
    if lam is not None:
        check_concrete_lam(lam)
    if np.shape(harm) != (vocab_size**length,):
        raise InputError(
            f"harm has shape {np.shape(harm)} but the tables (V={vocab_size}, T={length}) need "
            f"({vocab_size**length},): one value per response, in canonical order"
        )
    if mutual_information and not is_binary(harm):
        raise InputError("the mutual-information form I_t^MI needs a binary harm (values 0 or 1)")
    return vocab_size, length


#: The implementations :func:`analyze_tree` can run (the first is the default).
BACKENDS = ("xla", "numba")

#: From this many responses (``V**T``) on, :func:`choose_backend` prefers Numba when installed.
NUMBA_MIN_RESPONSES = 1 << 22


@functools.cache
def numba_available() -> bool:
    """Whether the optional Numba backend can run here (numba installed and importable)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(vocab_size: int, length: int) -> str:
    """The backend for a tree of ``V**T`` responses: ``"numba"`` when it is installed and the tree
    has at least :data:`NUMBA_MIN_RESPONSES` responses (where its speed pays for a one-time
    compile), else ``"xla"`` (the default of :func:`analyze_tree`)."""
    if vocab_size**length >= NUMBA_MIN_RESPONSES and numba_available():
        return "numba"
    return "xla"


@overload
def analyze_tree(
    logits: Sequence,
    harm,
    *,
    lam: float | None = None,
    ref_logits: Sequence | None = None,
    mutual_information: bool = False,
    backend: str = "xla",
    chunk_rows: int | None = None,
    tables: Literal[True] = True,
) -> TreeAnalysis: ...


@overload
def analyze_tree(
    logits: Sequence,
    harm,
    *,
    lam: float | None = None,
    ref_logits: Sequence | None = None,
    mutual_information: bool = False,
    backend: str = "xla",
    chunk_rows: int | None = None,
    tables: bool,
) -> TreeAnalysis | TreeSummary: ...


def analyze_tree(
    logits: Sequence,
    harm,
    *,
    lam: float | None = None,
    ref_logits: Sequence | None = None,
    mutual_information: bool = False,
    backend: str = "xla",
    chunk_rows: int | None = None,
    tables: bool = True,
) -> TreeAnalysis | TreeSummary:
    """Run the complete analysis of a policy (level tables) and a harm.

    Args:
      logits: level tables ``(V**l, V)``, ``l = 0 ... T-1`` (numpy or jax arrays).
      harm: ``(V**T,)`` values in ``[0, 1]``.
      lam: KL weight ``λ > 0`` of the equilibrium ``π*_λ``; None skips the equilibrium.
      ref_logits: optional reference tables for ``KL_t(π || π_ref)``.
      mutual_information: also compute ``I_t^MI`` (requires a binary harm).
      backend: ``"xla"`` (default; the level step of :mod:`toy_lm.engines.level_step` in jitted chunk
        kernels, on JAX's default device, in JAX's default float dtype) or ``"numba"`` (optional
        extra; compiled CPU kernels of :mod:`toy_lm.engines.cpu_kernels`, float64, every core, results
        written in place). Both compute the same quantities with the same exact-zero conventions;
        the tests hold them to each other.
      chunk_rows: ``"xla"`` only: prefixes per kernel call (every level runs the same two
        compiled kernels); default :func:`default_chunk_rows`.
      tables: False: the per-level results alone, a :class:`TreeSummary`. The XLA backend then
        holds no gradient or equilibrium table, keeps ``H``, the masks and ``log Z`` in two
        buffers that the levels use in turn, and sums ``Σ |G|`` per chunk (equal to the tables'
        sums up to rounding); the Numba backend makes no equilibrium table and drops ``H`` and
        the masks level by level (its gradient tables hold the prefix probabilities, so they
        stay; with tables both backends keep them there). Peak numpy memory besides the inputs
        (tracemalloc, ``lam`` given): at ``V = 4, T = 12`` 0.14 GB (XLA) and 0.27 GB (Numba)
        against 0.47 and 0.50 GB with tables; at ``V = 2, T = 24`` 0.36 and 0.48 GB against
        0.81 and 0.81 GB.

    Returns:
      A :class:`TreeAnalysis` of numpy arrays (a :class:`TreeSummary` without ``tables``).

    Example:
      >>> import numpy as np
      >>> tables = [np.zeros((2 ** l, 2)) for l in range(3)]
      >>> harm = np.repeat([0.0, 1.0], 4)
      >>> analyze_tree(tables, harm).expected_harm
      0.5
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numba" and not numba_available():
        raise InputError(
            'backend "numba" needs numba, which is not installed: '
            'pip install "harm-horizon[numba]" (or use backend="xla")'
        )
    # The Numba kernels test every logit for finiteness as they read it (an extra pass over the
    # largest input would cost about a tenth of the analysis) and raise the same error.
    _validate(logits, harm, lam, ref_logits, mutual_information, check_finite=backend != "numba")
    if backend == "numba":
        return _analyze_tree_numba(
            logits,
            harm,
            lam=lam,
            ref_logits=ref_logits,
            mutual_information=mutual_information,
            tables=tables,
        )
    return _analyze_tree_xla(
        logits,
        harm,
        lam=lam,
        ref_logits=ref_logits,
        mutual_information=mutual_information,
        chunk_rows=chunk_rows,
        tables=tables,
    )


def _result(cond, grads, dets, info, mi, eqs, eq_kl, ref_kl) -> TreeAnalysis:
    """Assemble a :class:`TreeAnalysis` from the per-level lists (None: not computed)."""
    return TreeAnalysis(
        expected_harm=float(cond[0][0]),
        cond_harm=tuple(cond),
        logit_grads=tuple(grads),
        determined=tuple(
            point("analysis.determined", d, level=level, cond=cond, dets=dets)
            for level, d in enumerate(dets)
        ),
        harm_information=info,
        harm_information_mi=mi,
        horizon=horizon_from_masks(dets),
        equilibrium_logits=None if eqs is None else tuple(eqs),
        equilibrium_kl=eq_kl,
        per_position_kl=ref_kl,
    )


def tree_summary(
    vocab_size, root_h, det_count, grad_abs, info, mi=None, eq_kl=None, ref_kl=None
) -> TreeSummary:
    """A :class:`TreeSummary` from per-level counts and totals (levels ``0 ... T-1``; None: not
    computed): ``root_h[0]`` is ``E[h]``, ``det_count`` the determined prefixes per level, from
    which the fractions and the horizon (the first level all determined, else ``T``) follow."""
    det_count = np.asarray(det_count)
    sizes = np.array([level_size(vocab_size, level) for level in range(len(info))])
    return TreeSummary(
        expected_harm=float(root_h[0]),
        horizon=next((l for l in range(len(info)) if det_count[l] == sizes[l]), len(info)),
        harm_information=np.asarray(info),
        equilibrium_kl=eq_kl,
        per_position_kl=ref_kl,
        grad_abs_sums=np.asarray(grad_abs),
        determined_fractions=det_count / sizes,
        harm_information_mi=mi,
    )


def _float64_table(x) -> np.ndarray:
    """``x`` as a read-only, C-contiguous float64 numpy array (no copy when it already is one).

    Read-only always: numpy views of JAX arrays are read-only and Numba compiles a separate
    signature for read-only arrays, so marking every input alike keeps one compiled signature.
    """
    view = np.ascontiguousarray(np.asarray(x), dtype=np.float64).view()
    view.flags.writeable = False
    return view


def _analyze_tree_numba(
    logits: Sequence,
    harm,
    *,
    lam: float | None,
    ref_logits: Sequence | None,
    mutual_information: bool,
    tables: bool = True,
) -> TreeAnalysis | TreeSummary:
    """:func:`analyze_tree` with the compiled kernels: prefix probabilities top-down, then one
    pass leaves first that computes everything else (without ``tables``: no equilibrium table,
    and a level's ``H`` and masks kept until the level above has read them)."""
    from toy_lm.engines import cpu_kernels as kernels

    vocab_size, length = infer_sizes(logits)
    f64 = np.float64
    harm = _float64_table(harm)
    inputs = [_float64_table(z) for z in logits]
    flat = [z.reshape(-1) for z in inputs]  # the kernels index rows of V entries
    with_lam, with_ref, with_mi = lam is not None, ref_logits is not None, mutual_information
    lam_value = float(lam) if with_lam else 1.0
    # Placeholders of the kernels' argument types for what a call does not use (one compiled
    # signature serves every call).
    vec0, bool0 = np.zeros(0, f64), np.zeros(0, np.bool_)
    no_ref = _float64_table(vec0)
    sizes = [level_size(vocab_size, level) for level in range(length)]

    # Top-down: P_{l+1} goes into the memory of level l's gradient output, which the pass below
    # overwrites only after level l + 1 (the last reader of P_{l+1}) is done.
    grads = [np.empty((n, vocab_size), f64) for n in sizes]
    one = np.ones(1, f64)
    probs = [one] + [g.reshape(-1) for g in grads[:-1]]
    for level in range(length - 1):
        kernels.probs_level(vocab_size, flat[level], probs[level], probs[level + 1])

    cond = [None] * length + [harm]
    dets = [None] * length + [np.ones(harm.shape, bool) if tables else None]
    eqs = [None] * length
    info, mi, ref_kl, grad_abs = (np.zeros(length) for _ in range(4))
    det_count = np.zeros(length, np.int64)
    kl_parts: list = [None] * length
    # log Z and the binary entropies are needed one level up only.
    logz_at = _in_turn(sizes, f64) if with_lam else lambda level: vec0
    hb_at = _in_turn(sizes, f64) if with_mi else lambda level: vec0
    child_logz = child_hb = vec0
    for level in reversed(range(length)):
        n = sizes[level]
        leaf = level == length - 1
        h_l, det_l = np.empty(n, f64), np.empty(n, np.bool_)
        logz_l, hb_l = logz_at(level), hb_at(level)
        eq_l = np.empty((n, vocab_size), f64) if with_lam and tables else None
        sums = kernels.sums_buffer(n)
        kernels.analysis_level(
            vocab_size,
            flat[level],
            probs[level],
            _float64_table(cond[level + 1]),
            bool0 if leaf else dets[level + 1],
            no_ref if leaf else _float64_table(child_logz),
            vec0 if leaf else child_hb,
            _float64_table(ref_logits[level]).reshape(-1) if with_ref else no_ref,
            lam_value,
            leaf,
            with_lam,
            with_ref,
            with_mi,
            h_l,
            det_l,
            grads[level].reshape(-1),
            logz_l,
            vec0 if eq_l is None else eq_l.reshape(-1),
            hb_l,
            sums,
        )
        blocks = point("analysis.numba.level_sums", kernels.block_sums(sums), level=level)
        if np.any(blocks.non_finite):
            raise non_finite_error(inputs[level], f"logits_{level}")
        cond[level], dets[level], eqs[level] = h_l, det_l, eq_l
        if not tables:
            cond[level + 1] = dets[level + 1] = None
            det_count[level] = np.count_nonzero(det_l)
            grad_abs[level] = _abs_sum(grads[level])
        info[level] = float(np.sum(blocks.info))
        if with_lam:
            kl_parts[level] = (blocks.eq_kl_num, blocks.eq_kl_scale)
        if with_ref:
            ref_kl[level] = float(np.sum(blocks.ref_kl))
        if with_mi:
            mi[level] = float(np.sum(blocks.mi))
        child_logz, child_hb = logz_l, hb_l

    eq_kl = None
    if with_lam:
        # KL_t = Σ_u P(u) Z(u) KL(π*(.|u) || π(.|u)) / Z(root): block numerators at their own scale,
        # combined in log space (Z(u) / Z(root) can exceed the float range when λ is small).
        log_root = float(child_logz[0])
        eq_kl = np.array([_combine_log_scaled(nums, scales, log_root) for nums, scales in kl_parts])
    if not tables:
        return tree_summary(
            vocab_size,
            cond[0],
            det_count,
            grad_abs,
            info,
            mi if with_mi else None,
            eq_kl,
            ref_kl if with_ref else None,
        )
    return _result(
        cond,
        grads,
        dets,
        info,
        mi if with_mi else None,
        eqs if with_lam else None,
        eq_kl,
        ref_kl if with_ref else None,
    )


def _abs_sum(x, piece: int = CHUNK_ENTRIES) -> float:
    """``Σ |x|`` in pieces of ``piece`` entries (no temporary the size of ``x``)."""
    flat = x.reshape(-1)
    return float(sum(np.abs(flat[a : a + piece]).sum() for a in range(0, flat.size, piece)))


def _combine_log_scaled(nums, scales, log_total) -> float:
    """``Σ_b num_b e^{s_b} / e^{log_total}``, each term in log space (``s_b = -inf``: no term).

    A numerator is a sum of KLs, so ``>= 0`` up to rounding; its sign is kept all the same.
    """
    keep = (nums != 0) & np.isfinite(scales)
    if not keep.any():
        return 0.0
    terms = np.exp(np.log(np.abs(nums[keep])) + scales[keep] - log_total)
    return float(np.sum(np.sign(nums[keep]) * terms))


def _analyze_tree_xla(
    logits: Sequence,
    harm,
    *,
    lam: float | None = None,
    ref_logits: Sequence | None = None,
    mutual_information: bool = False,
    chunk_rows: int | None = None,
    tables: bool = True,
) -> TreeAnalysis | TreeSummary:
    """:func:`analyze_tree` with the jitted XLA chunk kernels (forward pass, then backward).

    Memory that a process touches for the first time is what a large call pays most for on a
    VM: each fresh page faults and is zeroed, and where the host has taken freed memory back
    (``page_reporting``) it must back it again. In a ``perf`` profile of repeated calls at
    ``V = 4, T = 12`` on the 2-core VM, 56% of all samples were the kernel's ``clear_page``. So
    the driver touches little besides what it returns: with tables the prefix probabilities live
    in the gradient tables' memory, and ``log Z``, the binary entropies (and without tables ``H``
    and the masks) in two buffers that the levels use in turn (:func:`_in_turn`). Against a
    fresh array per level and per ``P_l``, in 20 interleaved rounds: median 0.52 against 0.65 s
    at ``V = 4, T = 12`` and 1.05 against 1.62 s at ``V = 2, T = 24``, with the same results to
    the bit.
    """
    vocab_size, length = infer_sizes(logits)
    dtype = np.dtype(jnp.result_type(float))
    harm = np.asarray(harm, dtype)
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(vocab_size)
    chunk = _chunk(vocab_size, length, chunk_rows)
    lam_arr = None if lam is None else jnp.asarray(lam, dtype)
    with_lam, with_ref = lam is not None, ref_logits is not None
    kernels = _kernels(jax.default_backend())

    sizes = [level_size(vocab_size, level) for level in range(length)]
    # Forward pass: P_0 ... P_{T-1}. With tables, P_{l+1} goes into the memory of level l's
    # gradient table (as in the Numba driver), which the backward pass writes only after level
    # l + 1, the last reader of P_{l+1}, is done: fresh memory is what a first touch pays for
    # (see the docstring of _analyze_tree_xla).
    grads = [np.empty((n, vocab_size), dtype) for n in sizes] if tables else [None] * length
    probs = [np.ones(1, dtype)]
    for level in range(length - 1):
        z = logits[level]
        n = sizes[level]
        nxt = grads[level].reshape(-1) if tables else np.empty(n * vocab_size, dtype)

        def store_probs(a, b, out, nxt=nxt):
            nxt[a * vocab_size : b * vocab_size] = np.asarray(out)[: (b - a) * vocab_size]

        _pipelined(
            (
                (
                    a,
                    b,
                    kernels.forward(
                        _padded(np.asarray(z[a:b], dtype), chunk), _padded(probs[level][a:b], chunk)
                    ),
                )
                for a, b in _chunks(n, chunk)
            ),
            store_probs,
        )
        probs.append(nxt)

    # Backward pass, leaves first: the level step on every chunk, then one combine per level.
    # What only the level above reads (log Z, the binary entropies; without tables also H and
    # the masks) lives in two buffers that the levels use in turn.
    cond = [None] * length + [harm]
    dets = [None] * length + [np.ones(harm.shape, bool) if tables else None]
    eqs = [None] * length
    info, mi, eq_kl, ref_kl, grad_abs = (np.zeros(length) for _ in range(5))
    det_count = np.zeros(length, np.int64)
    child_logz = child_hb = None

    def fresh(dtype):
        return lambda level: np.empty(sizes[level], dtype)

    def nothing(level):
        return None

    logz_at = _in_turn(sizes, dtype) if with_lam else nothing
    hb_at = _in_turn(sizes, dtype) if mutual_information else nothing
    h_at = fresh(dtype) if tables else _in_turn(sizes, dtype)
    det_at = fresh(np.bool_) if tables else _in_turn(sizes, np.bool_)
    for level in reversed(range(length)):
        n = sizes[level]
        leaf = level == length - 1
        rows_out = LevelRows(
            h=h_at(level),
            det=det_at(level),
            grads=grads[level],
            info=None,
            logz=logz_at(level),
            eq=np.empty((n, vocab_size), dtype) if with_lam and tables else None,
            hb=hb_at(level),
        )
        parts = []
        child_h = cond[level + 1].reshape(n, vocab_size)
        child_det = None if leaf else dets[level + 1].reshape(n, vocab_size)
        clogz = None if (leaf or not with_lam) else child_logz.reshape(n, vocab_size)
        chb = None if (leaf or not mutual_information) else child_hb.reshape(n, vocab_size)

        def dispatch(a, b, level=level, child_h=child_h, child_det=child_det, clogz=clogz, chb=chb):
            children = Children(
                h=_padded(
                    point("analysis.xla.child_h", child_h[a:b], start=a, full=child_h), chunk
                ),
                det=None if child_det is None else _padded(child_det[a:b], chunk, True),
                logz=None if clogz is None else _padded(clogz[a:b], chunk),
                hb=None if chb is None else _padded(chb[a:b], chunk),
            )
            return (
                a,
                b,
                kernels.backward(
                    _padded(np.asarray(logits[level][a:b], dtype), chunk),
                    _padded(probs[level][a:b], chunk),
                    children,
                    _padded(np.asarray(ref_logits[level][a:b], dtype), chunk) if with_ref else None,
                    lam_arr,
                    with_mi=mutual_information,
                    tables=tables,
                ),
            )

        def store(a, b, out, rows_out=rows_out, parts=parts):
            rows, sums = out
            for dest, value in zip(rows_out, rows):
                if dest is not None:
                    dest[a:b] = np.asarray(value)[: b - a]
            parts.append(sums)

        _pipelined((dispatch(a, b) for a, b in _chunks(n, chunk)), store)
        sums = stack_sums(parts)
        sums = sums._replace(info=point("analysis.xla.level_sums", sums.info, level=level))
        totals = combine(sums)
        cond[level], dets[level] = rows_out.h, rows_out.det
        if not tables:
            cond[level + 1] = dets[level + 1] = None
            det_count[level] = np.count_nonzero(rows_out.det)
            grad_abs[level] = totals.grad_abs
        info[level] = totals.info
        if with_lam:
            eqs[level], child_logz = rows_out.eq, rows_out.logz
            eq_kl[level] = totals.eq_kl
        if mutual_information:
            child_hb = rows_out.hb
            mi[level] = totals.mi
        if with_ref:
            ref_kl[level] = totals.ref_kl

    if not tables:
        return tree_summary(
            vocab_size,
            cond[0],
            det_count,
            grad_abs,
            info,
            mi if mutual_information else None,
            eq_kl if with_lam else None,
            ref_kl if with_ref else None,
        )
    return _result(
        cond,
        grads,
        dets,
        info,
        mi if mutual_information else None,
        eqs if with_lam else None,
        eq_kl if with_lam else None,
        ref_kl if with_ref else None,
    )


def compile_numba_kernels() -> float:
    """Seconds to compile every Numba kernel of ``backend="numba"`` from scratch.

    The kernels have one signature for every ``V``, ``T`` and option (the vocabulary-specialized
    block functions for ``V = 2, 4`` are compiled together with the generic one), so this is
    the whole compile cost. It flushes and rewrites the on-disk cache.
    """
    import time

    from toy_lm.engines import cpu_kernels as kernels

    # Create every signature first (loaded from the disk cache when there is one).
    _analyze_tree_numba(
        [np.zeros((5**l, 5)) for l in range(2)],
        np.zeros(25),
        lam=1.0,
        ref_logits=None,
        mutual_information=False,
    )
    start = time.perf_counter()
    for dispatcher in kernels.KERNELS:
        dispatcher.recompile()
    return time.perf_counter() - start


def compile_kernels(
    vocab_size: int,
    length: int,
    *,
    lam: bool = True,
    ref: bool = False,
    mutual_information: bool = False,
    chunk_rows: int | None = None,
    tables: bool = True,
) -> float:
    """Seconds to lower and compile every kernel ``backend="xla"`` uses at this size (``tables``:
    as :func:`analyze_tree`'s)."""
    import time

    dtype = np.dtype(jnp.result_type(float))
    chunk = _chunk(vocab_size, length, chunk_rows)
    f = jax.ShapeDtypeStruct
    table = f((chunk, vocab_size), dtype)
    vec = f((chunk,), dtype)
    kernels = _kernels(jax.default_backend())
    start = time.perf_counter()
    kernels.forward.lower(table, vec).compile()
    for leaf in (True, False) if length > 1 else (True,):
        children = Children(
            h=table,
            det=None if leaf else f((chunk, vocab_size), np.bool_),
            logz=None if (leaf or not lam) else table,
            hb=None if (leaf or not mutual_information) else table,
        )
        kernels.backward.lower(
            table,
            vec,
            children,
            table if ref else None,
            f((), dtype) if lam else None,
            with_mi=mutual_information,
            tables=tables,
        ).compile()
    return time.perf_counter() - start
