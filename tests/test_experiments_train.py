"""experiments.train: the optax loops, per-position gradient maps, exact zeros beyond the horizon,
determinism, and a shared-weight run that measures spill-over."""

import jax
import numpy as np
import optax
import pytest

from experiments import base_model, recipes, train
from experiments.config import OBJECTIVES, with_overrides
from experiments.measure import row_kl
from experiments.presets import preset
from experiments.world import HARMFUL, make_world
from toy_lm.models.policy_factory import POLICY_KINDS, make_policy

EPS = np.finfo(np.float64).eps


def _trained(objective, **overrides):
    cfg = with_overrides(preset("tiny"), {"align.objective": objective, **overrides})
    world = make_world(cfg.world)
    policy = base_model.policy_from_config(cfg.policy, world)
    base = train.get_base(cfg, world, policy, None)
    obj = recipes.make_objective(cfg, policy, world, base.params, base.tables)
    params, hist = train.align(cfg, policy, obj, world, base.params, jax.random.key(1))
    return cfg, world, policy, base, params, hist


@pytest.fixture(scope="module")
def rlhf_run():
    return _trained("rlhf")


def _determined_kl(world, policy, params, base):
    tables = policy.level_tables(params, HARMFUL)
    kls = row_kl(tables, base.tables[HARMFUL])
    return [np.asarray(k)[world.determined[level]] for level, k in enumerate(kls)]


def test_tabular_rlhf_never_moves_determined_prefixes(rlhf_run):
    """THEORY.md T5/T8: KL beyond the horizon is zero to rounding at every determined prefix."""
    cfg, world, policy, base, params, hist = rlhf_run
    assert hist.expected_harm[-1] < 0.6 * hist.expected_harm[0]  # it did align
    tol = 8 * EPS * world.vocab_size  # one log-softmax row: a few roundings per entry
    det_kl = _determined_kl(world, policy, params, base)
    assert sum(k.size for k in det_kl) > 0
    assert max(float(np.max(np.abs(k), initial=0.0)) for k in det_kl) <= tol
    # the logits there are not just close: plain gradient descent left them bit for bit
    for level, mask in enumerate(world.determined[:-1]):
        np.testing.assert_array_equal(
            np.asarray(params[level][HARMFUL])[mask], np.asarray(base.params[level][HARMFUL])[mask]
        )
    # while undetermined prefixes did move
    assert any(
        float(np.max(k)) > 1e-3
        for k in row_kl(policy.level_tables(params, HARMFUL), base.tables[HARMFUL])
    )


def test_the_check_flags_an_objective_that_moves_determined_prefixes():
    """Planted counterpart: augmentation trains refusals after harm is done, so the check fails."""
    _, world, policy, base, params, _ = _trained("augmentation", **{"align.steps": 5})
    tol = 8 * EPS * world.vocab_size
    assert (
        max(float(np.max(k, initial=0.0)) for k in _determined_kl(world, policy, params, base))
        > tol
    )


def test_measured_kl_beyond_horizon_and_spill_over_are_zero_for_tabular_rlhf(rlhf_run):
    from experiments.measure import model_measurements

    _, world, policy, base, params, _ = rlhf_run
    tables = base_model.all_tables(policy, params)
    m = model_measurements(world, tables, base.tables, jax.random.key(0), 4)
    tol = 8 * EPS * world.vocab_size
    assert max(map(abs, m["per_position_kl_beyond_horizon"])) <= tol
    assert max(map(abs, m["spill_over_kl"])) <= tol
    assert max(m["per_position_kl"]) > 1e-3
    np.testing.assert_array_equal(m["benign_per_position_kl"], m["benign_per_position_kl"])


def test_per_position_gradients_sum_to_the_gradient_and_match_level_gradients(rlhf_run):
    """The ``T`` per-position pull-backs (``by_level=False``, what a policy without separable
    levels uses): they sum to the plain step's gradient, and for a tabular policy each is the
    gradient of its level's tables."""
    cfg, world, policy, base, _, _ = rlhf_run
    obj = recipes.make_objective(cfg, policy, world, base.params, base.tables)
    opt = optax.sgd(1.0)
    state = opt.init(base.params)
    key = jax.random.key(0)
    with_map = jax.jit(train.step_function(obj, opt, policy, True, by_level=False))
    plain = train.make_step(obj, opt, policy, False)
    p1, _, loss1, norms, harm1, _ = with_map(
        base.params, state, key, obj.data, world.harm, world.utility
    )
    p2, _, loss2, nan_norms, _, _ = plain(
        base.params, state, key, obj.data, world.harm, world.utility
    )
    assert float(harm1) == pytest.approx(base_harm(world, base), abs=1e-14)
    assert float(loss1) == float(loss2) and np.all(np.isnan(nan_norms))
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * EPS)
    # tabular: g_t is the gradient with respect to the level-(t-1) tables (both prompts)
    grads = jax.grad(lambda p: obj.loss(obj.features(p, None), None, obj.data))(base.params)
    expected = [float(np.linalg.norm(np.asarray(g))) for g in grads]
    np.testing.assert_allclose(np.asarray(norms), expected, rtol=1e-12)


@pytest.mark.parametrize("objective", [o for o in OBJECTIVES if o != "none"])
def test_one_pull_back_by_level_equals_the_per_position_pull_backs(objective):
    """A tabular policy's gradient map from one pull-back (``by_level``, the default for it) is
    the map of the ``T`` per-position pull-backs: same parameters after the step, same norms."""
    cfg = with_overrides(preset("tiny"), {"align.objective": objective})
    world = make_world(cfg.world)
    policy = base_model.policy_from_config(cfg.policy, world)
    assert policy.separable_levels
    base = train.get_base(cfg, world, policy, None)
    obj = recipes.make_objective(cfg, policy, world, base.params, base.tables)
    opt = optax.sgd(0.5)
    args = (base.params, opt.init(base.params), jax.random.key(3), obj.data, world.harm)
    outs = [
        jax.jit(train.step_function(obj, opt, policy, True, by_level=b))(*args, world.utility)
        for b in (True, False)
    ]
    (p1, _, loss1, norms1, *_), (p2, _, loss2, norms2, *_) = outs
    assert float(loss1) == float(loss2)
    assert np.all(np.asarray(norms1) > 0)
    # the same sums of the same numbers (zeros added elsewhere): equal to a few ulps
    np.testing.assert_allclose(norms1, norms2, rtol=4 * EPS, atol=0)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_allclose(a, b, rtol=0, atol=4 * EPS * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_only_tabular_policies_declare_separable_levels(kind):
    """The flag is a claim about the parameters (one leaf per level, leaf ``t`` alone makes
    position ``t``'s logits): true for the tabular policy only. Forced on a policy whose
    parameters are not one leaf per level (Markov: one array shared by the positions), the
    one-pull-back map refuses instead of recording wrong norms."""
    policy = make_policy(kind, vocab_size=3, length=3, num_prompts=2)
    assert policy.separable_levels == (kind == "tabular")
    if kind != "markov":
        return
    cfg = with_overrides(preset("tiny"), {"policy.kind": "markov"})
    world = make_world(cfg.world)
    policy = base_model.policy_from_config(cfg.policy, world)
    base = train.get_base(cfg, world, policy, None)
    obj = recipes.make_objective(cfg, policy, world, base.params, base.tables)
    opt = optax.sgd(0.5)
    step = train.step_function(obj, opt, policy, True, by_level=True)
    args = (base.params, opt.init(base.params), jax.random.key(3), obj.data, world.harm)
    with pytest.raises(TypeError, match="separable_levels needs parameters with one leaf"):
        step(*args, world.utility)


def base_harm(world, base):
    from toy_lm.engines import tree

    return float(tree.expected_harm(base.tables[HARMFUL], world.harm))


def test_history_records_every_step(rlhf_run):
    cfg, _, _, _, _, hist = rlhf_run
    assert len(hist.loss) == len(hist.expected_harm) == len(hist.utility) == cfg.align.steps
    assert hist.grad_steps == list(range(cfg.align.steps))
    assert np.asarray(hist.grad_norms).shape == (cfg.align.steps, cfg.world.length)


def test_same_seed_same_numbers(tmp_path):
    cfg = with_overrides(
        preset("tiny"),
        {
            "align.objective": "reinforce",
            "align.baseline": "mean",
            "align.steps": 3,
            "attack.objective": "sft",
        },
    )
    first = train.train_and_evaluate(cfg, str(tmp_path / "a"))
    second = train.train_and_evaluate(cfg, str(tmp_path / "b"))
    for key in ("base", "aligned", "training", "attack", "equilibria"):
        assert first[key] == second[key], key
    other = train.train_and_evaluate(with_overrides(cfg, {"seed": 1}), None)
    assert other["aligned"] != first["aligned"]
    assert (tmp_path / "a" / "runs" / f"{first['run_id']}.json").exists()


def test_base_model_cache_round_trip(tmp_path):
    cfg = preset("tiny")
    world = make_world(cfg.world)
    policy = base_model.policy_from_config(cfg.policy, world)
    trained = train.get_base(cfg, world, policy, str(tmp_path))
    assert max(trained.sft_gap) < 1e-3  # tabular SFT reproduces the synthetic behaviour
    loaded = train.get_base(cfg, world, policy, str(tmp_path))
    for a, b in zip(
        jax.tree_util.tree_leaves(trained.tables), jax.tree_util.tree_leaves(loaded.tables)
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("markov", {}),
        (
            "transformer",
            {
                "policy.d_model": 8,
                "base.steps": 10,
                "base.learning_rate": 0.03,
                "align.optimizer": "adam",
                "align.learning_rate": 0.03,
                "align.steps": 1,
            },
        ),
    ],
)
def test_shared_weight_policies_train_and_measure_spill_over(kind, extra):
    cfg = with_overrides(
        preset("tiny"),
        {"policy.kind": kind, "align.steps": 3, "attack.steps": 0, "measure.num_paths": 2, **extra},
    )
    result = train.train_and_evaluate(cfg, None)
    aligned = result["aligned"]
    assert result["training"]["expected_harm"][-1] < result["training"]["expected_harm"][0]
    assert len(result["training"]["grad_norms"]) == cfg.align.steps
    assert all(np.isfinite(aligned["per_position_kl"]))
    # shared weights: the conditionals at determined prefixes move too (measured, not assumed)
    assert sum(aligned["spill_over_kl"]) > 0
