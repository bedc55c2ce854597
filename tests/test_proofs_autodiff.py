"""Tests of proofs_check.autodiff: the routes to g_t agree, and the planted dropped stop-gradient."""

import numpy as np

from proofs_check import autodiff, instances


def test_routes_agree_and_dropped_stop_gradient_gives_the_total():
    inst = instances.make_instance("markov", 2, 3, seed=2, tau=2)
    q = inst.quantities
    assert q["scores"].shape == (8, 3, q["g_total"].shape[0])
    np.testing.assert_allclose(q["g_teacher"], q["g_autodiff"], atol=1e-14)
    np.testing.assert_allclose(q["g_surrogate"], q["g_autodiff"], atol=1e-14)
    dropped = np.asarray(
        autodiff.teacher_forced_grads(inst.policy, inst.params, inst.harm, stop_gradient=False)
    )
    np.testing.assert_allclose(dropped, np.broadcast_to(q["g_total"], dropped.shape), atol=1e-14)
    # The score of position t is the gradient of log π(y_t|y_<t): its expectation vanishes.
    np.testing.assert_allclose(np.tensordot(inst.probs, q["scores"], axes=(0, 0)), 0.0, atol=1e-14)


def test_flatten_keeps_leading_axes():
    tree = {"a": np.ones((3, 2, 2)), "b": np.zeros((3, 5))}
    assert autodiff.flatten(tree, (3,)).shape == (3, 9)
