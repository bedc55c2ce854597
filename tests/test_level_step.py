"""The level step (toy_lm.engines.level_step) is the readable specification (toy_lm.engines.tree), and it is *the*
step of every XLA driver: one mutant injected into it changes the host-chunked driver, the
on-device driver and the sharded driver on 1 and on 4 (simulated CPU) devices identically.

The 4-device run needs ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX
initializes, so it runs in a subprocess (:data:`SCRIPT`, as in ``test_sharded.py``) and hands its
results back in an ``.npz``.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from instances import tol
from test_sharded import tolerance

from toy_lm.engines import tree
from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.level_step import (
    Children,
    LevelRows,
    LevelSums,
    combine,
    forward_rows,
    level_step,
    level_sums,
    stack_sums,
)
from toy_lm.engines.sharded import analyze_sharded, make_mesh
from toy_lm.models.harms import determined_masks, random_decided_harm
from toy_lm.mutation import active


def instance(vocab_size, length, tau, seed=0):
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    ref = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    harm = np.asarray(random_decided_harm(jax.random.key(seed), vocab_size, length, tau))
    return logits, ref, harm


def step_through(logits, harm, lam, ref):
    """The whole tree by the level step alone, one block per level (no driver)."""
    vocab_size, length = logits[0].shape[1], len(logits)
    probs = [jnp.ones(1)]
    for level in range(length - 1):
        probs.append(forward_rows(jnp.asarray(logits[level]), probs[-1]))
    rows, totals = [None] * length, [None] * length
    children = Children(h=jnp.asarray(harm).reshape(-1, vocab_size))
    for level in reversed(range(length)):
        out = level_step(
            jnp.asarray(logits[level]),
            probs[level],
            children,
            lam=lam,
            ref_logits=jnp.asarray(ref[level]),
            with_mi=True,
        )
        rows[level] = out
        totals[level] = combine(stack_sums([level_sums(out, probs[level])]))
        if level:
            children = Children(
                h=out.h.reshape(-1, vocab_size),
                det=out.det.reshape(-1, vocab_size),
                logz=out.logz.reshape(-1, vocab_size),
                hb=out.hb.reshape(-1, vocab_size),
            )
    return probs, rows, totals


@pytest.mark.parametrize("vocab_size, length, tau", [(2, 5, 3), (3, 4, 2), (9, 2, 1)])
def test_level_step_equals_the_tree_specification(vocab_size, length, tau):
    """Every per-row output and every level total against toy_lm.engines.tree (V = 9: the reductions
    that are not unrolled)."""
    logits, ref, harm = instance(vocab_size, length, tau)
    lam = 0.4
    probs, rows, totals = step_through(logits, harm, lam, ref)
    b = tol(64 * (length + 1) * vocab_size**length / lam, "(T+1) factors x V**T terms x 1/λ")
    spec_probs = tree.prefix_probs(logits)
    cond = tree.cond_harm(logits, harm)
    grads = tree.logit_grads(logits, harm)
    logz = tree.log_partition(logits, harm, lam)
    eq = tree.equilibrium_policy(logits, harm, lam)
    eq_kl = tree.per_position_kl(eq, tree.log_policy(logits))
    info = tree.harm_information(logits, harm)
    mi = tree.harm_information_mi(logits, harm)
    ref_kl = tree.per_position_kl(logits, ref)
    masks = determined_masks(harm, vocab_size)
    for level in range(length):
        np.testing.assert_allclose(probs[level], spec_probs[level], rtol=0, atol=b)
        out = rows[level]
        np.testing.assert_allclose(out.h, cond[level], rtol=0, atol=b)
        np.testing.assert_allclose(out.grads, grads[level], rtol=0, atol=b)
        np.testing.assert_allclose(out.logz, logz[level], rtol=0, atol=b)
        np.testing.assert_allclose(out.eq, eq[level], rtol=0, atol=b)
        np.testing.assert_array_equal(out.det, masks[level])
        # Exact zeros where the spec promises them.
        assert np.all(np.asarray(out.grads)[masks[level]] == 0.0)
        assert np.all(np.asarray(out.eq_kl)[masks[level]] == 0.0)
    got = {k: np.array([getattr(t, k) for t in totals]) for k in ("info", "eq_kl", "ref_kl", "mi")}
    for key, want in (("info", info), ("eq_kl", eq_kl), ("ref_kl", ref_kl), ("mi", mi)):
        np.testing.assert_allclose(got[key], want, rtol=0, atol=b, err_msg=key)
    assert np.all(got["info"][tau:] == 0.0) and np.all(got["eq_kl"][tau:] == 0.0)


def test_named_results_and_the_combine():
    """The step's results are named (no sum read back by column number); the combine of several
    blocks equals the combine of their union, empty blocks (scale -inf) weigh nothing."""
    assert LevelRows._fields[:4] == ("h", "det", "grads", "info")
    assert {"info", "eq_kl_num", "eq_kl_den", "eq_kl_scale", "ref_kl", "mi", "grad_abs"} == set(
        LevelSums._fields
    )
    logits, ref, harm = instance(3, 3, 2, seed=1)
    probs, rows, _ = step_through(logits, harm, 0.3, ref)
    out, p = rows[2], probs[2]
    assert level_sums(out, p).grad_abs is None  # only when asked
    whole = combine(stack_sums([level_sums(out, p, grad_abs=True)]))
    pieces = [
        level_sums(LevelRows(*(None if x is None else x[a:b] for x in out)), p[a:b], grad_abs=True)
        for a, b in ((0, 2), (2, 2), (2, 9))
    ]
    parts = combine(stack_sums(pieces))
    for field in ("info", "eq_kl", "ref_kl", "mi", "grad_abs"):
        assert getattr(parts, field) == pytest.approx(getattr(whole, field), rel=1e-14, abs=1e-300)
    # Σ|G| of a 9-row block: 27 terms, each rounded once in the sum (eps-sized relative errors).
    assert whole.grad_abs == pytest.approx(
        float(np.abs(out.grads).sum()), rel=27 * np.finfo(np.float64).eps, abs=0
    )


# --- the test of oneness ------------------------------------------------------------------------

#: The mutant: the level step averages the children uniformly instead of by π (unblended: large).
MUTANT = {"step.backward.weights": lambda pi, **_: 0.0 * pi + 1.0 / pi.shape[-1]}
#: A control: the same bug in the readable specification, which no XLA driver runs.
SPEC_MUTANT = {"tree.backward.weights": MUTANT["step.backward.weights"]}
FIELDS = ("cond_harm", "logit_grads", "harm_information", "equilibrium_kl", "per_position_kl")
CASE = dict(vocab_size=2, length=6, tau=4, split=2, chunk=4)


def _flat(result) -> np.ndarray:
    """Every float the XLA drivers share, in one vector (determined masks and horizon too)."""
    parts = []
    for name in FIELDS:
        value = getattr(result, name)
        parts += [np.ravel(x) for x in value] if isinstance(value, tuple) else [np.ravel(value)]
    parts += [np.ravel(m).astype(float) for m in result.determined] + [np.array([result.horizon])]
    return np.concatenate(parts).astype(np.float64)


def _drivers(mesh_devices, split, chunk, logits, ref, harm) -> dict:
    """The XLA drivers' flattened results on the case."""
    kw = dict(lam=0.5, ref_logits=ref)
    return {
        "chunked": _flat(analyze_tree(logits, harm, backend="xla", chunk_rows=chunk, **kw)),
        "on-device": _flat(
            analyze_sharded(
                logits, harm, mesh=make_mesh(mesh_devices[:1]), split=0, chunk_rows=chunk, **kw
            )
        ),
        "sharded-1": _flat(
            analyze_sharded(
                logits, harm, mesh=make_mesh(mesh_devices[:1]), split=split, chunk_rows=chunk, **kw
            )
        ),
    }


SCRIPT = r"""
import sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[1])
from test_level_step import CASE, MUTANT, SPEC_MUTANT, _flat, instance
from toy_lm.mutation import active
from toy_lm.engines.sharded import analyze_sharded, make_mesh
assert len(jax.devices()) == 4
logits, ref, harm = instance(CASE["vocab_size"], CASE["length"], CASE["tau"])
def run():
    return _flat(analyze_sharded(logits, harm, lam=0.5, ref_logits=ref, mesh=make_mesh(),
                                 split=CASE["split"], chunk_rows=CASE["chunk"]))
clean = run()
with active(MUTANT):
    mutant = run()
with active(SPEC_MUTANT):
    spec = run()
np.savez(sys.argv[2], clean=clean, mutant=mutant, spec=spec)
"""


def test_one_mutant_in_the_level_step_changes_every_xla_driver_identically(tmp_path):
    logits, ref, harm = instance(CASE["vocab_size"], CASE["length"], CASE["tau"])
    devices = jax.devices()
    clean = _drivers(devices, CASE["split"], CASE["chunk"], logits, ref, harm)
    with active(MUTANT):
        mutant = _drivers(devices, CASE["split"], CASE["chunk"], logits, ref, harm)
    with active(SPEC_MUTANT):
        spec = _drivers(devices, CASE["split"], CASE["chunk"], logits, ref, harm)

    path = tmp_path / "four.npz"
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, os.path.dirname(__file__), str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = np.load(path)
    clean["sharded-4"], mutant["sharded-4"], spec["sharded-4"] = (
        four["clean"],
        four["mutant"],
        four["spec"],
    )

    b = tolerance(CASE["vocab_size"], CASE["length"])
    base_change = mutant["chunked"] - clean["chunked"]
    assert np.max(np.abs(base_change)) > 1e-3  # the mutant is seen ...
    for name in clean:
        change = mutant[name] - clean[name]
        # ... by every driver, and the same change (up to the drivers' rounding) ...
        np.testing.assert_allclose(change, base_change, rtol=0, atol=2 * b, err_msg=name)
        # ... and a bug in the specification reaches none of them.
        np.testing.assert_array_equal(spec[name], clean[name], err_msg=name)
    # One device or four, at the same split: bitwise the same, with and without the mutant.
    np.testing.assert_array_equal(clean["sharded-4"], clean["sharded-1"])
    np.testing.assert_array_equal(mutant["sharded-4"], mutant["sharded-1"])
