"""Engine mutants: realistic bugs planted in the engines (not in the checks' inputs).

Each :class:`Mutant` rewrites one or more named injection points of the engines
(:data:`toy_lm.mutation.POINTS`: the roles a computation plays - the backward step's weights, the
prefix-probability pass, the tilt, the chunk combine, ...). :func:`run_mutant` activates it, runs
the checks that read what it changes on a small suite, and reports which checks *killed* it: a kill
is a failed comparison between an engine and an independent side (a part with
``independent=True``, :meth:`proofs_check.results.CheckResult.killed_by_comparison`); a check that
raises is reported as an error, never as a kill.

Subtle by construction: a mutant that rewrites a value blends the buggy value into the right one,
``x + s (bug(x) - x)`` with strength ``s`` = :data:`STRENGTH`, so it moves what it touches by well
under 1e-3 relative; structural mutants (an index, a mask, a dropped stop-gradient) cannot be
blended, and their measured size is reported as it is. A mutant that no check can kill because it
changes nothing mathematically is marked ``equivalent`` with the reason.

Adding a mutant: pick the injection point of the role (or add one with
:func:`toy_lm.mutation.point` in the engine and a line in ``POINTS``), append a :class:`Mutant` to
:data:`MUTANTS` with the checks that read that role, and run ``harm-horizon check --mutants``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from toy_lm.mutation import active

__all__ = [
    "EQ_CHECKS",
    "GRAD_CHECKS",
    "H_CHECKS",
    "INFO_CHECKS",
    "MUTANTS",
    "Mutant",
    "MutantReport",
    "OBJECTIVE_CHECKS",
    "PARAM_CHECKS",
    "STRENGTH",
    "baseline_engine_outputs",
    "blend",
    "mutant_suite",
    "run_mutant",
    "run_mutants",
]

#: Blend strength of value mutants: the bug moves the value by ``1e-4`` of its own size.
STRENGTH = 1e-4

#: Checks reading each family of outputs (a mutant runs against the checks of its families).
H_CHECKS = ("T1", "T1-sum", "T1-orth", "T1-var", "T4", "T5", "T12")
INFO_CHECKS = ("T1-var", "T12")
GRAD_CHECKS = ("T4", "T5")
EQ_CHECKS = ("T7a", "T7b", "T7c", "T7d", "T7e")
OBJECTIVE_CHECKS = ("T5-kl", "T8", "T9", "T9-train", "T9b", "T11", "T11-train")
PARAM_CHECKS = ("T3", "T3-total", "T5", "T6", "T10")


def blend(bug: Callable, strength: float = STRENGTH) -> Callable:
    """A point rewrite ``x -> x + s (bug(x) - x)`` with ``s = strength`` (:data:`STRENGTH`, or
    smaller for a bug so large that 1e-4 of it moves an output by more than 1e-3)."""

    def rewrite(value, **context):
        return value + strength * (bug(value, **context) - value)

    return rewrite


def _uniform_like(pi, **_):
    return 0.0 * pi + 1.0 / pi.shape[-1]


def _parent_prob(probs, level, **_):
    """``P_l(u) -> P_{l-1}(parent(u))``: the level above's probability, repeated to its children."""
    if level == 0:
        return probs
    vocab = round(probs.shape[0] ** (1.0 / level))
    return jnp.repeat(probs.reshape(-1, vocab).sum(axis=1), vocab)


def _base_prefix_weight(probs, level, ref_logits, **_):
    from toy_lm.engines.tree import prefix_probs

    return prefix_probs(ref_logits)[level]


def _first_two_children(block, **_):
    """Ranges (or masks) over the first two children only: right for ``V = 2`` only."""
    return block[:, :2]


def _constant_first_two(mask, child, **_):
    return jnp.all(child[:, :2] == child[:, :1], axis=1, keepdims=True)


def _determined_first_two(mask, level, cond, dets, **_):
    """``det_l(u)`` from the first two children: both determined and with equal ``H``."""
    if level == len(dets) - 1:
        return mask
    child_h = np.asarray(cond[level + 1]).reshape(mask.shape[0], -1)
    child_d = np.asarray(dets[level + 1]).reshape(mask.shape[0], -1)
    return child_d[:, 0] & child_d[:, 1] & (child_h[:, 0] == child_h[:, 1])


def _swap_pair(pair, **_):
    return pair[1], pair[0]


def _previous_chunk_row(rows, start, full, **_):
    """The first row of every chunk but the first read from the row before (a boundary off by one)."""
    if start == 0 or rows.shape[0] == 0:
        return rows
    out = np.array(rows, copy=True)
    out[0] = full[start - 1]
    return out


def _drop_last_chunk(sums, **_):
    return sums[:-1] if len(sums) > 1 else sums


class _PreviousLevel:
    """Level sums of the level processed before (the driver's accumulator updated one level late),
    on the Numba blocks' named sums (:class:`toy_lm.engines.cpu_kernels.BlockSums`)."""

    def __init__(self):
        self.previous = None

    def __call__(self, sums, level, **_):
        prev, self.previous = self.previous, np.array(sums.info, copy=True)
        if prev is None or prev.shape != sums.info.shape:
            return sums
        return sums._replace(info=sums.info + STRENGTH * (prev - sums.info))


def _baseline_one_late(value, t, tables, rows, tokens=None, **_):
    if tokens is None or t + 1 >= len(tables):
        return value
    vocab = tables[t + 1].shape[0] // tables[t].shape[0]
    return tables[t + 1][rows * vocab + tokens]


def _live_next(level, length, **_):
    return (level + 1) % length


def _live_weights(frozen, live, **_):
    return live


def _token0_child_state(trans, **_):
    """The last token's child state taken from token 0's transition (a column slip)."""
    return trans.at[:, -1].set(trans[:, 0])


def _dpo_beta_one_side(margin, ratio, beta, **_):
    return beta * ratio[:, None] - ratio[None, :]


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A planted engine bug.

    Attributes:
      name: short id.
      description: the bug, as a developer would write it.
      rewrites: ``{injection point: rewrite(value, **context)}``.
      checks: the check ids that read what it changes.
      engines: the engines it can change (its checks run on instances read through these).
      structural: True when the bug cannot be blended (its size is reported as measured).
      equivalent: why no check can kill it (it changes nothing mathematically), or "".
      stateful: a factory of rewrites with state (built fresh for each run).
    """

    name: str
    description: str
    rewrites: dict
    checks: tuple[str, ...]
    engines: tuple[str, ...] = ("tree",)
    structural: bool = False
    equivalent: str = ""
    stateful: Callable | None = None

    def active(self):
        rewrites = dict(self.rewrites)
        if self.stateful is not None:
            rewrites.update(self.stateful())
        return active(rewrites)


_ENGINE_ALL = ("tree", "analysis", "xla", "markov")

#: The catalogue.
MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "H-uniform-weights",
        "backward step averages the children uniformly instead of by π",
        {"tree.backward.weights": blend(_uniform_like)},
        H_CHECKS + ("T9", "T10", "T13", "T14"),
    ),
    Mutant(
        "H-temperature",
        "backward step uses π² (renormalized), a temperature slip",
        {"tree.backward.weights": blend(lambda pi, **_: pi**2 / (pi**2).sum(-1, keepdims=True))},
        H_CHECKS + ("T13",),
    ),
    Mutant(
        "H-plain-sum",
        "backward step without the reference child: H = Σ_v π H_v (leaves "
        "rounding residues where the children are equal)",
        {"tree.backward.reference": lambda ref, **_: 0.0 * ref},
        H_CHECKS + ("T13",),
        structural=True,
    ),
    Mutant(
        "H-last-child-reference",
        "reference child c = H(u, V-1) instead of H(u, 0)",
        {"tree.backward.reference": lambda ref, child, **_: child[:, -1:]},
        H_CHECKS,
        structural=True,
        equivalent="any child is an exact reference: c + Σ_v π(v|u)(H_v - c) = Σ_v π H_v for every "
        "c, and constant children still give exact zeros; only rounding can differ",
    ),
    Mutant(
        "P-drop-conditional",
        "prefix-probability pass forgets the conditional: P_{l+1}(uv) = P_l(u)",
        {
            "tree.prefix_probs.step": blend(
                lambda x, **_: 0.0 * x + x.sum(axis=1, keepdims=True), strength=STRENGTH / 4
            )
        },
        GRAD_CHECKS + INFO_CHECKS + ("T7b", "T13", "T3", "T6", "T14-natural"),
    ),
    Mutant(
        "I-parent-probability",
        "I_t weighted by the parent's probability P_{t-1}(y_<t) instead of the child's P_t(y_<=t)",
        {"tree.information.weight": blend(_parent_prob, strength=STRENGTH / 4)},
        INFO_CHECKS,
    ),
    Mutant(
        "G-level-off-by-one",
        "logit gradient G(u) weighted by the level above's probability",
        {"tree.grads.prefix_weight": blend(_parent_prob)},
        GRAD_CHECKS,
    ),
    Mutant(
        "KL-weighted-by-base-prefixes",
        "KL_t weighted by π0's prefix probabilities instead of π's",
        {"tree.kl.weight": blend(_base_prefix_weight)},
        EQ_CHECKS + ("T8", "T5-kl"),
    ),
    Mutant(
        "KL-direction-swapped",
        "row KL computed as KL(π0 ‖ π) instead of KL(π ‖ π0)",
        {"tree.kl.rows": _swap_pair},
        EQ_CHECKS + ("T8", "T14"),
        structural=True,
    ),
    Mutant(
        "tilt-scale",
        "tilt exp(-h/λ) with λ off by a factor 1 + 1e-4",
        {"tree.tilt": lambda x, **_: x * (1.0 + STRENGTH)},
        EQ_CHECKS,
    ),
    Mutant(
        "tilt-sign",
        "tilt exp(+h/λ) (sign slip), blended",
        {"tree.tilt": blend(lambda x, **_: -x)},
        EQ_CHECKS,
    ),
    Mutant(
        "Z-parent-level",
        "equilibrium reads the parent's log Z for the children (level off by "
        "one): π* = π0 renormalized",
        {
            "tree.partition.level": blend(
                lambda z, level, logz, **_: jnp.repeat(
                    logz[level], z.shape[0] // logz[level].shape[0]
                )
            )
        },
        EQ_CHECKS,
    ),
    Mutant(
        "equilibrium-constant-first-two",
        "equilibrium copies π0 where the first two children's Z agree (right for V = 2 only)",
        {"tree.equilibrium.constant": _constant_first_two},
        ("T7a", "T7b", "T7e"),
        structural=True,
    ),
    Mutant(
        "MI-in-bits",
        "I_t^MI in bits (log2) instead of nats, blended",
        {"tree.mi.kl": blend(lambda kl, **_: kl / np.log(2.0))},
        ("T13",),
    ),
    Mutant(
        "masks-first-two-children",
        "determined masks from the first two children's ranges only (right for V = 2 only)",
        {"harms.range.children": _first_two_children},
        ("T12", "T5", "T7b"),
        structural=True,
    ),
    Mutant(
        "DPO-beta-one-side",
        "DPO margin β r(y) - r(y') instead of β (r(y) - r(y'))",
        {"objectives.dpo.margin": blend(_dpo_beta_one_side)},
        ("T11", "T11-train"),
    ),
    Mutant(
        "DPO-ties-both-ways",
        "tied pairs (y = y' included) carry a preference in both directions: "
        "h(y) <= h(y') instead of h(y) < h(y')",
        {"objectives.dpo.preferred": lambda mask, harm, **_: harm[:, None] <= harm[None, :]},
        ("T11", "T11-train"),
        structural=True,
    ),
    Mutant(
        "ASR-prefixes-by-probability",
        "the prefill attack's q_k(u) weighted by P0(u) alone, not "
        "P0(u) H_k(u) (harm left out), blended",
        {"tree.asr.prefix_weight": blend(lambda w, probs, **_: probs * w.sum())},
        ("T9", "T9-train"),
    ),
    Mutant(
        "L-lambda-KL-reversed",
        "L_λ regularizes with KL(π0 ‖ π) instead of KL(π ‖ π0)",
        {"objectives.kl.pair": _swap_pair},
        ("T5-kl", "T8", "T14", "T14-natural"),
        structural=True,
    ),
    Mutant(
        "recovery-q-uniform",
        "ASR(k) averaged over uniform forced prefixes instead of q_k",
        {"objectives.recovery.dist": blend(_uniform_like)},
        ("T9", "T9-train"),
    ),
    Mutant(
        "dense-cost-last-dropped",
        "dense cost loop stops one position early (c_T left out)",
        {
            "objectives.dense.cost": lambda c, position, length, **_: (
                c if position < length else 0.0 * c
            )
        },
        ("T9b",),
        structural=True,
    ),
    Mutant(
        "surrogate-stop-gradient-dropped",
        "martingale surrogate weights sg(P Δ) computed from live tables (stop-gradient dropped)",
        {"gradients.surrogate.weights": _live_weights},
        ("T3", "T6", "T5"),
        structural=True,
    ),
    Mutant(
        "autodiff-live-level-off-by-one",
        "per-position autodiff leaves level t live for g_t instead of level t - 1",
        {"gradients.autodiff.live": _live_next},
        ("T3", "T3-total", "T5", "T10"),
        structural=True,
    ),
    Mutant(
        "REINFORCE-baseline-one-late",
        "exact baseline b_t = H_t(y_<=t) instead of H_{t-1}(y_<t)",
        {"montecarlo.baseline": _baseline_one_late},
        ("T10",),
        structural=True,
    ),
    Mutant(
        "step-uniform-weights",
        "the level step shared by the XLA drivers averages the children uniformly instead of by π",
        {"step.backward.weights": blend(_uniform_like)},
        H_CHECKS,
        engines=("xla",),
    ),
    Mutant(
        "xla-chunk-boundary",
        "XLA backward pass: the first child row of every chunk after the "
        "first is read from the row before (chunk boundary off by one)",
        {"analysis.xla.child_h": _previous_chunk_row},
        H_CHECKS + ("T7b", "T13"),
        engines=("xla",),
        structural=True,
    ),
    Mutant(
        "xla-last-chunk-dropped",
        "XLA combine: the last chunk's I_t sum is dropped",
        {"analysis.xla.level_sums": _drop_last_chunk},
        INFO_CHECKS,
        engines=("xla",),
        structural=True,
    ),
    Mutant(
        "numba-level-sums-one-late",
        "Numba driver: a level's I_t block sums blended with the "
        "previous level's (accumulator updated one level late)",
        {},
        INFO_CHECKS,
        engines=("analysis",),
        stateful=lambda: {"analysis.numba.level_sums": _PreviousLevel()},
    ),
    Mutant(
        "analysis-determined-first-two",
        "analysis marks a prefix determined when its first two "
        "children are determined and agree (right for V = 2 only)",
        {"analysis.determined": _determined_first_two},
        ("T12", "T5", "T7b"),
        engines=("analysis", "xla"),
        structural=True,
    ),
    Mutant(
        "markov-uniform-weights",
        "DP backward step averages the children uniformly",
        {"markov.backward.weights": blend(_uniform_like)},
        H_CHECKS + ("T7b",),
        engines=("markov",),
    ),
    Mutant(
        "markov-child-state-slip",
        "DP child index: the last token's next state taken from token 0's column",
        {"markov.child_state": _token0_child_state},
        H_CHECKS + ("T7b",),
        engines=("markov",),
        structural=True,
    ),
)


def mutant_suite():
    """The small suite the mutants run on: tabular instances at ``V = 3`` (a soft and a binary
    decided harm, an automaton harm) and a Markov automaton instance for the DP engine."""
    from proofs_check.instances import make_instance

    return [
        make_instance("tabular", 3, 4, seed=0, tau=2, harm_kind="binary"),
        make_instance("tabular", 3, 4, seed=1, tau=2, harm_kind="soft"),
        make_instance("tabular", 3, 4, seed=0, harm_kind="automaton", lam=0.5),
        make_instance("markov", 3, 4, seed=0, harm_kind="automaton", lam=0.5),
    ]


@dataclasses.dataclass
class MutantReport:
    """What happened to one mutant."""

    name: str
    description: str
    killed_by: list[str]
    errors: list[str]
    checks_run: int
    size: float
    seconds: float
    equivalent: str = ""

    @property
    def status(self) -> str:
        if self.killed_by:
            return "KILLED"
        if self.equivalent:
            return "EQUIVALENT"
        return "ERROR" if self.errors else "SURVIVED"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "status": self.status}


def _fresh(instances, engines, with_quantities: bool):
    """Copies of the suite read through ``engines``, engine caches dropped (quantities too if the
    mutant can change them)."""
    from proofs_check.engines import available_engines, read_through

    usable = [e for e in engines if e in available_engines()]
    out = read_through(instances, usable)
    if with_quantities:
        for inst in out:
            for key in ("quantities", "probs"):
                inst.__dict__.pop(key, None)
    return out


def _engine_arrays(inst) -> list[np.ndarray]:
    from proofs_check.common import outputs

    out = outputs(inst)
    arrays = []
    for key in ("cond_harm", "logit_grads", "equilibrium_logits", "determined"):
        if out.get(key) is not None:
            arrays += [np.asarray(a, np.float64) for a in out[key]]
    for key in ("harm_information", "harm_information_mi", "equilibrium_kl"):
        if out.get(key) is not None:
            arrays.append(np.asarray(out[key], np.float64))
    return arrays


def _size(before, after) -> float:
    """Largest change relative to the size of each touched array."""
    worst = 0.0
    for a, b in zip(before, after):
        scale = max(float(np.max(np.abs(a), initial=0.0)), np.finfo(float).tiny)
        diff = float(np.max(np.abs(a - b), initial=0.0)) if a.shape == b.shape else np.inf
        worst = max(worst, diff / scale)
    return worst


def _reported_size(sizes) -> float:
    """The largest change, or NaN ("—") when the mutant changes no engine output at all (it lives
    in an objective, a gradient route or the Monte Carlo baseline)."""
    worst = max(sizes, default=0.0)
    return worst if worst > 0 else float("nan")


def run_mutant(mutant: Mutant, instances, baseline_outputs: dict | None = None) -> MutantReport:
    """Run the checks of ``mutant`` on ``instances`` with the mutant active."""
    from proofs_check.registry import select
    from proofs_check.runner import Task, run_tasks

    start = time.perf_counter()
    checks = [c for c in select(list(mutant.checks)) if c.id in mutant.checks]
    quantities = bool({"T3", "T3-total", "T6", "T10"} & set(mutant.checks)) and not set(
        mutant.engines
    ) - {"tree"}
    with mutant.active():
        fresh = _fresh(instances, mutant.engines, with_quantities=quantities)
        tasks = [
            Task(c, inst)
            for inst in fresh
            for c in checks
            if inst.engine in c.engines and c.applies(inst)
        ]
        results = run_tasks(tasks)
        sizes = []
        if baseline_outputs is not None:
            for inst in fresh:
                before = baseline_outputs.get(inst.name)
                if before is not None:
                    try:
                        sizes.append(_size(before, _engine_arrays(inst)))
                    except Exception:  # noqa: BLE001 - a size is a report, not a verdict
                        pass
    killed = sorted({r.check for r in results if r.killed_by_comparison()})
    errors = sorted({f"{r.check}: {r.parts[0].lhs}" for r in results if r.status == "error"})
    return MutantReport(
        mutant.name,
        mutant.description,
        killed,
        errors,
        len(tasks),
        _reported_size(sizes),
        time.perf_counter() - start,
        mutant.equivalent,
    )


def baseline_engine_outputs(instances, engines) -> dict:
    """Every engine's outputs on the suite without any mutant (for the mutants' sizes)."""
    from proofs_check.engines import available_engines, read_through

    return {
        inst.name: _engine_arrays(inst)
        for inst in read_through(instances, [e for e in engines if e in available_engines()])
    }


def run_mutants(mutants=None, progress=None) -> list[MutantReport]:
    """Every mutant (or the given ones) on :func:`mutant_suite`."""
    from proofs_check.engines import ENGINES

    mutants = MUTANTS if mutants is None else mutants
    instances = mutant_suite()
    baseline = baseline_engine_outputs(instances, ENGINES)
    reports = []
    for m in mutants:
        if progress is not None:
            progress(m, False)
        reports.append(run_mutant(m, instances, baseline))
        if progress is not None:
            progress(m, True)
    return reports
