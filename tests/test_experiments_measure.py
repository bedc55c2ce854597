"""experiments.measure: exact measurements against brute-force enumeration in numpy."""

import jax
import numpy as np
import pytest

from experiments import measure
from experiments.config import WorldConfig
from experiments.world import make_world
from toy_lm.models.harms import response_horizons
from toy_lm.tables import all_prefixes, prefix_index

TOL = 1e-12


@pytest.fixture(scope="module")
def setting():
    world = make_world(WorldConfig(length=4, num_harmful=2))
    rng = np.random.default_rng(0)
    base = world.behaviour

    def perturb(tables, scale):
        return tuple(np.asarray(t) + scale * rng.normal(size=np.shape(t)) for t in tables)

    model = (perturb(base[0], 1.0), perturb(base[1], 0.5))
    return world, base, model


def _np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _seq_probs(tables, seqs, vocab_size):
    p = np.ones(len(seqs))
    for level, z in enumerate(tables):
        pi = _np_softmax(np.asarray(z))[prefix_index(seqs[:, :level], vocab_size)]
        p *= pi[np.arange(len(seqs)), seqs[:, level]]
    return p


def test_model_measurements_match_brute_force(setting):
    world, base, model = setting
    V, T = world.vocab_size, world.length
    seqs = all_prefixes(V, T)
    harm = np.asarray(world.harm)
    p0, p = _seq_probs(base[0], seqs, V), _seq_probs(model[0], seqs, V)
    m = measure.model_measurements(world, model, base, jax.random.key(0), 8)
    assert m["expected_harm"] == pytest.approx(np.sum(p * harm), abs=TOL)
    assert m["utility"] == pytest.approx(
        np.sum(_seq_probs(model[1], seqs, V) * np.asarray(world.utility)), abs=TOL
    )
    q = p0 * harm / np.sum(p0 * harm)  # base harmful responses
    tau = response_horizons(harm, V)  # their horizons
    kl_tf, kl_beyond, kl_own = np.zeros(T), np.zeros(T), np.zeros(T)
    for level in range(T):
        rows = prefix_index(seqs[:, :level], V)
        a, b = (
            _np_softmax(np.asarray(model[0][level]))[rows],
            _np_softmax(np.asarray(base[0][level]))[rows],
        )
        kl = np.sum(a * np.log(a / b), axis=1)
        kl_tf[level] = np.sum(q * kl)
        kl_beyond[level] = np.sum(q * kl * (level >= tau))
        kl_own[level] = np.sum(p * kl)
    np.testing.assert_allclose(m["per_position_kl"], kl_tf, rtol=0, atol=TOL)
    np.testing.assert_allclose(m["per_position_kl_beyond_horizon"], kl_beyond, rtol=0, atol=TOL)
    np.testing.assert_allclose(m["per_position_kl_own"], kl_own, rtol=0, atol=TOL)
    assert max(m["per_position_kl_beyond_horizon"]) > 0.01  # a perturbed model spills everywhere
    # prefill ASR(k): E over base harmful prefixes of the model's conditional harm
    for k in range(T):
        rows = prefix_index(seqs[:, :k], V)
        q_k = np.bincount(rows, weights=q, minlength=V**k)
        h_k = np.bincount(rows, weights=p * harm, minlength=V**k) / np.bincount(
            rows, weights=p, minlength=V**k
        )
        assert m["prefill_asr"][k] == pytest.approx(np.sum(q_k * h_k), abs=TOL)


def test_martingale_paths_start_at_expected_harm_and_end_at_harm(setting):
    world, _, model = setting
    responses, paths = measure.martingale_paths(jax.random.key(3), model[0], world.harm, 50)
    assert paths.shape == (50, world.length + 1)
    np.testing.assert_allclose(paths[:, 0], paths[0, 0])
    harm = np.asarray(world.harm)[prefix_index(responses, world.vocab_size)]
    np.testing.assert_array_equal(paths[:, -1], harm)
    # sampling follows the model: with many draws the empirical harm rate approaches E[h]
    many, _ = measure.martingale_paths(jax.random.key(4), model[0], world.harm, 4000)
    rate = np.asarray(world.harm)[prefix_index(many, world.vocab_size)].mean()
    expected = float(paths[0, 0])
    assert abs(rate - expected) < 5 * np.sqrt(expected * (1 - expected) / 4000)


def test_base_measurements(setting):
    world, base, _ = setting
    m = measure.base_measurements(world, base, (3.0, 300.0))
    harm = np.asarray(world.harm)
    assert m["typical_harmful_response"].startswith("comply harmful harmful")
    assert m["harmful_path_horizon"] == 3 and m["global_horizon"] == world.length
    # the floor is the ASR of any model at prefixes already decided: here the base's own ASR
    # at k = T-1 is almost all floor, at k = 0 the floor is 0
    assert m["prefill_asr_floor"][0] == 0.0
    assert 0 < m["prefill_asr_floor"][-1] <= m["prefill_asr"][-1] + TOL
    # T1: Σ_t I_t = Var(h)
    assert sum(m["harm_information"]) == pytest.approx(
        _variance(base[0], harm, world.vocab_size), abs=1e-12
    )
    # THEORY.md T7c: 2 λ² KL_t / I_t -> 1 for large λ (error ~ 1/λ)
    ratio = 2 * 300.0**2 * np.asarray(m["equilibrium"]["kl"][1]) / np.asarray(m["harm_information"])
    np.testing.assert_allclose(ratio, 1.0, atol=0.02)


def _variance(tables, harm, vocab_size):
    seqs = all_prefixes(vocab_size, len(tables))
    p = _seq_probs(tables, seqs, vocab_size)
    mean = np.sum(p * harm)
    return np.sum(p * (harm - mean) ** 2)


def test_equilibrium_measurements_are_zero_beyond_the_horizon(setting):
    world, base, _ = setting
    eq = measure.equilibrium_measurements(world, base, 0.3, 1.0)
    assert max(map(abs, eq["rlhf"]["per_position_kl_beyond_horizon"])) == 0.0  # T7b, exact
    assert max(eq["recovery_dense"]["per_position_kl_beyond_horizon"]) > 1e-3  # T9b
    assert eq["recovery_dense"]["expected_harm"] < eq["rlhf"]["expected_harm"]


def test_sampling_from_tables_is_deterministic_in_the_key(setting):
    world, _, model = setting
    a = measure.sample_from_tables(jax.random.key(1), model[0], 10)
    b = measure.sample_from_tables(jax.random.key(1), model[0], 10)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (10, world.length) and a.min() >= 0 and a.max() < world.vocab_size
