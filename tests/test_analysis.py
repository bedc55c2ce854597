"""Tests of toy_lm.engines.analysis.analyze_tree: the chunked full analysis equals the readable engine
(toy_lm.engines.tree), the numpy reference (toy_lm.engines.reference) and the harm's own determined masks, on
every output key, with the exact zeros the engine promises.

Tolerances: the issue's acceptance bound is 1e-10 absolute on every ``--out`` key; the checks
below use ``c * (T+1) * V**T * eps(float64)`` (at most ~2e-11 here), which is tighter.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import examples, instances, tol
from tree_all import engine

from experiments.cli.analyze import output_arrays
from toy_lm.engines import tree
from toy_lm.engines.analysis import (
    BACKENDS,
    analyze_tree,
    compile_kernels,
    numba_available,
)
from toy_lm.engines.reference import reference_analysis
from toy_lm.errors import InputError
from toy_lm.models import harms
from toy_lm.tables import is_binary

ISSUE_BOUND = 1e-10

#: Numba is an optional extra: its tests skip, with the reason, where it is not installed.
needs_numba = pytest.mark.skipif(
    not numba_available(), reason='numba not installed (pip install "harm-horizon[numba]")'
)
#: Every backend, the Numba one marked.
BACKEND_PARAMS = [pytest.param(b, marks=needs_numba) if b == "numba" else b for b in BACKENDS]


def bound(vocab_size, length, c=64, lam=1.0):
    return tol(
        c * (length + 1) * vocab_size**length * max(1.0, 1 / lam),
        f"{c} x (T+1) factors x V**T terms (x 1/λ for log Z)",
    )


def reference_policy(inst):
    return [np.asarray(z) * 0.5 - 0.2 * np.arange(z.shape[1]) for z in inst.tables]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@settings(max_examples=examples(8))
@given(inst=instances(), lam=st.sampled_from((None, 0.05, 0.5, 30.0)))
def test_every_key_matches_engine_and_reference(backend, inst, lam):
    V, T, harm = inst.vocab_size, inst.length, inst.harm
    with_ref = lam is not None  # fewer kernel variants to compile; each flag is still covered
    ref = reference_policy(inst) if with_ref else None
    binary = is_binary(harm)
    # XLA: chunks of 2 rows, so several chunks per level, padded tails (V = 3), one compile for
    # all T. (Numba's blocks of 1024 rows are split in test_backends_agree_on_multi_block_levels.)
    result = analyze_tree(
        inst.tables,
        harm,
        lam=lam,
        ref_logits=ref,
        mutual_information=binary,
        backend=backend,
        chunk_rows=2,
    )
    got = output_arrays(result, lam)
    want = reference_analysis(inst.tables, harm, lam=lam, ref_logits=ref)
    assert set(got) - {"harm_information_mi"} == set(want)
    b = bound(V, T, lam=lam or 1.0)
    for key, value in want.items():
        value, mine = np.asarray(value), np.asarray(got[key])
        assert mine.shape == value.shape, key
        if value.dtype == np.bool_ or key == "horizon":
            np.testing.assert_array_equal(mine, value, err_msg=key)
        else:
            assert mine.dtype == np.float64, key
            np.testing.assert_allclose(mine, value, rtol=0, atol=min(b, ISSUE_BOUND), err_msg=key)

    # The readable engine agrees too (including I_t^MI), and the masks are the harm's own.
    tables = [jnp.asarray(z) for z in inst.tables]
    out = engine(True)(tables, jnp.asarray(harm), tables, lam or 1.0)
    for level in range(T + 1):
        np.testing.assert_allclose(result.cond_harm[level], out["H"][level], rtol=0, atol=b)
    for level in range(T):
        np.testing.assert_allclose(result.logit_grads[level], out["grads"][level], rtol=0, atol=b)
    np.testing.assert_allclose(result.harm_information, out["info"], rtol=0, atol=b)
    if binary:
        np.testing.assert_allclose(result.harm_information_mi, out["mi"], rtol=0, atol=b)
    if lam is not None:
        for level in range(T):
            np.testing.assert_allclose(
                result.equilibrium_logits[level], out["eq"][level], rtol=0, atol=b
            )
        np.testing.assert_allclose(result.equilibrium_kl, out["eq_kl_normalized"], rtol=0, atol=b)
    if with_ref:
        kl = engine(True)(tables, jnp.asarray(harm), [jnp.asarray(z) for z in ref], 1.0)["kl"]
        np.testing.assert_allclose(result.per_position_kl, kl, rtol=0, atol=b)
    masks = harms.determined_masks(harm, V)
    for got_mask, want_mask in zip(result.determined, masks):
        np.testing.assert_array_equal(got_mask, want_mask)
    assert result.horizon == harms.horizon_from_masks(masks)

    # Exact zeros: G at determined prefixes, I_t (both forms) and equilibrium KL beyond τ*.
    tau_star = result.horizon
    for level in range(T):
        assert np.all(result.logit_grads[level][masks[level]] == 0.0)
    assert np.all(result.harm_information[tau_star:] == 0.0)
    if binary:
        assert np.all(result.harm_information_mi[tau_star:] == 0.0)
    if lam is not None:
        assert np.all(result.equilibrium_kl[tau_star:] == 0.0)
        logp = tree.log_policy(inst.tables)
        for level in range(T):
            np.testing.assert_allclose(
                result.equilibrium_logits[level][masks[level]],
                np.asarray(logp[level])[masks[level]],
                rtol=0,
                atol=tol(8, "one log-softmax"),
            )
    np.testing.assert_array_equal(result.determined_fraction(), [m.mean() for m in masks[:-1]])
    np.testing.assert_allclose(
        result.grad_abs_sum(), [np.abs(g).sum() for g in result.logit_grads], rtol=1e-15, atol=0
    )


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@settings(max_examples=examples(6))
@given(inst=instances(), lam=st.sampled_from((None, 0.05, 2.0)))
def test_summary_without_tables_equals_the_summary_of_the_tables(backend, inst, lam):
    """``tables=False`` (what ``analyze`` runs without ``--out``) gives the per-level results of
    the full analysis: equal to the bit, but ``Σ|G|``, which the XLA backend sums per chunk."""
    V, T, harm = inst.vocab_size, inst.length, inst.harm
    kwargs = dict(
        lam=lam,
        ref_logits=reference_policy(inst) if lam is not None else None,
        mutual_information=is_binary(harm),
        backend=backend,
        chunk_rows=2 if backend == "xla" else None,
    )
    want = analyze_tree(inst.tables, harm, **kwargs).summary()
    got = analyze_tree(inst.tables, harm, tables=False, **kwargs)
    assert type(got).__name__ == "TreeSummary"
    for field in got._fields:
        a, b = getattr(got, field), getattr(want, field)
        if field == "grad_abs_sums":
            # V**(l+1) non-negative terms per level, summed in another order: each sum is within
            # (terms) eps of the other, relative.
            terms = np.array([V ** (l + 1) for l in range(T)], float)
            assert np.all(np.abs(a - b) <= terms * np.finfo(np.float64).eps * b), (a, b)
        elif b is None:
            assert a is None, field
        else:
            np.testing.assert_array_equal(a, b, err_msg=field)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("vocab_size, length", [(2, 1), (4, 3), (5, 2)])
def test_summary_without_tables_at_other_sizes(backend, vocab_size, length):
    """The sizes the default Hypothesis profile does not draw: ``T = 1`` (the root is the leaf
    level), Numba's ``V = 4`` block function and its generic one (``V = 5``)."""
    rng = np.random.default_rng(vocab_size * 10 + length)
    tables = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    ref = [z * 0.5 for z in tables]
    harm = (rng.random(vocab_size**length) < 0.5).astype(float)
    kwargs = dict(lam=0.7, ref_logits=ref, mutual_information=True, backend=backend)
    want = analyze_tree(tables, harm, **kwargs).summary()
    got = analyze_tree(tables, harm, tables=False, **kwargs)
    for field in got._fields:
        a, b = getattr(got, field), getattr(want, field)
        if field == "grad_abs_sums":  # another summation order: within (terms) eps, relative
            terms = vocab_size ** np.arange(1, length + 1)
            assert np.all(np.abs(a - b) <= terms * np.finfo(np.float64).eps * b), (a, b)
        else:
            np.testing.assert_array_equal(a, b, err_msg=field)


@pytest.mark.parametrize("chunk_rows", [1, None])
def test_chunking_does_not_change_results(chunk_rows):
    rng = np.random.default_rng(1)
    tables = [rng.normal(size=(3**l, 3)) for l in range(4)]
    ref = [rng.normal(size=(3**l, 3)) for l in range(4)]
    harm = np.repeat((rng.random(27) < 0.5).astype(float), 3)
    kwargs = dict(lam=0.3, ref_logits=ref, mutual_information=True)
    base = output_arrays(analyze_tree(tables, harm, backend="xla", chunk_rows=2, **kwargs), 0.3)
    other = output_arrays(
        analyze_tree(tables, harm, backend="xla", chunk_rows=chunk_rows, **kwargs), 0.3
    )
    for key, value in base.items():
        np.testing.assert_allclose(
            other[key], value, rtol=0, atol=bound(3, 4, lam=0.3), err_msg=key
        )


def test_every_key_check_detects_a_wrong_harm():
    """Planted error: the analysis of a slightly different harm fails the 1e-10 comparison."""
    rng = np.random.default_rng(0)
    tables = [rng.normal(size=(3**l, 3)) for l in range(3)]
    harm = (rng.random(27) < 0.5).astype(float)
    moved = harm.copy()
    moved[5] = 0.5 if harm[5] == 0 else 0.999
    got = output_arrays(analyze_tree(tables, moved, lam=0.5), 0.5)
    want = reference_analysis(tables, harm, lam=0.5)
    bad = [k for k in want if not np.allclose(got[k], want[k], rtol=0, atol=ISSUE_BOUND)]
    assert {"expected_harm", "H_0", "grad_2", "equilibrium_kl"} <= set(bad)


def test_length_one_and_docstring_example():
    tables = [np.zeros((2**l, 2)) for l in range(3)]
    assert analyze_tree(tables, np.repeat([0.0, 1.0], 4)).expected_harm == 0.5
    result = analyze_tree([np.array([[0.0, np.log(3.0)]])], np.array([1.0, 0.0]), lam=1.0)
    assert abs(result.expected_harm - 0.25) <= tol(4, "two terms")
    assert result.horizon == 1 and result.cond_harm[1].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_extreme_inputs_stay_finite_and_exact(backend):
    """λ = 1e-3 (Z down to e^-1000, log space) and logits of ±30 (probabilities ~1e-26)."""
    rng = np.random.default_rng(3)
    tables = [30 * np.sign(rng.normal(size=(3**l, 3))) for l in range(4)]
    harm = np.repeat((rng.random(9) < 0.5).astype(float), 9)
    ref = [np.zeros_like(z) for z in tables]
    # Chunks of 2 and every option on: the kernels the property test above compiles.
    result = analyze_tree(
        tables,
        harm,
        lam=1e-3,
        ref_logits=ref,
        mutual_information=True,
        backend=backend,
        chunk_rows=2,
    )
    want = reference_analysis(tables, harm, lam=1e-3, ref_logits=ref)
    for level in range(4):
        assert np.all(np.isfinite(result.equilibrium_logits[level]))
        np.testing.assert_allclose(
            result.equilibrium_logits[level],
            want[f"equilibrium_logits_{level}"],
            rtol=0,
            atol=tol(64 * 5 * 81 * 1e3, "log-sum-exp at scale 1/λ"),
        )
    assert np.all(np.isfinite(result.equilibrium_kl))
    assert np.all(result.equilibrium_kl[2:] == 0.0)
    np.testing.assert_allclose(
        result.equilibrium_kl,
        want["equilibrium_kl"],
        rtol=1e-9,
        atol=tol(64 * 5 * 81, "(T+1) factors x V**T terms"),
    )


def test_bad_arguments_are_refused():
    tables = [np.zeros((2**l, 2)) for l in range(2)]
    harm = np.array([0.0, 1.0, 0.5, 0.5])
    with pytest.raises(InputError, match="binary"):
        analyze_tree(tables, harm, mutual_information=True)
    with pytest.raises(InputError, match="lambda"):
        analyze_tree(tables, harm, lam=0.0)
    with pytest.raises(InputError, match="ref_logits"):
        analyze_tree(tables, harm, ref_logits=[np.zeros((1, 3))])
    with pytest.raises(InputError, match="ref_logits"):
        analyze_tree(tables, harm, ref_logits=tables[:1])
    with pytest.raises(InputError, match="logits_1"):
        analyze_tree([np.zeros((1, 2)), np.zeros((3, 2))], harm)
    with pytest.raises(InputError, match=r"harm has shape \(3,\) .* need \(4,\)"):
        analyze_tree(tables, harm[:3])
    with pytest.raises(InputError, match="unknown backend 'cuda'"):
        analyze_tree(tables, harm, backend="cuda")


def test_default_backend_is_xla_and_follows_jax_dtype(monkeypatch):
    """The default is XLA, in JAX's float dtype; without numba, asking for it says how to get it,
    and the CLI's choice falls back to XLA whatever the size."""
    from toy_lm.engines import analysis

    assert BACKENDS[0] == "xla"
    tables = [np.zeros((2**l, 2)) for l in range(2)]
    result = analyze_tree(tables, np.array([0.0, 1.0, 1.0, 1.0]))
    assert result.cond_harm[0].dtype == np.dtype(jnp.result_type(float))
    assert analysis.choose_backend(2, 3) == "xla"
    monkeypatch.setattr(analysis, "numba_available", lambda: False)
    assert analysis.choose_backend(2, 40) == "xla"
    with pytest.raises(InputError, match=r"needs numba.*harm-horizon\[numba\]"):
        analyze_tree(tables, np.zeros(4), backend="numba")
    monkeypatch.setattr(analysis, "numba_available", lambda: True)
    assert analysis.choose_backend(2, 22) == "numba" and analysis.choose_backend(2, 21) == "xla"


def test_compile_kernels_reports_seconds():
    seconds = compile_kernels(2, 3, lam=True, ref=True, mutual_information=True, chunk_rows=2)
    assert 0 < seconds < 600


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_large_vocabulary_reductions(backend):
    """V above UNROLL_MAX_V takes the plain-reduction path of the XLA kernels, and V > 4 the
    generic (not vocabulary-specialized) block function of the Numba kernels: same answers."""
    from toy_lm.engines.level_step import UNROLL_MAX_V

    vocab_size = UNROLL_MAX_V + 1
    rng = np.random.default_rng(4)
    tables = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(2)]
    ref = [rng.normal(size=z.shape) for z in tables]
    harm = np.repeat((rng.random(vocab_size) < 0.5).astype(float), vocab_size)
    harm[:vocab_size] = np.arange(vocab_size) % 2  # the first prefix stays undetermined
    got = output_arrays(analyze_tree(tables, harm, lam=0.7, ref_logits=ref, backend=backend), 0.7)
    want = reference_analysis(tables, harm, lam=0.7, ref_logits=ref)
    for key, value in want.items():
        np.testing.assert_allclose(
            got[key], value, rtol=0, atol=bound(vocab_size, 2, lam=0.7), err_msg=key
        )


@needs_numba
@pytest.mark.parametrize("vocab_size, length", [(3, 8), (2, 12), (4, 7), (5, 6)])
def test_backends_agree_on_multi_block_levels(vocab_size, length):
    """Levels of several Numba blocks (1024 rows; a partial last block for V = 3 and 5), for the
    vocabulary-specialized block functions (V = 2, 4) and the generic one (V = 3, 5): every
    output, every option, against the numpy reference and the XLA backend."""
    rng = np.random.default_rng(vocab_size)
    tables = [2 * rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    ref = [rng.normal(size=z.shape) for z in tables]
    tau = length - 2
    harm = np.repeat(
        (rng.random(vocab_size**tau) < 0.5).astype(float), vocab_size ** (length - tau)
    )
    assert vocab_size ** (length - 1) > 1024
    kwargs = dict(lam=0.3, ref_logits=ref, mutual_information=True)
    fast = analyze_tree(tables, harm, backend="numba", **kwargs)
    xla = analyze_tree(tables, harm, backend="xla", **kwargs)
    got, other = output_arrays(fast, 0.3), output_arrays(xla, 0.3)
    want = reference_analysis(tables, harm, lam=0.3, ref_logits=ref)
    b = min(bound(vocab_size, length, lam=0.3), ISSUE_BOUND)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=b, err_msg=key)
        np.testing.assert_allclose(got[key], other[key], rtol=0, atol=b, err_msg=key)
    np.testing.assert_allclose(fast.harm_information_mi, xla.harm_information_mi, rtol=0, atol=b)
    assert fast.horizon == xla.horizon == length - 2
    assert np.all(fast.equilibrium_kl[tau:] == 0.0) and np.all(fast.harm_information[tau:] == 0.0)


@needs_numba
def test_numba_results_do_not_depend_on_the_thread_count():
    """Level sums are accumulated per block of fixed size and combined in block order."""
    import numba

    rng = np.random.default_rng(7)
    tables = [rng.normal(size=(3**l, 3)) for l in range(8)]
    harm = rng.random(3**8)
    kwargs = dict(lam=0.4, ref_logits=[0.5 * z for z in tables], backend="numba")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = output_arrays(analyze_tree(tables, harm, **kwargs), 0.4)
        numba.set_num_threads(before)
        many = output_arrays(analyze_tree(tables, harm, **kwargs), 0.4)
    finally:
        numba.set_num_threads(before)
    for key, value in one.items():
        np.testing.assert_array_equal(many[key], value, err_msg=key)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["logits", "ref_logits"])
@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_non_finite_tables_are_refused_not_analyzed(bad, where, level, backend):
    """The Numba kernels test the logits themselves as they read them (no numpy pre-pass):
    every level, both backends, the same message."""
    tables = [np.zeros((2**l, 2)) for l in range(3)]
    ref = [np.zeros((2**l, 2)) for l in range(3)]
    (tables if where == "logits" else ref)[level][-1, level % 2] = bad
    with pytest.raises(InputError, match=f"{where}_{level} has 1 non-finite"):
        analyze_tree(tables, np.repeat([0.0, 1.0], 4), lam=0.5, ref_logits=ref, backend=backend)


def test_non_finite_logits_are_found_in_any_block_of_a_large_level():
    """A NaN in the last block of a level of several blocks (V = 3: the generic kernel)."""
    rng = np.random.default_rng(5)
    tables = [rng.normal(size=(3**l, 3)) for l in range(8)]
    tables[7][-1, 2] = np.nan
    harm = (rng.random(3**8) < 0.5).astype(float)
    for backend in ("xla", "numba") if numba_available() else ("xla",):
        with pytest.raises(InputError, match="logits_7 has 1 non-finite"):
            analyze_tree(tables, harm, lam=0.5, backend=backend)
