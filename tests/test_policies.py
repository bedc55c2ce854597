"""Tests of toy_lm.models.policies: the derived interface (level tables, teacher forcing, log-probs,
sampling) for policies of every kind, and the table-like parameterizations themselves."""

import functools
import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import (
    POLICY_KINDS,
    SIZES,
    SMALL_SIZES,
    examples,
    init_params,
    instances,
    jitted,
    make_policy,
    tol,
)

from toy_lm.engines import tree
from toy_lm.errors import InputError
from toy_lm.models.policies import MarkovPolicy, Policy, PositionalPolicy, TabularPolicy
from toy_lm.tables import all_prefixes


@functools.cache
def _views(policy):
    """One jitted program per policy computing every derived view over all responses."""

    def views(params):
        responses = jnp.asarray(all_prefixes(policy.vocab_size, policy.length))
        return dict(
            tables=policy.level_tables(params),
            base_tables=Policy.level_tables(policy, params),
            forced=policy.teacher_forced_logits(params, responses),
            token_log_probs=policy.token_log_probs(params, responses),
            log_prob=policy.log_prob(params, responses),
        )

    return jax.jit(views)


@settings(max_examples=examples(7))
@given(instances(sizes=SMALL_SIZES, harm_kinds=("decided",)))
def test_derived_views_agree_with_next_logits(inst):
    """level_tables (a subclass's fast path), teacher_forced_logits, token_log_probs and log_prob
    all agree with next_logits evaluated prefix by prefix, and the probabilities sum to 1."""
    policy, params, vocab_size, length = inst.policy, inst.params, inst.vocab_size, inst.length
    views = _views(policy)(params)
    same = tol(64, "the same logits by another order of operations")
    for level, (table, base) in enumerate(zip(inst.tables, views["base_tables"])):
        assert table.shape == (vocab_size**level, vocab_size)
        np.testing.assert_allclose(table, base, rtol=0, atol=same)
    responses = all_prefixes(vocab_size, length)
    forced = np.asarray(views["forced"])
    assert forced.shape == (vocab_size**length, length, vocab_size)
    logp = [np.asarray(jax.nn.log_softmax(z, axis=-1)) for z in inst.tables]
    want_tok = np.zeros((vocab_size**length, length))
    for level in range(length):
        rows = responses[:, :level] @ (vocab_size ** np.arange(level - 1, -1, -1))
        np.testing.assert_allclose(forced[:, level], inst.tables[level][rows], rtol=0, atol=same)
        want_tok[:, level] = logp[level][rows, responses[:, level]]
    np.testing.assert_allclose(
        views["token_log_probs"], want_tok, rtol=0, atol=tol(64 * length, "log-softmax of T rows")
    )
    seq = np.asarray(views["log_prob"])
    np.testing.assert_allclose(
        seq,
        np.asarray(tree.response_log_probs(inst.tables)),
        rtol=0,
        atol=tol(64 * length, "T log-probabilities summed"),
    )
    probs = np.exp(seq)
    assert probs.dtype == np.float64 and np.all(probs > 0)
    assert abs(probs.sum() - 1) <= tol(
        8 * (length + vocab_size**length), "T factors per term, V**T terms summed"
    )


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_init_is_deterministic_in_the_key(kind):
    policy = make_policy(kind, 2, 3)  # shapes other tests compile too
    leaves = lambda p: [np.asarray(x) for x in jax.tree_util.tree_leaves(p)]  # noqa: E731
    first = leaves(policy.init(jax.random.key(7)))
    again = leaves(policy.init(jax.random.key(7)))
    other = leaves(policy.init(jax.random.key(8)))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert all(a.dtype == np.float64 for a in first if np.issubdtype(a.dtype, np.floating))


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_prompts_condition_the_policy(kind):
    policy = make_policy(kind, 2, 3, num_prompts=2)
    params = init_params(policy, kind, 0)
    t0 = jitted(policy, "level_tables")(params, 0)
    t1 = jitted(policy, "level_tables")(params, 1)
    assert not np.allclose(np.asarray(t0[0]), np.asarray(t1[0]))
    # next_logits with the same prompt index reads the same conditional.
    root = jitted(policy, "next_logits")(params, jnp.zeros((1, 0), jnp.int32), 1)
    np.testing.assert_allclose(root, t1[0], rtol=0, atol=tol(64, "jit reorders ops"))


def _exact_response_probs(policy, params, vocab_size, length):
    responses = jnp.asarray(all_prefixes(vocab_size, length))
    return np.exp(np.asarray(jitted(policy, "log_prob")(params, responses)))


def _frequencies(samples, vocab_size):
    rows = np.asarray(samples) @ (vocab_size ** np.arange(samples.shape[1] - 1, -1, -1))
    return np.bincount(rows, minlength=vocab_size ** samples.shape[1]) / samples.shape[0]


def _sampling_bound(probs, n):
    """Five binomial standard errors per cell plus 1/n: the chance that any of <= 81 cells
    exceeds it is below 81 * 6e-7 (normal tail at 5 sigma), so a failure is a real bias."""
    return 5 * np.sqrt(probs * (1 - probs) / n) + 1 / n


@settings(max_examples=examples(4))
@given(instances(sizes=((2, 3), (3, 2)), harm_kinds=("decided",), scale=1.0))
def test_sampling_frequencies_match_exact_probabilities(inst):
    n = 20000
    probs = _exact_response_probs(inst.policy, inst.params, inst.vocab_size, inst.length)
    sample = jitted(inst.policy, "sample", static_argnames="num_samples")
    samples = sample(jax.random.key(inst.seed), inst.params, num_samples=n)
    assert samples.shape == (n, inst.length) and samples.dtype == jnp.int32
    freq = _frequencies(samples, inst.vocab_size)
    assert np.all(np.abs(freq - probs) <= _sampling_bound(probs, n))


def test_sampling_check_detects_a_wrong_distribution():
    """Planted error: samples of one policy against the probabilities of a shifted policy."""
    policy = TabularPolicy(2, 3)
    params = policy.init(jax.random.key(1))
    shifted = (params[0] + jnp.array([[[0.5, 0.0]]]),) + params[1:]
    n = 20000
    sample = jitted(policy, "sample", static_argnames="num_samples")
    freq = _frequencies(sample(jax.random.key(2), params, num_samples=n), 2)
    right = _exact_response_probs(policy, params, 2, 3)
    assert np.all(np.abs(freq - right) <= _sampling_bound(right, n))
    wrong = _exact_response_probs(policy, shifted, 2, 3)
    assert not np.all(np.abs(freq - wrong) <= _sampling_bound(wrong, n))


def test_sampling_is_deterministic_in_the_key():
    policy = TabularPolicy(2, 3)  # the planted-error test compiles the same sampler
    params = policy.init(jax.random.key(0))
    sample = jitted(policy, "sample", static_argnames="num_samples")
    a = sample(jax.random.key(5), params, num_samples=20000)
    b = sample(jax.random.key(5), params, num_samples=20000)
    c = sample(jax.random.key(6), params, num_samples=20000)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@settings(max_examples=examples(10))
@given(st.sampled_from(SIZES), st.integers(0, 2), st.integers(0, 2**31 - 1))
def test_markov_context_is_last_k_tokens_left_padded(vt, order, seed):
    vocab_size, length = vt
    policy = MarkovPolicy(vocab_size, length, order=order)
    params = init_params(policy, "markov", seed)
    tabs = jitted(policy, "level_tables")(params)
    for level in range(length):
        for row, prefix in enumerate(itertools.product(range(vocab_size), repeat=level)):
            padded = (0,) * order + prefix
            context = 0
            for token in padded[len(padded) - order :]:
                context = context * vocab_size + token
            np.testing.assert_array_equal(tabs[level][row], params[0, level, context])


def test_positional_rows_are_the_position_logits():
    policy = PositionalPolicy(3, 3, num_prompts=2)
    params = policy.init(jax.random.key(0))
    for level, table in enumerate(policy.level_tables(params, prompt=1)):
        np.testing.assert_array_equal(table, np.broadcast_to(params[1, level], table.shape))


def test_tabular_tables_are_the_parameters():
    policy = TabularPolicy(2, 3, num_prompts=2)
    shapes = jax.eval_shape(lambda k: policy.init(k, scale=2.0), jax.random.key(0))
    assert [p.shape for p in shapes] == [(2, 1, 2), (2, 2, 2), (2, 4, 2)]
    params = init_params(policy, "tabular", 0)
    for level, table in enumerate(policy.level_tables(params, prompt=1)):
        np.testing.assert_array_equal(table, params[level][1])
    tabs = [np.arange(2.0**l * 2).reshape(-1, 2) for l in range(3)]
    for got, want in zip(policy.level_tables(policy.from_tables(tabs)), tabs):
        np.testing.assert_array_equal(got, want)


#: Run under XLA's default options (what the command line compiles with): the one-off options of
#: this suite (LLVM level 0) compile a lone draw and a draw inside a larger program a last bit apart.
TO_THE_BIT = """
import jax, numpy as np, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from toy_lm.models.policies import TabularPolicy
policy, key = TabularPolicy(3, 4, num_prompts=2), jax.random.key(7)
for scale in (1.0, 0.3, 2.5):
    draw = np.asarray(scale * jax.random.normal(key, (2 * (1 + 3 + 9 + 27) * 3,), jnp.float64))
    start = 0
    on_host = policy.init_tables(key, scale=scale)
    for level, table in enumerate(policy.init(key, scale=scale)):
        size = 2 * 3**level * 3
        want = draw[start : start + size].reshape(2, 3**level, 3)
        assert np.array_equal(np.asarray(table), want), (scale, level)
        assert isinstance(on_host[level], np.ndarray), type(on_host[level])
        assert np.array_equal(on_host[level], want), ("init_tables", scale, level)
        start += size
    # views of one flat draw, read-only
    assert all(np.shares_memory(t, on_host[0].base) for t in on_host)
    assert not any(t.flags.writeable for t in on_host)
print("bitwise")
"""


def test_tabular_init_is_the_scaled_flat_draw_to_the_bit():
    """init draws and cuts in one compiled program; its values are the eager ``scale * normal``
    of the flat draw (what earlier versions returned), cut in order, to the bit (fused, XLA
    contracts the scaling into the draw's last multiply-add and changes the last bit of many
    entries); init_tables gives the same values as numpy views of one draw."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-c", TO_THE_BIT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "bitwise", done.stderr[-2000:]


def test_level_tables_jit_equals_eager(maybe_jit):
    policy = MarkovPolicy(2, 3, order=2)
    params = init_params(policy, "markov2", 3)
    got = maybe_jit(policy.level_tables)(params)
    want = Policy.level_tables(policy, params)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=1, length=2), "vocab_size=1 is too small"),
        (dict(vocab_size=2, length=0), "length=0 is too small"),
        (dict(vocab_size=2, length=2, num_prompts=0), "num_prompts=0"),
        (dict(vocab_size=2.0, length=2), "must be a Python int"),
        (dict(vocab_size=True, length=2), "must be a Python int"),
    ],
)
def test_bad_sizes_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        TabularPolicy(**kwargs)


def test_bad_markov_order_and_responses_are_refused():
    with pytest.raises(InputError, match="Markov order"):
        MarkovPolicy(2, 2, order=-1)
    policy = TabularPolicy(2, 3)
    with pytest.raises(InputError, match=r"shape \(B, T=3\)"):
        policy.log_prob(policy.init(jax.random.key(0)), jnp.zeros((4, 2), jnp.int32))
