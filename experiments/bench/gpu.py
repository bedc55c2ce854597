"""``harm-horizon bench --suite gpu``: the largest tree a GPU holds, in float32 and float64.

Runs only when JAX sees a GPU; otherwise the suite returns one row saying so (``skipped``), and
no GPU figure exists. Per dtype, the largest ``V**T`` (``V`` in ``VOCABS``) whose device-resident
analysis (:mod:`toy_lm.engines.device_tree`, with ``λ``) fits in 60% of the card's memory is analyzed:

* ``seconds``: forward and backward passes on the device (median of ``repeats``, inputs drawn on
  the device, level sums excluded);
* ``compile_seconds``: lowering and compiling the kernels. Compile time is bounded by design:
  every level and chunk of every size runs the same two programs (offsets are traced scalars),
  so it does not grow with ``T`` (the target is under 10 s at every size);
* ``floor_seconds``: a memory-traffic floor measured on the card in the same run - one jitted
  program that reads every input buffer once and writes every output buffer once;
  ``ratio_to_floor = seconds / floor_seconds``.

A last row compares float32 with float64 on the card at ``V = 4, T = 10`` against the re-derived
float32 tolerance ``eps(float32) * 16 (T+1) V²`` (the float64 tests' derivation with float32's
epsilon): ``H`` is a convex combination per level, so its rounding grows like ``T`` times the
per-level ``V``-term sums.
"""

from __future__ import annotations

import functools
import statistics
import time

import numpy as np

from experiments.bench import best_seconds

__all__ = [
    "GPU_CHUNK",
    "LAMBDA",
    "SKIP_REASON",
    "VOCABS",
    "bench_device",
    "device_memory",
    "float32_check",
    "forest_bytes",
    "gpu_device",
    "gpu_rows",
    "largest_size",
    "random_state",
    "suite_gpu",
]

VOCABS = (2, 4)
GPU_CHUNK = 1 << 20
LAMBDA = 0.5
SKIP_REASON = (
    "no GPU: jax.devices('gpu') found none on this machine, so the gpu suite did not "
    "run and GPU figures could not be measured"
)


def gpu_device():
    """The first GPU JAX sees, or None."""
    import jax

    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return None
    return devices[0] if devices else None


def forest_bytes(vocab_size: int, length: int, itemsize: int) -> int:
    """Device bytes of a whole-tree forest with the equilibrium: two ``(R, V)`` row tables, two
    row vectors, three node vectors and the boolean flags (``R`` rows, ``N`` nodes)."""
    rows = sum(vocab_size**l for l in range(length))
    nodes = rows + vocab_size**length
    return itemsize * (2 * rows * vocab_size + 2 * rows + 3 * nodes) + nodes


def largest_size(memory: int, itemsize: int, fraction: float = 0.6) -> tuple[int, int]:
    """``(V, T)`` with the most responses whose forest fits in ``fraction`` of ``memory``."""
    best = (VOCABS[0], 1)
    for vocab_size in VOCABS:
        length = 1
        while forest_bytes(vocab_size, length + 1, itemsize) <= fraction * memory:
            length += 1
        if vocab_size**length > best[0] ** best[1]:
            best = (vocab_size, length)
    return best


def device_memory(device) -> int:
    stats = device.memory_stats() or {}
    return int(stats.get("bytes_limit", stats.get("bytes_reservable_limit", 0)))


def random_state(key, layout, mesh, dtype) -> dict:
    """A forest state drawn on the device: ``N(0, 1)`` logits, Bernoulli(1/2) leaves."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    leaves = slice(layout.offsets[-1], layout.offsets[-1] + layout.rows(layout.depth))

    @functools.partial(jax.jit, out_shardings=NamedSharding(mesh, P("d")))
    def make(key):
        k1, k2 = jax.random.split(key)
        harm = jax.random.bernoulli(k2, 0.5, (leaves.stop - leaves.start,)).astype(dtype)
        node = jnp.zeros(layout.node_pad, dtype)
        state = dict(
            logits=jax.random.normal(k1, (layout.row_pad, layout.vocab_size), dtype),
            probs=node.at[0].set(1.0),
            h=node.at[leaves].set(harm),
            det=jnp.ones(layout.node_pad, bool),
            grads=jnp.zeros((layout.row_pad, layout.vocab_size), dtype),
            info=jnp.zeros(layout.row_pad, dtype),
            logz=node.at[leaves].set(-harm / LAMBDA),
            eq_kl=jnp.zeros(layout.row_pad, dtype),
        )
        return {k: v[None] for k, v in state.items()}

    return make(key)


def _floor(state: dict) -> float:
    """Best-of-3 seconds to read the inputs (logits, leaves) once and write every output once."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def touch(st):
        read = jnp.sum(st["logits"]) + jnp.sum(st["h"])
        return read, {
            k: jnp.zeros_like(st[k])
            for k in ("h", "det", "grads", "info", "logz", "eq_kl", "probs")
        }

    jax.block_until_ready(touch(state))
    return best_seconds(lambda: jax.block_until_ready(touch(state)), 3)


def bench_device(
    device, vocab_size: int, length: int, dtype, repeats: int, chunk_rows: int = GPU_CHUNK
) -> dict:
    import jax

    from toy_lm.engines import device_tree
    from toy_lm.engines.sharded import make_mesh

    mesh = make_mesh([device])
    layout = device_tree.forest_layout(vocab_size, length, 1, chunk_rows)
    kernels = device_tree.compiled_kernels(mesh, layout.chunk, device.platform)
    state = random_state(jax.random.key(0), layout, mesh, dtype)
    idx = device_tree.index_scalar(0)
    start = time.perf_counter()
    forward = kernels.forward.lower(state, idx).compile()
    backward = kernels.backward.lower(state, idx, idx, np.asarray(LAMBDA, dtype)).compile()
    kernels.store.lower(state, forward(state, idx), idx, idx).compile()
    kernels.store.lower(
        state, backward(state, idx, idx, np.asarray(LAMBDA, dtype)), idx, idx
    ).compile()
    compile_seconds = time.perf_counter() - start
    floor = _floor(state)
    times = []
    for rep in range(repeats + 1):  # the first run warms up
        state = random_state(jax.random.key(rep), layout, mesh, dtype)
        jax.block_until_ready(state)
        start = time.perf_counter()
        state = device_tree.forward_pass(state, layout, mesh)
        state = device_tree.backward_pass(state, layout, mesh, LAMBDA)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    return {
        "name": f"gpu tree V={vocab_size} T={length} {np.dtype(dtype).name}",
        "vocab_size": vocab_size,
        "length": length,
        "sequences": vocab_size**length,
        "dtype": np.dtype(dtype).name,
        "device": device.device_kind,
        "bytes": forest_bytes(vocab_size, length, np.dtype(dtype).itemsize),
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "floor_seconds": floor,
        "ratio_to_floor": seconds / floor,
    }


def float32_check(device, vocab_size: int = 4, length: int = 10) -> dict:
    """float32 against float64 on ``device`` with the re-derived float32 tolerance."""
    from toy_lm.engines.sharded import analyze_sharded, make_mesh

    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    harm = (rng.random(vocab_size**length) < 0.5).astype(np.float64)
    mesh = make_mesh([device])
    high = analyze_sharded(logits, harm, lam=LAMBDA, mesh=mesh)
    low = analyze_sharded(logits, harm, lam=LAMBDA, mesh=mesh, dtype=np.float32)
    tol = float(np.finfo(np.float32).eps) * 16 * (length + 1) * vocab_size**2
    err_h = max(float(np.max(np.abs(a - b))) for a, b in zip(low.cond_harm, high.cond_harm))
    err_i = float(np.max(np.abs(low.harm_information - high.harm_information)))
    return {
        "name": f"gpu float32 vs float64 V={vocab_size} T={length}",
        "vocab_size": vocab_size,
        "length": length,
        "device": device.device_kind,
        "max_abs_error_H": err_h,
        "max_abs_error_I": err_i,
        "tolerance_float32": tol,
        "within_tolerance": bool(max(err_h, err_i) <= tol),
    }


def gpu_rows(
    device, repeats: int, progress, sizes=None, check_size=(4, 10), dtypes=(np.float32, np.float64)
) -> list[dict]:
    """The suite's rows on ``device`` (``sizes``: ``{dtype: (V, T)}``, default the largest)."""
    rows = []
    for dtype in dtypes:
        vocab_size, length = (sizes or {}).get(dtype) or largest_size(
            device_memory(device), np.dtype(dtype).itemsize
        )
        progress(f"gpu {np.dtype(dtype).name}: V={vocab_size} T={length} on {device.device_kind}")
        rows.append(bench_device(device, vocab_size, length, dtype, repeats))
    progress("gpu float32 against float64")
    rows.append(float32_check(device, *check_size))
    return rows


def suite_gpu(repeats: int, quick: bool, progress) -> list[dict]:
    device = gpu_device()
    if device is None:
        progress(SKIP_REASON)
        return [{"name": "gpu", "skipped": True, "reason": SKIP_REASON}]
    sizes = {np.float32: (4, 8), np.float64: (4, 8)} if quick else None
    return gpu_rows(device, repeats, progress, sizes)
