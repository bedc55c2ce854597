"""The prefix-tree analysis resident on devices, in fixed-size chunks: one compiled body per pass.

A **forest** is ``K`` subtrees of depth ``D`` whose roots sit at some level of the full tree (the
whole tree is the forest ``K = 1``, ``D = T``). Forest level ``j`` holds ``K * V**j`` rows, the
rows of the ``K`` subtrees in canonical order, so children stay contiguous: the children of row
``i`` are rows ``i*V ... i*V + V - 1`` of level ``j + 1``. Every level lives in one flat buffer
per quantity (level ``j`` at offset ``off_j``), and each pass applies one jitted kernel to
``chunk`` rows at a time, with the offsets as *traced* scalars, then stores its values with a
second program (:func:`store_chunk`). Every level of every size thus runs the same four compiled
programs (a forward and a backward kernel, and a store of each one's values), so compile time
does not grow with ``T`` - the property a GPU needs (a level-by-level program compiled for more than
95 s on an H200 at ``V=4, T=12``).

Chunks that run past a level's end read rows of the next level (harmless) and their writes are
masked back to the old values (backward) or land in regions written later (forward), so no
special cases are compiled. The kernels read the state; the store programs take it donated and
update it in place (see :func:`store_chunk` for why reading and writing are two programs).

Per row the backward kernel runs the level step of :mod:`toy_lm.engines.level_step`, the one shared by
every XLA driver, and stores ``H`` (exact zeros), the determined flags, the logit gradients ``G``,
the equilibrium ``log Z`` and row KL of ``π*_λ``, the row KL against a reference, and each row's
share of ``I_t``; level sums are taken afterwards from these per-row arrays, by the same
:func:`toy_lm.engines.level_step.level_sums` and :func:`toy_lm.engines.level_step.combine` (see :mod:`toy_lm.engines.sharded`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.compile_options import compiler_options
from toy_lm.engines.level_step import Children, forward_rows, level_step

__all__ = [
    "CHUNK_ROWS",
    "ForestLayout",
    "Kernels",
    "backward_chunk",
    "backward_pass",
    "compiled_kernels",
    "forest_layout",
    "forward_chunk",
    "forward_pass",
    "index_scalar",
    "init_state",
    "store_chunk",
]

#: Default rows per chunk.
CHUNK_ROWS = 1 << 15


class ForestLayout(NamedTuple):
    """Sizes and offsets of a forest's flat buffers (all Python ints).

    Attributes:
      vocab_size: ``V``. depth: ``D`` (logit levels ``0 ... D-1``, leaves at level ``D``).
      roots: ``K``. chunk: rows per kernel call.
      offsets: ``off_0 ... off_D`` (row offset of each level; leaves at ``off_D``).
      row_pad: rows in the row buffers (``off_D`` plus a chunk of slack).
      node_pad: entries in the node buffers (``off_D + K V**D`` plus ``chunk * V`` of slack).
    """

    vocab_size: int
    depth: int
    roots: int
    chunk: int
    offsets: tuple
    row_pad: int
    node_pad: int

    def rows(self, level: int) -> int:
        return self.roots * self.vocab_size**level


def forest_layout(
    vocab_size: int, depth: int, roots: int, chunk_rows: int = CHUNK_ROWS
) -> ForestLayout:
    """The layout of ``roots`` subtrees of ``depth`` levels (chunk capped by the widest level)."""
    sizes = [roots * vocab_size**j for j in range(depth + 1)]
    offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)])[:-1])
    chunk = max(1, min(int(chunk_rows), vocab_size ** (depth - 1)))
    return ForestLayout(
        vocab_size,
        depth,
        roots,
        chunk,
        offsets,
        offsets[-1] + chunk,
        offsets[-1] + sizes[-1] + chunk * vocab_size,
    )


def init_state(
    layout: ForestLayout,
    logits,
    leaf_values,
    root_probs,
    *,
    leaf_det=None,
    leaf_logz=None,
    ref_logits=None,
    dtype=np.float64,
) -> dict:
    """Host buffers of one forest: packed logits, leaves and root probabilities.

    Args:
      logits: per level ``j < D`` a ``(K V**j, V)`` table (forest order).
      leaf_values: ``(K V**D,)`` values at the leaves (the harm, or ``H`` of deeper subtrees).
      root_probs: ``(K,)`` probabilities of the roots.
      leaf_det / leaf_logz: determined flags and ``log Z`` at the leaves (default: ``True`` and
        none; give ``leaf_logz`` to compute the equilibrium).
      ref_logits: optional reference tables, like ``logits``.
    """

    def rows_buffer(tables):
        buf = np.zeros((layout.row_pad, layout.vocab_size), dtype)
        for j, table in enumerate(tables):
            buf[layout.offsets[j] : layout.offsets[j] + layout.rows(j)] = np.asarray(table)
        return buf

    def nodes_buffer(leaves, fill, kind=dtype):
        buf = np.full(layout.node_pad, fill, kind)
        buf[layout.offsets[-1] : layout.offsets[-1] + layout.rows(layout.depth)] = leaves
        return buf

    state = dict(
        logits=rows_buffer(logits),
        probs=nodes_buffer(0.0, 0.0),
        h=nodes_buffer(leaf_values, 0.0),
        det=nodes_buffer(True if leaf_det is None else leaf_det, True, bool),
        grads=np.zeros((layout.row_pad, layout.vocab_size), dtype),
        info=np.zeros(layout.row_pad, dtype),
    )
    state["probs"][: layout.roots] = root_probs
    if leaf_logz is not None:
        state.update(logz=nodes_buffer(leaf_logz, 0.0), eq_kl=np.zeros(layout.row_pad, dtype))
    if ref_logits is not None:
        state.update(ref=rows_buffer(ref_logits), ref_kl=np.zeros(layout.row_pad, dtype))
    return state


def forward_chunk(state: dict, row_off, *, chunk: int) -> dict:
    """``P(u v) = P(u) π(v|u)`` for ``chunk`` rows at ``row_off``: ``{"probs": (chunk V,)}``, to be
    stored at the children's offset by :func:`store_chunk`."""
    z = jax.lax.dynamic_slice_in_dim(state["logits"], row_off, chunk)
    p = jax.lax.dynamic_slice_in_dim(state["probs"], row_off, chunk)
    return {"probs": forward_rows(z, p)}


#: The state buffer each per-row output of the level step is written to.
_STORED = {
    "h": "h",
    "det": "det",
    "grads": "grads",
    "info": "info",
    "logz": "logz",
    "eq_kl": "eq_kl",
    "ref_kl": "ref_kl",
}


def backward_chunk(state: dict, row_off, child_off, lam, *, chunk: int) -> dict:
    """One chunk of the backward pass: the level step of :mod:`toy_lm.engines.level_step` on ``chunk``
    rows; its per-row outputs by state buffer name, to be stored at ``row_off`` by
    :func:`store_chunk`."""
    vocab_size = state["logits"].shape[1]

    def rows(name):
        return jax.lax.dynamic_slice_in_dim(state[name], row_off, chunk)

    def kids(name):
        return jax.lax.dynamic_slice_in_dim(state[name], child_off, chunk * vocab_size).reshape(
            chunk, vocab_size
        )

    # The leaves' det and log Z are in the buffers (True and -h/λ), so every level runs the same
    # program with the children's values read from memory.
    step = level_step(
        rows("logits"),
        rows("probs"),
        Children(h=kids("h"), det=kids("det"), logz=kids("logz") if "logz" in state else None),
        lam=lam if "logz" in state else None,
        ref_logits=rows("ref") if "ref" in state else None,
    )
    return {
        name: getattr(step, field)
        for field, name in _STORED.items()
        if getattr(step, field) is not None and name in state
    }


def store_chunk(state: dict, values: dict, off, valid) -> dict:
    """``state`` with each ``values[name]`` written at ``off``, masked to its first ``valid`` rows.

    A program of its own: a kernel that reads a buffer at one offset (the children) and updates
    it at another cannot update it in place, and XLA copies the whole buffer on every call (the
    cost of a pass then grows with the square of the tree). Here the only read of a buffer is at
    the offset it updates, so the donated buffers are updated in place.
    """
    out = dict(state)
    for name, value in values.items():
        n = value.shape[0]
        old = jax.lax.dynamic_slice_in_dim(state[name], off, n)
        mask = (jnp.arange(n) < valid).reshape((n,) + (1,) * (old.ndim - 1))
        out[name] = jax.lax.dynamic_update_slice_in_dim(
            state[name], jnp.where(mask, value, old), off, 0
        )
    return out


class Kernels(NamedTuple):
    """The compiled programs of a mesh and chunk size: ``forward`` and ``backward`` compute a
    chunk's values from the state (read only), ``store`` writes them into the donated state."""

    forward: Any
    backward: Any
    store: Any


@functools.cache
def compiled_kernels(mesh, chunk: int, backend: str) -> Kernels:
    """The :class:`Kernels` over a mesh's leading device axis ``"d"``. Each device runs the same
    program on its own forest buffers (no collective)."""
    from jax.sharding import PartitionSpec as P

    def per_device(kernel, n_sharded, n_scalars, donate):
        def local(*args):
            squeezed = jax.tree.map(lambda v: v[0], args[:n_sharded])
            return jax.tree.map(lambda v: v[None], kernel(*squeezed, *args[n_sharded:]))

        mapped = jax.shard_map(
            local, mesh=mesh, in_specs=(P("d"),) * n_sharded + (P(),) * n_scalars, out_specs=P("d")
        )
        return jax.jit(
            mapped, donate_argnums=0 if donate else (), compiler_options=compiler_options(backend)
        )

    return Kernels(
        per_device(functools.partial(forward_chunk, chunk=chunk), 1, 1, False),
        per_device(functools.partial(backward_chunk, chunk=chunk), 1, 3, False),
        per_device(store_chunk, 2, 2, True),
    )


def index_scalar(x: int) -> jax.Array:
    return jnp.asarray(x, jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32)


def forward_pass(state: dict, layout: ForestLayout, mesh, *, through_leaves: bool = False) -> dict:
    """Prefix probabilities of levels ``1 ... D-1`` (``... D`` with ``through_leaves``).

    ``state`` leaves carry a leading device axis placed on ``mesh`` (see :mod:`toy_lm.engines.sharded`);
    the kernels are called asynchronously, chunk after chunk.
    """
    k = compiled_kernels(mesh, layout.chunk, mesh.devices.flat[0].platform)
    off, chunk, vocab_size = layout.offsets, layout.chunk, layout.vocab_size
    everything = index_scalar(chunk * vocab_size)
    for j in range(layout.depth if through_leaves else layout.depth - 1):
        for a in range(0, layout.rows(j), chunk):
            values = k.forward(state, index_scalar(off[j] + a))
            state = k.store(state, values, index_scalar(off[j + 1] + a * vocab_size), everything)
    return state


def backward_pass(state: dict, layout: ForestLayout, mesh, lam: float = 1.0) -> dict:
    """``H``, determined flags, ``G``, row shares of ``I_t`` (and ``log Z``, row KLs), leaves up."""
    k = compiled_kernels(mesh, layout.chunk, mesh.devices.flat[0].platform)
    off, chunk, vocab_size = layout.offsets, layout.chunk, layout.vocab_size
    lam_array = jnp.asarray(lam, state["logits"].dtype)
    for j in reversed(range(layout.depth)):
        for a in range(0, layout.rows(j), chunk):
            values = k.backward(
                state,
                index_scalar(off[j] + a),
                index_scalar(off[j + 1] + a * vocab_size),
                lam_array,
            )
            state = k.store(
                state,
                values,
                index_scalar(off[j] + a),
                index_scalar(min(chunk, layout.rows(j) - a)),
            )
    return state
