"""Tests of toy_lm.engines.tree, the exact prefix-tree engine, against a brute-force response oracle.

Tolerances: every compared quantity lies in [0, 1] (or is a log-probability of moderate size) and
is a sum of at most ``n = V**T`` terms, each a product of at most ``T + 1`` rounded factors, so
``c * (T + 1) * n * eps(float64)`` with a small stated ``c`` bounds the rounding of either side.
"""

import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from instances import SMALL_SIZES, examples, instances, tol
from tree_all import engine

from toy_lm.engines import tree
from toy_lm.errors import InputError
from toy_lm.models import harms
from toy_lm.tables import is_binary


def bound(inst, c=16):
    n = inst.vocab_size**inst.length
    return tol(c * (inst.length + 1) * n, f"{c} x (T+1) factors x V**T terms")


LAMBDAS = (0.05, 0.5, 3.0, 30.0)


@settings(max_examples=examples(10))
@given(instances(), st.sampled_from(LAMBDAS))
def test_engine_against_brute_force_jit(inst, lam):
    check_engine(inst, lam, jit=True)


@settings(max_examples=examples(4))
@given(instances(sizes=SMALL_SIZES[:1]), st.sampled_from(LAMBDAS))
def test_engine_against_brute_force_eager(inst, lam):
    check_engine(inst, lam, jit=False)


def check_engine(inst, lam, jit):
    V, T, harm = inst.vocab_size, inst.length, inst.harm
    base = [np.asarray(z) * 0.7 + 0.3 for z in inst.tables]  # a second, different policy
    base[0] = base[0] + np.linspace(0, 1, V)
    binary = is_binary(harm)
    if not binary or harm.max() == 0:  # q_k needs E0[h] > 0; soft harms use the weighted form
        harm = (
            np.where(np.arange(harm.size) == harm.size - 1, 1.0, harm) if harm.max() == 0 else harm
        )
    out = engine(jit)(
        [jnp.asarray(z) for z in inst.tables],
        jnp.asarray(harm),
        [jnp.asarray(z) for z in base],
        lam,
    )
    out = jax.tree_util.tree_map(np.asarray, out)
    b = bound(inst)

    # Oracle over whole responses.
    logP = oracle.response_log_probs(inst.tables)
    P = np.exp(logP)
    masks = harms.determined_masks(harm, V)
    tau_star = harms.horizon_from_masks(masks)
    assert all(np.asarray(x).dtype == np.float64 for x in jax.tree_util.tree_leaves(out))

    # log π rows are normalized; prefix probabilities sum to 1 at every level and match the paths.
    for logp in out["log_policy"]:
        np.testing.assert_allclose(
            np.exp(logp).sum(axis=1), 1.0, rtol=0, atol=tol(4 * V, "V terms")
        )
    for level, p_l in enumerate(out["probs"]):
        assert abs(p_l.sum() - 1) <= b
        np.testing.assert_allclose(p_l, oracle.prefix_mass(P, V, level), rtol=0, atol=b)
    np.testing.assert_allclose(out["resp"], logP, rtol=0, atol=tol(16 * T, "T log-terms"))

    # Conditional expected harm: H_T = h exactly, the brute-force conditional means, and the
    # backward recursion H_{l-1}(u) = Σ_v π(v|u) H_l(uv) at every prefix.
    H = out["H"]
    np.testing.assert_array_equal(H[T], harm)
    for level, (h_l, want) in enumerate(zip(H, oracle.cond_harm(inst.tables, harm))):
        np.testing.assert_allclose(h_l, want, rtol=0, atol=b, err_msg=f"H_{level}")
    for level in range(T):
        pi = np.exp(out["log_policy"][level])
        np.testing.assert_allclose(
            H[level],
            (pi * H[level + 1].reshape(-1, V)).sum(axis=1),
            rtol=0,
            atol=tol(8 * V, "V products summed"),
        )
    assert abs(out["expected"] - np.sum(P * harm)) <= b

    # Martingale increments: Σ_t Δ_t(y) = h(y) - E[h] per response; E[Δ_t | y_<t] = 0;
    # E[Δ_s Δ_t] = 0 for s != t; exactly 0.0 below a determined prefix.
    total = sum(np.repeat(d, V ** (T - t - 1)) for t, d in enumerate(out["deltas"]))
    np.testing.assert_allclose(total, harm - out["expected"], rtol=0, atol=b)
    for level, d in enumerate(out["deltas"]):
        pi = np.exp(out["log_policy"][level])
        np.testing.assert_allclose(
            (pi * d.reshape(-1, V)).sum(axis=1), 0.0, rtol=0, atol=tol(8 * V, "V products summed")
        )
        assert np.all(d.reshape(-1, V)[masks[level]] == 0.0), f"Δ_{level + 1} at determined"
    full = [np.repeat(d, V ** (T - t - 1)) for t, d in enumerate(out["deltas"])]
    for s in range(T):
        for t in range(s + 1, T):
            assert abs(np.sum(P * full[s] * full[t])) <= b

    # Harm information: Σ_t I_t = Var(h); I_t = E[Δ_t²]; exactly 0 beyond the horizon, > 0 at it.
    var = np.sum(P * (harm - np.sum(P * harm)) ** 2)
    assert abs(out["info"].sum() - var) <= b
    np.testing.assert_allclose(out["info"], [np.sum(P * f**2) for f in full], rtol=0, atol=b)
    assert np.all(out["info"][tau_star:] == 0.0)
    if tau_star > 0:
        assert out["info"][tau_star - 1] > 0

    # Mutual-information form (binary harm): Σ_t I_t^MI = entropy of h(Y); exact zeros beyond τ*;
    # and per position the brute-force conditional mutual information.
    if binary:
        eh = np.sum(P * harm)
        assert abs(out["mi"].sum() - oracle.entropy([eh, 1 - eh])) <= tol(
            64 * (T + 1) * V**T, "entropies of V**T-term sums"
        )
        assert np.all(out["mi"][tau_star:] == 0.0)
        for t in range(1, T + 1):
            joint = lambda lvl, hv: oracle.prefix_mass(P * (harm == hv), V, lvl)  # noqa: E731
            ent = lambda lvl: (
                sum(oracle.entropy(joint(lvl, hv)) for hv in (0, 1))
                - oracle.entropy(oracle.prefix_mass(P, V, lvl))
            )  # noqa: E731
            assert abs(out["mi"][t - 1] - (ent(t - 1) - ent(t))) <= tol(
                64 * (T + 1) * V**T, "entropies of V**T-term sums"
            )

    # Per-position KL against another policy: chain rule, non-negativity, zero against itself.
    logQ = oracle.response_log_probs(base)
    assert abs(out["kl"].sum() - np.sum(P * (logP - logQ))) <= bound(inst, 64)
    assert np.all(out["kl"] >= -b)
    assert np.all(out["kl_self"] == 0.0)

    # Equilibrium: π*_λ over whole responses is π0 exp(-h/λ) normalized; rows normalized;
    # log Z_0 = log Σ P0 exp(-h/λ); equal to log π0 exactly at determined prefixes; chain rule.
    logP0 = oracle.response_log_probs(base)
    tilted = logP0 - harm / lam
    log_norm = np.log(np.sum(np.exp(tilted - tilted.max()))) + tilted.max()
    np.testing.assert_allclose(
        out["logz"][0][0],
        log_norm,
        rtol=0,
        atol=tol(64 * (T + 1) * V**T / lam, "log-sum-exp, scale 1/λ"),
    )
    eq_resp = oracle.response_log_probs(out["eq"])
    np.testing.assert_allclose(
        np.exp(eq_resp), np.exp(tilted - log_norm), rtol=0, atol=bound(inst, 64) * max(1.0, 1 / lam)
    )
    for level, e in enumerate(out["eq"]):
        np.testing.assert_allclose(np.exp(e).sum(axis=1), 1.0, rtol=0, atol=tol(8 * V, "V terms"))
        logp0 = np.asarray(tree.log_policy(base)[level])
        np.testing.assert_array_equal(e[masks[level]], logp0[masks[level]])
    eq_P = np.exp(eq_resp)
    assert abs(out["eq_kl"].sum() - np.sum(eq_P * (eq_resp - logP0))) <= bound(inst, 64) / lam
    assert np.all(out["eq_kl_normalized"][tau_star:] == 0.0)
    assert np.all(np.abs(out["eq_kl"][tau_star:]) <= tol(8 * V, "re-normalizing a normalized row"))

    # Prefill attack: q_k = P0(y_<=k | h) (harm-weighted), ASR(k) = E_{q_k}[H_k].
    P0 = np.exp(logP0)
    H_brute = oracle.cond_harm(inst.tables, harm)
    assert abs(out["asr_curve"][0] - out["expected"]) <= b
    for k in range(T):
        q = oracle.prefix_mass(P0 * harm, V, k) / np.sum(P0 * harm)
        assert abs(out["asr_curve"][k] - np.sum(q * H_brute[k])) <= bound(inst, 64)
        if k == T // 2:
            np.testing.assert_allclose(out["q_k"], q, rtol=0, atol=bound(inst, 64))
            assert abs(out["asr"] - np.sum(q * H_brute[k])) <= bound(inst, 64)


@settings(max_examples=examples(6))
@given(instances(sizes=SMALL_SIZES))
def test_logit_grads_equal_autodiff(inst):
    """T4: the closed form equals jax.grad of Σ_y P(y) h(y) w.r.t. the logit tables, and is
    exactly zero at determined prefixes."""
    tables = [jnp.asarray(z) for z in inst.tables]
    got = jax.jit(tree.logit_grads)(tables, inst.harm)
    want = jax.jit(jax.grad(oracle.expected_harm_of_tables))(tables, inst.harm)
    masks = harms.determined_masks(inst.harm, inst.vocab_size)
    for level, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=0, atol=bound(inst), err_msg=f"level {level}")
        assert np.all(np.asarray(g)[masks[level]] == 0.0)


def test_logit_grads_check_detects_a_wrong_gradient():
    """Planted error: closed-form gradients of a perturbed harm do not match autodiff."""
    rng = np.random.default_rng(0)
    tables = [jnp.asarray(rng.normal(size=(2**l, 2))) for l in range(3)]
    harm = np.array([0, 1, 1, 0, 1, 0, 0, 1.0])
    wrong = harm.copy()
    wrong[3] = 0.9
    got = tree.logit_grads(tables, wrong)
    want = jax.grad(oracle.expected_harm_of_tables)(tables, harm)
    assert any(not np.allclose(g, w, rtol=0, atol=1e-10) for g, w in zip(got, want))


@settings(max_examples=examples(20))
# XLA on CPU flushes subnormal numbers to zero, so the constant is drawn from normal floats.
@given(st.integers(2, 4), st.floats(-50, 50, allow_subnormal=False), st.integers(0, 2**31 - 1))
def test_backward_step_gives_exact_zeros_for_constant_children(vocab_size, value, seed):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(vocab_size), size=6)
    child = np.full((6, vocab_size), value)
    parent, delta = tree.backward_step(jnp.asarray(pi), jnp.asarray(child))
    assert np.all(np.asarray(parent) == value)
    assert np.all(np.asarray(delta) == 0.0)
    # A plain Σ_v π_v c would typically leave a residue; the engine must not.
    varied = child.copy()
    varied[:, -1] += 1.0
    parent, delta = tree.backward_step(jnp.asarray(pi), jnp.asarray(varied))
    np.testing.assert_allclose(
        parent,
        (pi * varied).sum(axis=1),
        rtol=0,
        atol=tol(8 * vocab_size * (abs(value) + 1), "V products"),
    )


def test_length_one_and_constant_harm(maybe_jit):
    tables = [jnp.asarray([[0.3, -1.0, 2.0]])]
    harm = jnp.asarray([0.0, 1.0, 0.5])
    H = maybe_jit(tree.cond_harm)(tables, harm)
    pi = np.exp(oracle.log_softmax(np.asarray(tables[0])))[0]
    assert abs(H[0][0] - pi @ np.asarray(harm)) <= tol(8, "3 terms")
    info = maybe_jit(tree.harm_information)(tables, harm)
    assert info.shape == (1,)
    constant = jnp.full((9,), 0.25)
    tabs = [jnp.zeros((1, 3)), jnp.ones((3, 3))]
    assert np.all(np.asarray(maybe_jit(tree.harm_information)(tabs, constant)) == 0.0)
    assert maybe_jit(tree.expected_harm)(tabs, constant) == 0.25
    grads = maybe_jit(tree.logit_grads)(tabs, constant)
    assert all(np.all(np.asarray(g) == 0.0) for g in grads)


def test_extreme_lambda_and_logits_stay_finite():
    """Log-space partition functions: no underflow at λ = 1e-3 or with logits of ±30."""
    rng = np.random.default_rng(1)
    base = [jnp.asarray(30 * np.sign(rng.normal(size=(3**l, 3)))) for l in range(3)]
    harm = jnp.asarray((rng.random(27) < 0.5).astype(float))
    eq = tree.equilibrium_policy(base, harm, 1e-3)
    for e in eq:
        assert np.all(np.isfinite(e))
        np.testing.assert_allclose(np.exp(e).sum(axis=1), 1.0, rtol=0, atol=tol(8 * 3, "3 terms"))
    assert np.all(np.isfinite(tree.log_partition(base, harm, 1e-3)[0]))


@pytest.mark.parametrize("lam", [0.0, -1.0])
def test_nonpositive_lambda_is_refused(lam):
    tables = [jnp.zeros((1, 2))]
    with pytest.raises(InputError, match="positive"):
        tree.equilibrium_policy(tables, jnp.asarray([0.0, 1.0]), lam)


def test_bad_tables_are_refused():
    with pytest.raises(InputError):
        tree.cond_harm([jnp.zeros((1, 2)), jnp.zeros((3, 2))], jnp.zeros(4))
    with pytest.raises(InputError):
        tree.per_position_kl([jnp.zeros((1, 2))], [jnp.zeros((2, 2))])
