"""The tree analysis sharded across devices with ``jax.sharding``, split on the first tokens.

The ``V**m`` prefixes of length ``m`` (the *split level*) root disjoint subtrees; device ``d`` of
a mesh with ``D`` devices gets subtrees ``d*K ... (d+1)*K - 1`` (``K = ceil(V**m / D)``, the
last device padded with zero-probability subtrees). Within a subtree nothing refers to another
one, so each device runs the forest kernels of :mod:`toy_lm.engines.device_tree` on its own buffers
with no communication (``jax.shard_map`` over the mesh axis ``"d"``). The ``m`` levels above the
split are a small forest of one root, whose leaves are the subtrees' root values; it runs on the
first device, forward before and backward after the subtrees.

Determinism. Every per-prefix value is computed by the same per-row program (the level step of
:mod:`toy_lm.engines.level_step`) from the same inputs whatever ``D`` is, and the per-level sums (``I_t``,
KL) are taken over the per-row shares of the whole level in canonical order (the step's
``level_sums`` and ``combine``), so for a given split level the results are *identical*
(bitwise) on one device and on many.

Example (4 simulated CPU devices, set before JAX starts):
  ``XLA_FLAGS=--xla_force_host_platform_device_count=4 python -c "..."``, then
  ``analyze_sharded(logits, harm, mesh=make_mesh())``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from toy_lm.engines import device_tree
from toy_lm.engines.analysis import TreeAnalysis
from toy_lm.errors import ConfigError
from toy_lm.models.harms import horizon_from_masks
from toy_lm.engines.level_step import LevelRows, LevelTotals, combine, level_sums, stack_sums
from toy_lm.tables import infer_sizes, level_size, validate_harm


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh ``("d",)`` over ``devices`` (default: all devices of the default backend)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("d",))


def split_level(vocab_size: int, length: int, num_devices: int) -> int:
    """The smallest ``m`` with ``V**m >= D`` (at most ``T - 1``): a subtree for every device."""
    m = 0
    while vocab_size ** m < num_devices and m < length - 1:
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
        block = data[:, layout.offsets[j]:layout.offsets[j] + rows]
        out.append(block.reshape((-1,) + block.shape[2:])[:keep * layout.vocab_size ** j])
    return out


def _level_totals(level: dict, l: int) -> LevelTotals:
    """Level ``l``'s totals from its per-row shares in canonical order: the level step's
    :func:`~toy_lm.engines.level_step.level_sums` over the whole level (one block), then the one
    :func:`~toy_lm.engines.level_step.combine` every XLA driver uses."""
    rows = LevelRows(h=level["h"][l], det=level["det"][l], grads=level["grads"][l],
                     info=level["info"][l], logz=level.get("logz", [None] * (l + 1))[l],
                     eq_kl=level.get("eq_kl", [None] * (l + 1))[l],
                     ref_kl=level.get("ref_kl", [None] * (l + 1))[l])
    return combine(stack_sums([level_sums(rows, level["probs"][l])]))


def analyze_sharded(logits: Sequence, harm, *, lam: float | None = None,
                    ref_logits: Sequence | None = None, mesh: Mesh | None = None,
                    split: int | None = None, chunk_rows: int = device_tree.CHUNK_ROWS,
                    dtype=None) -> TreeAnalysis:
    """The tree analysis of :func:`toy_lm.engines.analysis.analyze_tree`, sharded over ``mesh``.

    Args:
      logits: level tables ``(V**l, V)``; harm: ``(V**T,)``.
      lam / ref_logits: as in ``analyze_tree`` (equilibrium KL; KL against a reference).
      mesh: a one-axis mesh ``("d",)`` (default: every device, :func:`make_mesh`).
      split: the split level ``m`` (default :func:`split_level`); results for a given ``m`` are
        bitwise identical for any number of devices.
      dtype: the floating dtype of the buffers (default: JAX's default float, float64 under
        x64); float32 is for GPUs, with the tolerance re-derived (:mod:`experiments.bench.gpu`).

    Returns:
      A :class:`toy_lm.engines.analysis.TreeAnalysis` (without the equilibrium tables and ``I^MI``).
    """
    vocab_size, length = infer_sizes(logits)
    harm = validate_harm(harm, vocab_size, length)
    if ref_logits is not None and infer_sizes(ref_logits, "ref_logits") != (vocab_size, length):
        raise ConfigError("ref_logits must have the same V and T as logits")
    mesh = make_mesh() if mesh is None else mesh
    num_devices = mesh.devices.size
    m = split_level(vocab_size, length, num_devices) if split is None else int(split)
    if not 0 <= m < length:
        raise ConfigError(f"split level m={m} must satisfy 0 <= m < T={length}")
    dtype = np.dtype(jax.numpy.result_type(float) if dtype is None else dtype)
    subtrees = level_size(vocab_size, m)
    per_device = math.ceil(subtrees / num_devices)
    layout = device_tree.forest_layout(vocab_size, length - m, per_device, chunk_rows)
    top_layout = device_tree.forest_layout(vocab_size, m, 1, chunk_rows) if m else None
    top_mesh = make_mesh([mesh.devices.flat[0]])
    with_lam, with_ref = lam is not None, ref_logits is not None

    # Levels above the split, forward: the probabilities of the subtree roots.
    root_probs = np.ones(1, dtype)
    if m:
        top = _put([device_tree.init_state(
            top_layout, logits[:m], np.zeros(subtrees), [1.0],
            leaf_logz=np.zeros(subtrees) if with_lam else None,
            ref_logits=ref_logits[:m] if with_ref else None, dtype=dtype)], top_mesh)
        top = device_tree.forward_pass(top, top_layout, top_mesh, through_leaves=True)
        root_probs = _levels(top, top_layout, "probs", 1)[m]

    # The subtrees, one forest per device.
    states = []
    for d in range(num_devices):
        first = d * per_device

        def rows(table, level, first=first):   # the device's rows of a global level, padded
            n = level_size(vocab_size, level - m)
            block = np.asarray(table)[first * n:(first + per_device) * n]
            pad = per_device * n - block.shape[0]
            return np.concatenate([block, np.zeros((pad,) + block.shape[1:], block.dtype)])

        leaves = rows(harm, length)
        states.append(device_tree.init_state(
            layout, [rows(logits[l], l) for l in range(m, length)], leaves,
            rows(root_probs, m), leaf_logz=-leaves / lam if with_lam else None,
            ref_logits=[rows(ref_logits[l], l) for l in range(m, length)] if with_ref else None,
            dtype=dtype))
    state = _put(states, mesh)
    state = device_tree.forward_pass(state, layout, mesh)
    state = device_tree.backward_pass(state, layout, mesh, 1.0 if lam is None else lam)
    names = ["h", "det", "grads", "info", "probs"] + ["logz", "eq_kl"] * with_lam \
        + ["ref_kl"] * with_ref
    low = {k: _levels(state, layout, k, subtrees) for k in names}

    # Levels above the split, backward, from the subtrees' root values.
    high = {k: [] for k in names}
    if m:
        top = dict(top)
        for name in ("h", "det") + ("logz",) * with_lam:
            buf = np.array(top[name])
            buf[0, top_layout.offsets[m]:top_layout.offsets[m] + subtrees] = low[name][0]
            top[name] = jax.device_put(buf, NamedSharding(top_mesh, P("d")))
        top = device_tree.backward_pass(top, top_layout, top_mesh, 1.0 if lam is None else lam)
        high = {k: _levels(top, top_layout, k, 1) for k in names}
    level = {k: high[k][:m] + low[k] for k in names}

    dets = level["det"]
    totals = [_level_totals(level, l) for l in range(length)]
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
