"""Named injection points for engine mutation testing (a planted bug must be caught by a check).

Every exact engine routes the values that play a *role* in the theory through :func:`point`: the
weights of the backward step (``π`` in ``H_l(u) = Σ_v π(v|u) H_{l+1}(uv)``), the prefix-probability
step, the weight of ``I_t``, the tilt of the equilibrium, the combine of block sums, ... Normally
``point(name, value)`` returns ``value`` untouched (one dictionary look-up at trace time; nothing is
added to a compiled program). Inside :func:`active`, the named points return the value rewritten
by a mutant: a realistic bug in that role. Mutants are written against these role names, not
against source lines, so they survive a rewrite of the engines that keeps the roles.

The catalogue of mutants and the runner live in :mod:`proofs_check.mutants`; this module is only
the mechanism, so that the engines (the lowest layer) need nothing from the checks.

Example:
  >>> import numpy as np
  >>> point("tree.backward.weights", np.ones(2))
  array([1., 1.])
  >>> with active({"tree.backward.weights": lambda pi, **ctx: 2 * pi}):
  ...     point("tree.backward.weights", np.ones(2))
  array([2., 2.])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

__all__ = ["POINTS", "active", "point"]

#: Every injection point: name -> the role the value plays (what a mutant may rewrite).
POINTS: dict[str, str] = {
    "harms.range.children": "a level's (V**l, V) block of children ranges; min == max means determined",
    "tree.prefix_probs.step": "P_{l+1}(uv) = P_l(u) π(v|u): the prefix-probability pass (ctx: level)",
    "tree.backward.weights": "π(v|u) weighting the children in H_l(u) = Σ_v π(v|u) H_{l+1}(uv)",
    "tree.backward.reference": "the reference child c = H_{l+1}(u0) of the exact-zero recursion (ctx: child)",
    "tree.information.weight": "P_t(y_<=t) weighting Δ_t² in I_t = E[Δ_t²] (ctx: level = t)",
    "tree.grads.prefix_weight": "P(u) of G(u)_v = P(u) π(v|u) Δ(uv) (ctx: level)",
    "tree.kl.weight": "P_l(u) weighting the row KL in KL_t (ctx: level, ref_logits)",
    "tree.kl.rows": "(log π, log π_ref) of the row KL Σ_v π (log π - log π_ref) (ctx: level)",
    "tree.tilt": "-h/λ, the leaf exponent of log Z_T",
    "tree.partition.level": "the log Z level read by the equilibrium at level l (ctx: level, logz)",
    "tree.equilibrium.constant": "the row mask 'all children have the same Z' (copy π0; ctx: child)",
    "tree.mi.kl": "KL(Bern(H_t) ‖ Bern(H_{t-1})) per child, in nats",
    "objectives.dpo.margin": "β (r(y) - r(y')), the DPO logistic margin (ctx: ratio, beta)",
    "objectives.dpo.preferred": "the pair mask h(y) < h(y'): which pairs carry a preference (ctx: harm)",
    "tree.asr.prefix_weight": "P0(u) H_k(u), the unnormalized q_k(u) of the prefill attack (ctx: level, probs)",
    "objectives.kl.pair": "(π, π0) order of KL(π ‖ π0) in L_λ",
    "objectives.recovery.dist": "q_k, the forced-prefix distribution of ASR(k) (ctx: k)",
    "objectives.dense.cost": "c_t, the dense recovery cost per position (ctx: position, length)",
    "gradients.autodiff.live": "the level left live (not under stop-gradient) for g_t, t = level + 1",
    "gradients.surrogate.weights": "the stop-gradient tables giving sg(P Δ_t) in the surrogate (ctx: live)",
    "montecarlo.baseline": "the exact baseline b_t(y_<t) = H_{t-1}(y_<t) of REINFORCE (ctx: t, tables, rows, tokens)",
    "step.backward.weights": "π(v|u) weighting the children in the level step that every XLA driver "
    "runs (toy_lm.engines.level_step: chunked, on device, sharded)",
    "analysis.xla.child_h": "the children's H rows handed to one XLA chunk (ctx: start, full)",
    "analysis.xla.level_sums": "the chunks' I_t sums of a level before they are added (ctx: level)",
    "analysis.numba.level_sums": "the Numba blocks' named level sums (cpu_kernels.BlockSums: I_t, KL, "
    "MI ...) before the combine (ctx: level)",
    "analysis.determined": "the determined mask det_l of the analysis (ctx: level, cond, dets)",
    "markov.child_state": "δ(s, v), the automaton state of a child in the DP's child index (S, V)",
    "markov.backward.weights": "π(v|c) weighting the children in the DP's backward step (both scan paths)",
}

_ACTIVE: dict[str, Callable] = {}


def point(name: str, value, **context):
    """``value`` itself, or the active mutant's rewrite of it (see the module docstring).

    Args:
      name: a key of :data:`POINTS` (checked only when a mutant is active, to stay free).
      value: the value playing that role.
      **context: what a mutant may need to know (the level, the chunk start, ...).
    """
    if not _ACTIVE:
        return value
    rewrite = _ACTIVE.get(name)
    return value if rewrite is None else rewrite(value, **context)


@contextlib.contextmanager
def active(rewrites: Mapping[str, Callable]) -> Iterator[None]:
    """Activate rewrites ``{point name: fn(value, **context) -> value}`` for the ``with`` block.

    JAX's compiled programs are cleared on entry and on exit: a point is read when a function is
    traced, so a program traced without the mutant must not be reused with it, nor the reverse.

    Raises:
      KeyError: for a name that is not in :data:`POINTS` (a mutant against a role that no engine
        has any more must fail loudly, not survive silently).
    """
    import jax

    unknown = sorted(set(rewrites) - set(POINTS))
    if unknown:
        raise KeyError(f"unknown injection point(s) {unknown}; known: {sorted(POINTS)}")
    if _ACTIVE:
        raise RuntimeError("a mutant is already active; mutants do not nest")
    jax.clear_caches()
    _ACTIVE.update(rewrites)
    try:
        yield
    finally:
        _ACTIVE.clear()
        jax.clear_caches()
