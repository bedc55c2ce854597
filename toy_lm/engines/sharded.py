"""The tree analysis sharded across devices with ``jax.sharding``, split on the first tokens.

The ``V**m`` prefixes of length ``m`` (the *split level*) root disjoint subtrees; device ``d`` of
a mesh with ``D`` devices gets subtrees ``d*K ... (d+1)*K - 1`` (``K = ceil(V**m / D)``, the
last device padded with zero-probability subtrees). Within a subtree nothing refers to another
one, so each device runs the forest kernels of :mod:`toy_lm.engines.device_tree` on its own buffers
with no communication (``jax.shard_map`` over the mesh axis ``"d"``). The ``m`` levels above the
split are a small forest of one root, whose leaves are the subtrees' root values; it runs on the
first device, forward before and backward after the subtrees.

Determinism. Every per-prefix value is computed by the same per-row program (the level step of
:mod:`toy_lm.engines.level_step`) from the same inputs whatever ``D`` is, and each level below the split
is summed per subtree (the step's ``level_sums`` over a subtree's rows, one compiled program per
block size) and then over the ``V**m`` subtrees in order by the step's ``combine``; so for a
given split level the results are *identical* (bitwise) on one device and on many, and across
processes (:func:`summarize_share`, :mod:`toy_lm.engines.distributed`), where each process sums its own
subtrees and one all-gather brings the sums together.

Example (4 simulated CPU devices, set before JAX starts):
  ``XLA_FLAGS=--xla_force_host_platform_device_count=4 python -c "..."``, then
  ``analyze_sharded(logits, harm, mesh=make_mesh())``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toy_lm.engines import device_tree
from toy_lm.engines.analysis import TreeAnalysis, TreeSummary, tree_summary
from toy_lm.engines.level_step import (
    LevelRows,
    LevelSums,
    LevelTotals,
    combine,
    level_sums,
    stack_sums,
)
from toy_lm.errors import ConfigError
from toy_lm.models.harms import horizon_from_masks
from toy_lm.tables import infer_sizes, level_size, validate_harm

__all__ = [
    "Plan",
    "TreeSummary",
    "analyze_sharded",
    "forest_state_bytes",
    "level_totals",
    "local_gather",
    "make_mesh",
    "plan",
    "share_bytes",
    "split_level",
    "subtree_sums",
    "summarize_share",
]


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh ``("d",)`` over ``devices`` (default: all devices of the default backend)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("d",))


def split_level(vocab_size: int, length: int, num_devices: int) -> int:
    """The smallest ``m`` with ``V**m >= D`` (at most ``T - 1``): a subtree for every device."""
    m = 0
    while vocab_size**m < num_devices and m < length - 1:
        m += 1
    return m


def _put(states: list[dict], mesh: Mesh) -> dict:
    sharding = NamedSharding(mesh, P("d"))
    return {k: jax.device_put(np.stack([s[k] for s in states]), sharding) for k in states[0]}


def _levels(state: dict, layout: device_tree.ForestLayout, name: str, keep: int) -> list:
    """Per forest level, the global canonical rows of ``name`` (devices concatenated, padding
    subtrees dropped): ``keep * V**j`` rows at level ``j``."""
    data = np.asarray(state[name])
    out = []
    for j in range(layout.depth + (name in ("h", "det", "logz", "probs"))):
        rows = layout.rows(j)
        block = data[:, layout.offsets[j] : layout.offsets[j] + rows]
        out.append(block.reshape((-1,) + block.shape[2:])[: keep * layout.vocab_size**j])
    return out


@jax.jit
def _block_sums(rows: LevelRows, probs) -> LevelSums:
    """The level step's :func:`~toy_lm.engines.level_step.level_sums` of one block, jitted: every block of
    a given size runs the same compiled program, so its sums do not depend on the process or
    device that holds it."""
    return level_sums(rows, probs)


class Plan(NamedTuple):
    """How a tree is split: ``V**m`` subtrees at the split level ``m``; a share of them per
    process (``per_process`` each, the last share padded), ``per_device`` per local device."""

    vocab_size: int
    length: int
    split: int
    subtrees: int
    first: int
    count: int
    per_process: int


def plan(
    vocab_size: int, length: int, *, split: int, process_index: int = 0, process_count: int = 1
) -> Plan:
    """The subtrees of process ``process_index`` out of ``process_count`` (contiguous shares)."""
    if not 0 <= split < length:
        raise ConfigError(f"split level m={split} must satisfy 0 <= m < T={length}")
    subtrees = level_size(vocab_size, split)
    if subtrees < process_count:
        raise ConfigError(
            f"split level m={split} gives V**m = {subtrees} subtrees for "
            f"{process_count} processes; choose m with V**m >= {process_count}"
        )
    per_process = math.ceil(subtrees / process_count)
    first = min(process_index * per_process, subtrees)
    return Plan(
        vocab_size, length, split, subtrees, first, min(per_process, subtrees - first), per_process
    )


#: Copies of a forest's buffers alive at the peak of a sharded run: the host buffers packed by
#: ``device_tree.init_state``, their device copy, and the results read back (on a CPU all three
#: are host memory). Measured at ``V = 2``, ``T = 22 ... 24``: about 240 bytes per response at
#: the margin, against 294 from this model (``harm-horizon bench --suite distributed``).
STAGING_COPIES = 3


def forest_state_bytes(
    layout: device_tree.ForestLayout, *, lam: bool = True, ref: bool = False, itemsize: int = 8
) -> int:
    """Bytes of one forest's buffers (:func:`toy_lm.engines.device_tree.init_state`): the logit, gradient
    (and reference) tables, the row vectors (``I_t`` shares, row KLs) and the node vectors
    (probabilities, ``H``, ``log Z``; the determined flags at one byte)."""
    tables, row_vectors, node_vectors = 2 + ref, 1 + lam + ref, 2 + lam
    return (
        itemsize
        * (
            tables * layout.row_pad * layout.vocab_size
            + row_vectors * layout.row_pad
            + node_vectors * layout.node_pad
        )
        + layout.node_pad
    )


def share_bytes(
    vocab_size: int, length: int, split: int, process_count: int, *, ref: bool = False
) -> int:
    """Estimated peak bytes of one process's share, with ``λ``: :data:`STAGING_COPIES` copies of
    the buffers of its ``ceil(V**m / N)`` subtrees, and of the levels above the split."""
    share = math.ceil(level_size(vocab_size, split) / process_count)
    need = forest_state_bytes(device_tree.forest_layout(vocab_size, length - split, share), ref=ref)
    if split:
        need += forest_state_bytes(device_tree.forest_layout(vocab_size, split, 1), ref=ref)
    return STAGING_COPIES * need


def _top_forward(logits, p: Plan, ref_logits, with_lam: bool, dtype, chunk_rows: int, device):
    """The levels above the split, forward: ``(top state, root probabilities (V**m,))``."""
    if not p.split:
        return None, np.ones(1, dtype)
    top_layout = device_tree.forest_layout(p.vocab_size, p.split, 1, chunk_rows)
    top_mesh = make_mesh([device])
    top = _put(
        [
            device_tree.init_state(
                top_layout,
                logits[: p.split],
                np.zeros(p.subtrees),
                [1.0],
                leaf_logz=np.zeros(p.subtrees) if with_lam else None,
                ref_logits=ref_logits[: p.split] if ref_logits is not None else None,
                dtype=dtype,
            )
        ],
        top_mesh,
    )
    top = device_tree.forward_pass(top, top_layout, top_mesh, through_leaves=True)
    return top, _levels(top, top_layout, "probs", 1)[p.split]


def _top_backward(top, p: Plan, roots: dict, names, lam, chunk_rows: int, device) -> dict:
    """The levels above the split, backward, from the subtrees' root values ``roots``."""
    if not p.split:
        return {k: [] for k in names}
    top_layout = device_tree.forest_layout(p.vocab_size, p.split, 1, chunk_rows)
    top_mesh = make_mesh([device])
    top = dict(top)
    for name, values in roots.items():
        buf = np.array(top[name])
        buf[0, top_layout.offsets[p.split] : top_layout.offsets[p.split] + p.subtrees] = values
        top[name] = jax.device_put(buf, NamedSharding(top_mesh, P("d")))
    top = device_tree.backward_pass(top, top_layout, top_mesh, 1.0 if lam is None else lam)
    return {k: _levels(top, top_layout, k, 1) for k in names}


def _subtrees(
    logits, harm, ref_logits, root_probs, p: Plan, mesh: Mesh, lam, dtype, chunk_rows: int, names
) -> dict:
    """This process's subtrees ``first ... first + count - 1``, one forest per local device of
    ``mesh``: per name, per forest level ``j`` the ``count * V**j`` rows in canonical order."""
    vocab_size, length, m = p.vocab_size, p.length, p.split
    num_devices = mesh.devices.size
    per_device = math.ceil(p.count / num_devices)
    layout = device_tree.forest_layout(vocab_size, length - m, per_device, chunk_rows)
    states = []
    for d in range(num_devices):
        first = p.first + d * per_device
        last = min(first + per_device, p.first + p.count)

        def rows(table, level, first=first, last=last):  # the device's rows, padded
            n = level_size(vocab_size, level - m)
            block = np.asarray(table[first * n : max(first, last) * n])
            pad = per_device * n - block.shape[0]
            return np.concatenate([block, np.zeros((pad,) + block.shape[1:], block.dtype)])

        leaves = rows(harm, length)
        states.append(
            device_tree.init_state(
                layout,
                [rows(logits[l], l) for l in range(m, length)],
                leaves,
                rows(root_probs, m),
                leaf_logz=-leaves / lam if lam is not None else None,
                ref_logits=[rows(ref_logits[l], l) for l in range(m, length)]
                if ref_logits is not None
                else None,
                dtype=dtype,
            )
        )
    state = _put(states, mesh)
    states.clear()  # the host buffers are on the device now
    state = device_tree.forward_pass(state, layout, mesh)
    state = device_tree.backward_pass(state, layout, mesh, 1.0 if lam is None else lam)
    return {k: _levels(state, layout, k, p.count) for k in names}


def _level_rows(level: dict, l: int) -> LevelRows:
    def get(name):
        return level[name][l] if name in level else None

    return LevelRows(
        h=None,
        det=None,
        grads=None,
        info=get("info"),  # type: ignore[arg-type]
        logz=get("logz"),
        eq_kl=get("eq_kl"),
        ref_kl=get("ref_kl"),
    )


def subtree_sums(low: dict, count: int) -> list[LevelSums]:
    """Per level below the split (forest level ``j``), the :class:`LevelSums` of each of the
    ``count`` subtrees (``V**j`` rows each), stacked in subtree order."""
    out = []
    for j in range(len(low["info"])):
        rows = _level_rows(low, j)
        size = low["info"][j].shape[0] // max(count, 1)
        out.append(
            stack_sums(
                _block_sums(
                    LevelRows(*(None if x is None else x[b * size : (b + 1) * size] for x in rows)),
                    low["probs"][j][b * size : (b + 1) * size],
                )
                for b in range(count)
            )
        )
    return out


def _names(with_lam: bool, with_ref: bool) -> list[str]:
    return (
        ["h", "det", "grads", "info", "probs"]
        + ["logz", "eq_kl"] * with_lam
        + ["ref_kl"] * with_ref
    )


def _root_names(with_lam: bool) -> tuple:
    return ("h", "det") + ("logz",) * with_lam


def _prepare(logits, harm, ref_logits, split, num_devices, dtype):
    vocab_size, length = infer_sizes(logits)
    harm = validate_harm(harm, vocab_size, length)
    if ref_logits is not None and infer_sizes(ref_logits, "ref_logits") != (vocab_size, length):
        raise ConfigError("ref_logits must have the same V and T as logits")
    m = split_level(vocab_size, length, num_devices) if split is None else int(split)
    dtype = np.dtype(jax.numpy.result_type(float) if dtype is None else dtype)
    return vocab_size, length, harm, m, dtype


def analyze_sharded(
    logits: Sequence,
    harm,
    *,
    lam: float | None = None,
    ref_logits: Sequence | None = None,
    mesh: Mesh | None = None,
    split: int | None = None,
    chunk_rows: int = device_tree.CHUNK_ROWS,
    dtype=None,
) -> TreeAnalysis:
    """The tree analysis of :func:`toy_lm.engines.analysis.analyze_tree`, sharded over ``mesh``.

    Args:
      logits: level tables ``(V**l, V)``; harm: ``(V**T,)``.
      lam / ref_logits: as in ``analyze_tree`` (equilibrium KL; KL against a reference).
      mesh: a one-axis mesh ``("d",)`` (default: every device, :func:`make_mesh`).
      split: the split level ``m`` (default :func:`split_level`); results for a given ``m`` are
        bitwise identical for any number of devices (and of processes: :mod:`toy_lm.engines.distributed`).
        Each level below the split is summed per subtree, ``V**m (T - m)`` small reductions in
        all: a split far above the default costs that many calls.
      dtype: the floating dtype of the buffers (default: JAX's default float, float64 under
        x64); float32 is for GPUs, with the tolerance re-derived (:mod:`experiments.bench.gpu`).

    Returns:
      A :class:`toy_lm.engines.analysis.TreeAnalysis` (without the equilibrium tables and ``I^MI``).
    """
    mesh = make_mesh() if mesh is None else mesh
    vocab_size, length, harm, m, dtype = _prepare(
        logits, harm, ref_logits, split, mesh.devices.size, dtype
    )
    p = plan(vocab_size, length, split=m)
    with_lam, with_ref = lam is not None, ref_logits is not None
    names = _names(with_lam, with_ref)
    top, root_probs = _top_forward(
        logits, p, ref_logits, with_lam, dtype, chunk_rows, mesh.devices.flat[0]
    )
    low = _subtrees(logits, harm, ref_logits, root_probs, p, mesh, lam, dtype, chunk_rows, names)
    high = _top_backward(
        top,
        p,
        {k: low[k][0] for k in _root_names(with_lam)},
        names,
        lam,
        chunk_rows,
        mesh.devices.flat[0],
    )
    level = {k: high[k][:m] + low[k] for k in names}
    totals = level_totals(high, subtree_sums(low, p.subtrees))
    dets = level["det"]
    return TreeAnalysis(
        expected_harm=float(level["h"][0][0]),
        cond_harm=tuple(level["h"]),
        logit_grads=tuple(level["grads"]),
        determined=tuple(dets),
        harm_information=np.array([t.info for t in totals]),
        harm_information_mi=None,
        horizon=horizon_from_masks(dets),
        equilibrium_logits=None,
        equilibrium_kl=np.array([t.eq_kl for t in totals]) if with_lam else None,
        per_position_kl=np.array([t.ref_kl for t in totals]) if with_ref else None,
    )


def level_totals(high: dict, low_sums: list[LevelSums]) -> list[LevelTotals]:
    """Every level's totals: above the split, the level step's
    :func:`~toy_lm.engines.level_step.level_sums` over the whole level (one block); below it, the
    per-subtree sums of :func:`subtree_sums` (all ``V**m`` subtrees, in order); each level put
    together by the one :func:`~toy_lm.engines.level_step.combine` every XLA driver uses."""
    top = [
        combine(stack_sums([_block_sums(_level_rows(high, l), high["probs"][l])]))
        for l in range(len(high.get("info", [])))
    ]
    return top + [combine(s) for s in low_sums]


def local_gather(tree: dict) -> dict:
    """The ``gather`` of a single process: a leading process axis of length 1."""
    return {k: np.asarray(v)[None] for k, v in tree.items()}


def summarize_share(
    logits: Sequence,
    harm,
    p: Plan,
    *,
    mesh: Mesh,
    lam: float | None = None,
    ref_logits: Sequence | None = None,
    chunk_rows: int = device_tree.CHUNK_ROWS,
    gather=local_gather,
    dtype=None,
) -> TreeSummary:
    """The sharded analysis of this process's share ``p`` of the subtrees (on its ``mesh``), put
    together with every other process's share by ``gather``.

    Each process runs the subtrees of ``p`` and reduces every level to one
    :class:`~toy_lm.engines.level_step.LevelSums` per subtree (plus ``Σ|G|`` and the determined count);
    ``gather`` (an all-gather across processes: :mod:`toy_lm.engines.distributed`) hands every process
    all ``V**m`` of them with the subtrees' root values, from which each runs the levels above the
    split and the same :func:`level_totals` as :func:`analyze_sharded`. So the per-level results
    are bitwise those of :func:`analyze_sharded` at the same split level.

    Args:
      logits / harm / ref_logits: the whole tables (only this share's rows are read; memory maps
        of :func:`toy_lm.io.map_npz` serve).
      p: this process's :class:`Plan`. mesh: its local devices.
      gather: ``{name: (n, ...)} -> {name: (processes, n, ...)}``, in process order.
    """
    vocab_size, length, m = p.vocab_size, p.length, p.split
    dtype = np.dtype(jax.numpy.result_type(float) if dtype is None else dtype)
    with_lam, with_ref = lam is not None, ref_logits is not None
    names = _names(with_lam, with_ref)
    device = mesh.devices.flat[0]
    top, root_probs = _top_forward(logits, p, ref_logits, with_lam, dtype, chunk_rows, device)
    low = _subtrees(logits, harm, ref_logits, root_probs, p, mesh, lam, dtype, chunk_rows, names)

    def padded(x):  # to p.per_process subtrees, so that every process sends the same shapes
        x = np.asarray(x)
        return np.concatenate([x, np.zeros((p.per_process - p.count,) + x.shape[1:], x.dtype)])

    sums = subtree_sums(low, p.count)
    local = {
        f"root_{k}": padded(low[k][0].astype(np.float64 if k == "det" else dtype))
        for k in _root_names(with_lam)
    }
    for field in LevelSums._fields:
        if getattr(sums[0], field) is not None:
            local[f"sum_{field}"] = np.stack([padded(getattr(s, field)) for s in sums])
    local["grad_abs"] = np.stack(
        [
            padded(
                [
                    np.abs(g[b * vocab_size**j : (b + 1) * vocab_size**j]).ravel().sum()
                    for b in range(p.count)
                ]
            )
            for j, g in enumerate(low["grads"])
        ]
    )
    local["det_count"] = np.stack(
        [padded(d.reshape(p.count, -1).sum(axis=1)) for d in low["det"][:-1]]
    )
    every = {}
    for name, value in gather(local).items():  # (processes, [levels,] per_process)
        value = np.moveaxis(np.asarray(value), 0, -2)
        every[name] = value.reshape(value.shape[:-2] + (-1,))[..., : p.subtrees]
    roots = {
        k: every[f"root_{k}"].astype(bool) if k == "det" else every[f"root_{k}"]
        for k in _root_names(with_lam)
    }
    high = _top_backward(top, p, roots, names, lam, chunk_rows, device)
    low_sums = [
        LevelSums(**{f: every[f"sum_{f}"][j] for f in LevelSums._fields if f"sum_{f}" in every})
        for j in range(length - m)
    ]
    totals = level_totals(high, low_sums)
    grad_abs = [float(np.abs(g).ravel().sum()) for g in high.get("grads", [])[:m]] + [
        float(np.sum(x)) for x in every["grad_abs"]
    ]
    det_count = [int(np.sum(d)) for d in high.get("det", [])[:m]] + [
        int(np.sum(x)) for x in every["det_count"]
    ]
    return tree_summary(
        vocab_size,
        high["h"][0] if m else every["root_h"],
        det_count,
        grad_abs,
        [t.info for t in totals],
        eq_kl=np.array([t.eq_kl for t in totals]) if with_lam else None,
        ref_kl=np.array([t.ref_kl for t in totals]) if with_ref else None,
    )
