"""The sharded tree engine: identical on 1 and 4 (simulated CPU) devices, equal to analyze_tree.

The 4-device run needs ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX
initializes, so it runs in a subprocess (:data:`SCRIPT`); it reports max errors and bitwise
equality as JSON.
"""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.sharded import analyze_sharded, split_level
from toy_lm.errors import ConfigError
from toy_lm.models.harms import random_decided_harm

FIELDS = (
    "cond_harm",
    "logit_grads",
    "determined",
    "harm_information",
    "equilibrium_kl",
    "per_position_kl",
)


def instance(vocab_size, length, seed=0, binary=True):
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    ref = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    harm = np.asarray(
        random_decided_harm(jax.random.key(seed), vocab_size, length, length // 2, binary=binary)
    )
    return logits, ref, harm


def max_errors(result, exact) -> dict:
    """Max abs difference per field (booleans: number of differing masks)."""
    out = {}
    for name in FIELDS:
        a, b = getattr(result, name), getattr(exact, name)
        if isinstance(a, tuple):
            out[name] = max(
                float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float))))
                for x, y in zip(a, b)
            )
        else:
            out[name] = float(np.max(np.abs(a - b)))
    out["horizon"] = abs(result.horizon - exact.horizon)
    return out


def tolerance(vocab_size, length) -> float:
    """eps x 16 (T+1) V²: the per-level softmax and V-term sums of two engines over T+1 levels."""
    return 16 * (length + 1) * vocab_size**2 * np.finfo(np.float64).eps


@pytest.mark.parametrize(
    "vocab_size, length, chunk, binary, splits",
    [(2, 7, 4, True, (0, 2)), (3, 5, 2, False, (1,)), (4, 4, 1 << 15, True, (0,))],
)
def test_one_device_matches_analyze_tree(vocab_size, length, chunk, binary, splits):
    logits, ref, harm = instance(vocab_size, length, binary=binary)
    exact = analyze_tree(logits, harm, lam=0.5, ref_logits=ref)
    for split in splits:
        result = analyze_sharded(
            logits, harm, lam=0.5, ref_logits=ref, split=split, chunk_rows=chunk
        )
        errors = max_errors(result, exact)
        assert errors["horizon"] == 0 and errors["determined"] == 0
        assert max(errors.values()) <= tolerance(vocab_size, length), errors


def test_kernels_compile_once_for_all_levels(caplog):
    """Four programs serve all 9 levels and their 2 ... 32 chunks: the forward and backward
    chunk kernels, and the store of each one's values (device_tree.store_chunk)."""
    logits, _, harm = instance(2, 9)
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        analyze_sharded(logits, harm, split=0, chunk_rows=7)  # a chunk size no test uses
    kernels = [r for r in caplog.records if "Finished XLA compilation of jit(local)" in r.message]
    assert len(kernels) == 4, [r.message for r in kernels]


def test_split_level_and_errors():
    assert split_level(2, 10, 4) == 2 and split_level(3, 10, 4) == 2
    assert split_level(4, 10, 1) == 0 and split_level(2, 2, 8) == 1
    logits, _, harm = instance(2, 4)
    with pytest.raises(ConfigError, match="split level"):
        analyze_sharded(logits, harm, split=4)


SCRIPT = r"""
import json, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[1])
from test_sharded import FIELDS, instance, max_errors
from toy_lm.engines.analysis import analyze_tree
from toy_lm.engines.sharded import analyze_sharded, make_mesh
out = {"devices": len(jax.devices()), "cases": []}
for vocab_size, length, chunk in ((2, 7, 4), (3, 4, 2)):
    logits, ref, harm = instance(vocab_size, length, binary=False)
    exact = analyze_tree(logits, harm, lam=0.5, ref_logits=ref)
    four_mesh = make_mesh()
    four = analyze_sharded(logits, harm, lam=0.5, ref_logits=ref, mesh=four_mesh,
                           chunk_rows=chunk)
    split = {2: 2, 3: 2}[vocab_size]
    one = analyze_sharded(logits, harm, lam=0.5, ref_logits=ref, mesh=make_mesh(jax.devices()[:1]),
                          split=split, chunk_rows=chunk)
    identical = all(
        all(np.array_equal(x, y) for x, y in zip(getattr(four, f), getattr(one, f)))
        if isinstance(getattr(four, f), tuple)
        else np.array_equal(getattr(four, f), getattr(one, f))
        for f in FIELDS) and four.expected_harm == one.expected_harm and four.horizon == one.horizon
    out["cases"].append({"V": vocab_size, "T": length, "mesh": int(four_mesh.devices.size),
                         "identical": bool(identical), "errors": max_errors(four, exact)})
print(json.dumps(out))
"""


def test_four_simulated_devices_identical_to_one():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, os.path.dirname(__file__)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    for case in out["cases"]:
        assert case["mesh"] == 4
        assert case["identical"], case
        errors = case["errors"]
        assert errors["horizon"] == 0 and errors["determined"] == 0
        assert max(errors.values()) <= tolerance(case["V"], case["T"]), case
