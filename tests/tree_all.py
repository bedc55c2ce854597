"""Every :mod:`toy_lm.engines.tree` quantity in one function, shared by the engine and analysis tests
(one compiled program per size when jitted, reused across test files)."""

import functools

import jax

from toy_lm.engines import tree


def _engine(tables, harm, base, lam):
    """Every tree.py function in one program (one compile per size when jitted)."""
    eq = tree.equilibrium_policy(base, harm, lam)
    return dict(
        log_policy=tree.log_policy(tables),
        probs=tree.prefix_probs(tables),
        H=tree.cond_harm(tables, harm),
        expected=tree.expected_harm(tables, harm),
        deltas=tree.increments(tables, harm),
        grads=tree.logit_grads(tables, harm),
        info=tree.harm_information(tables, harm),
        mi=tree.harm_information_mi(tables, harm),
        kl=tree.per_position_kl(tables, base),
        kl_self=tree.per_position_kl(tables, tables),
        resp=tree.response_log_probs(tables),
        logz=tree.log_partition(base, harm, lam),
        eq=eq,
        eq_kl=tree.per_position_kl(eq, base),
        eq_kl_normalized=tree.per_position_kl(eq, tree.log_policy(base)),
        # One prefix length k = T // 2 for the two building blocks (each call re-walks the tree);
        # the curve covers every k.
        q_k=tree.harmful_prefix_dist(base, harm, len(tables) // 2),
        asr=tree.prefill_asr(
            tables, harm, tree.harmful_prefix_dist(base, harm, len(tables) // 2), len(tables) // 2
        ),
        asr_curve=tree.prefill_asr_curve(tables, harm, base),
    )


@functools.cache
def engine(jit: bool):
    return jax.jit(_engine) if jit else _engine
