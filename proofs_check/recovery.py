"""T9 (a recovery penalty creates signal everywhere) and T9b (the dense recovery equilibrium).

These statements need a harm that a later token can still avert: the automaton instances
(:func:`toy_lm.models.automata.harmful_before_refusal`: ``K`` harmful tokens before any refusal; a refusal
ends the harmful path safely) with the dense cost of
:func:`proofs_check.instances.recovery_cost_automaton` (harmful content emitted, not yet recovered).

T9. Under ``L_rec = E_π[h] + Σ_k μ_k ASR_π(k)`` (``q_k`` = the base model's harmful prefixes) the logit
gradient is ``G(w)_v = W(w) π(v|w) (H(wv) - H(w))`` with
``W(w) = P(w) + Σ_{k<=|w|} μ_k q_k(w_<=k) P(w)/P(w_<=k)``: ``jax.grad`` of the foundation's objective
against this closed form from direct sums, and non-zero at every undetermined prefix ``w`` at
levels ``k ... T-1`` (positions ``k+1 ... T``) extending a forced prefix with ``q_k > 0``.
The recovery part ``G_rec - G_h`` is checked at its own scale (divided by ``Σ μ``, so it cannot pass
as ``μ → 0``) and for linearity in ``μ``. T9-train (measured, with a fixed optimizer and budget):
``L_rec + λ KL`` and ``L_λ`` trained from the same ``π0``; the recovery objective leaves a lower
``ASR(k)`` for every ``k < τ*``. With ``μ = 0`` both contrasts must fail (planted error ``mu-zero``).

T9b. The minimizer of ``L_dense + λ KL`` (``π0`` tilted by ``exp(-(h + Σ_t μ_t c_t)/λ)``) moves ``π0`` at
a prefix exactly where the children's tilted partition functions ``Z(uv)`` are not all equal, and
its per-position KL is non-zero beyond the horizon of ``h`` (instances with ``τ*(h) < T``, costs from
:func:`proofs_check.instances.recovery_cost_automaton`), where ``L_λ``'s is zero.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from proofs_check import controls, enumeration
from proofs_check.autodiff import response_log_probs, value_and_flat_grad
from proofs_check.common import engine, ops
from proofs_check.engine import dense_equilibrium, engine_quantities, recovery_grad
from proofs_check.equilibrium import sweep
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance, stated_tolerance
from proofs_check.training import frozen_tolerance, train_tables
from toy_lm.engines import objectives, tree
from toy_lm.engines.objectives import automaton_costs

__all__ = [
    "COST_STATES",
    "DOSE",
    "NONZERO_FACTOR",
    "RECOVERY_LR",
    "RECOVERY_STEPS",
    "cost_automaton",
    "dense_recovery_equilibrium",
    "direct_child_partitions",
    "direct_costs",
    "direct_prefix_dists",
    "recovery_part",
    "recovery_signal",
    "recovery_training",
    "recovery_weights",
]

#: Steps and step size of the recovery training run (plain gradient descent).
RECOVERY_STEPS, RECOVERY_LR = 16, 1.0

#: "Clearly non-zero" means above this multiple of the rounding tolerance.
NONZERO_FACTOR = 1e3

#: The cost state of :func:`proofs_check.instances.recovery_cost_automaton`.
COST_STATES = (1,)


def _mu(inst) -> np.ndarray:
    """``μ_k = 1/k``, ``k = 1 ... T-1``: distinct weights, so a misplaced index shows."""
    return 1.0 / np.arange(1, inst.length)


def direct_prefix_dists(inst) -> list[np.ndarray]:
    """``q_k(u) = Σ_{y ⊒ u} P0(y) h(y) / Σ_y P0(y) h(y)`` for ``k = 1 ... T-1`` (``π0`` = instance)."""
    weight = inst.probs * inst.harm
    return [
        enumeration.block_sums(weight, inst.vocab_size, k) / weight.sum()
        for k in range(1, inst.length)
    ]


def recovery_weights(inst, mu) -> list[np.ndarray]:
    """``W(w) = P(w) + Σ_{k=1}^{|w|} μ_k q_k(w_<=k) P(w) / P(w_<=k)`` for levels ``0 ... T-1``."""
    vocab = inst.vocab_size
    marg = enumeration.prefix_marginals(inst.probs, vocab, inst.length)
    dists = direct_prefix_dists(inst)
    out = []
    for level in range(inst.length):
        w = marg[level].copy()
        for k in range(1, level + 1):
            ancestor = np.repeat(np.arange(vocab**k), vocab ** (level - k))
            w = w + mu[k - 1] * dists[k - 1][ancestor] * marg[level] / marg[k][ancestor]
        out.append(w)
    return out


def _recovery_applies(inst) -> bool:
    """T9 needs harm still undetermined after a forced prefix: ``τ* >= 2`` (so ``T >= 2``)."""
    return inst.horizon >= 2 and 0 < float(np.sum(inst.probs * inst.harm))


def recovery_part(inst, mu, values=None) -> list[np.ndarray]:
    """``Σ_{k<=|u|} μ_k P_{q_k,π}(u) π(v|u) (H(uv) - H(u))`` per level, from direct sums."""
    vocab, length = inst.vocab_size, inst.length
    values = inst.direct_cond_harm if values is None else values
    marg = enumeration.prefix_marginals(inst.probs, vocab, length)
    weights = [w - m for w, m in zip(recovery_weights(inst, mu), marg)]
    conds = enumeration.direct_conditionals(inst.probs, vocab, length)
    return [
        weights[l][:, None] * conds[l] * (values[l + 1].reshape(-1, vocab) - values[l][:, None])
        for l in range(length)
    ]


def _flat(tables) -> np.ndarray:
    return np.concatenate([np.asarray(t).reshape(-1) for t in tables])


#: Scale of μ for the dose-response part of T9: ``L_rec`` is linear in μ, so the recovery part of
#: the gradient at ``s μ``, divided by ``s``, must equal the one at ``μ``.
DOSE = 1e-3


@register(
    "T9",
    "under L_rec the logit gradient is W(u) π Δ, W = P + Σ_{k<=|u|} μ_k P_{q_k,π}: the "
    "recovery part at its own scale, linear in μ, non-zero below forced prefixes",
    plants=["mu-zero", "mu-dropped", "shifted-H"],
    applies=_recovery_applies,
)
def recovery_signal(inst, plant):
    vocab, length = inst.vocab_size, inst.length
    mu = _mu(inst)
    objective_mu = 0.0 * mu if plant == "mu-zero" else mu
    grad = [
        np.asarray(g)
        for g in recovery_grad(inst.tables, inst.tables, inst.harm, objective_mu)["grad_tables"]
    ]
    dose = [
        np.asarray(g)
        for g in recovery_grad(inst.tables, inst.tables, inst.harm, DOSE * objective_mu)[
            "grad_tables"
        ]
    ]
    plain = engine(inst)["grad_tables"]  # jax.grad of E_π[h] alone
    closed_mu = np.zeros_like(mu) if plant == "mu-dropped" else mu
    values = controls.shifted_levels(inst.direct_cond_harm) if plant == "shifted-H" else None
    conds = enumeration.direct_conditionals(inst.probs, vocab, length)
    weights = recovery_weights(inst, closed_mu)
    hv = inst.direct_cond_harm if values is None else values
    closed = [
        weights[l][:, None] * conds[l] * (hv[l + 1].reshape(-1, vocab) - hv[l][:, None])
        for l in range(length)
    ]
    rec = _flat(recovery_part(inst, closed_mu, values)) / mu.sum()
    total = 1.0 + mu.sum()
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * length,
        ops=ops(inst),
        magnitude=2.0 * total,
        what="2 (1 + Σ_k μ_k)",
    )
    own = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * length,
        ops=ops(inst),
        magnitude=2.0 * total / mu.sum(),
        what="2 (1 + Σ μ) / Σ μ: G_rec - G_h divided by Σ μ",
    )
    dose_tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses * length,
        ops=ops(inst),
        magnitude=2.0 * (1.0 + DOSE * mu.sum()) / (DOSE * mu.sum()),
        what=f"2 (1 + sΣμ) / (sΣμ), s = {DOSE:g}",
    )
    parts = [
        compare(
            "∇L_rec = W(u) π(v|u) Δ(uv)",
            _flat(grad),
            _flat(closed),
            tol,
            lhs_name="jax.grad of toy_lm.engines.objectives.recovery_prefill_loss w.r.t. the tables",
            rhs_name="W(u) π(v|u) (H(uv) - H(u)), W = P + Σ_{k<=|u|} μ_k P_{q_k,π} (direct)",
        ),
        compare(
            "recovery part at its own scale: (G_rec - G_h)/Σμ",
            (_flat(grad) - _flat(plain)) / mu.sum(),
            rec,
            own,
            lhs_name="(∇L_rec - ∇E[h]) / Σ_k μ_k, both by jax.grad",
            rhs_name="Σ_k μ_k P_{q_k,π}(u) π (H(uv) - H(u)) / Σ_k μ_k (direct)",
        ),
        compare(
            f"dose-response: linear in μ (at {DOSE:g} μ)",
            (_flat(dose) - _flat(plain)) / (DOSE * mu.sum()),
            rec,
            dose_tol,
            lhs_name=f"(∇L_rec(sμ) - ∇E[h]) / (s Σμ), s = {DOSE:g}",
            rhs_name="the recovery part at μ, / Σμ (direct)",
        ),
    ]
    # Undetermined prefixes w at levels k ... T-1 below a forced prefix u (level k, q_k(u) > 0).
    dists = direct_prefix_dists(inst)
    norms = []
    for k in range(1, length):
        for level in range(k, length):
            ancestor = np.repeat(np.arange(vocab**k), vocab ** (level - k))
            reach = (dists[k - 1][ancestor] > 0) & ~inst.determined[level]
            norms.append(np.max(np.abs(grad[level][reach]), axis=1, initial=0.0))
    norms = np.concatenate(norms)
    floor = NONZERO_FACTOR * tol.value
    nonzero = stated_tolerance(
        0.0,
        f"0: the claim is |G(w)| >= floor = 1e3 x rounding tolerance "
        f"= {floor:.3g} at each of the {norms.size} prefixes",
    )
    parts.append(
        compare(
            "|G(w)| > 0 at undetermined prefixes below forced prefixes",
            norms,
            floor,
            nonzero,
            bound="lower",
            lhs_name="max_v |∂L_rec/∂z_v(w)| at each such prefix (n/a if none)",
            rhs_name="floor (1e3 x rounding tolerance)",
        )
    )
    parts.append(_asr_part(inst, dists))
    marg = enumeration.prefix_marginals(inst.probs, vocab, length)
    ratio = [
        w / np.maximum(m, np.finfo(float).tiny) for w, m in zip(recovery_weights(inst, mu), marg)
    ]
    return parts, {
        "prefixes_checked": int(norms.size),
        "signal_amplification_W_over_P_max": float(max(np.max(r) for r in ratio)),
    }


def _asr_part(inst, dists):
    """``ASR_π(k) = E_{q_k}[H_k]``, ``k = 0 ... T-1``, from the tree engine (``prefill_asr_curve``,
    and ``prefill_asr`` with ``harmful_prefix_dist``) against direct sums (found missing by the
    mechanical mutants: no check called either function)."""
    tables = tuple(jnp.asarray(z) for z in inst.tables)
    harm = jnp.asarray(inst.harm)
    curve = np.asarray(tree.prefill_asr_curve(tables, harm, tables))
    single = np.array(
        [
            float(tree.prefill_asr(tables, harm, tree.harmful_prefix_dist(tables, harm, k), k))
            for k in range(1, inst.length)
        ]
    )
    values = inst.direct_cond_harm
    direct = np.array(
        [float(values[0][0])] + [float(np.dot(q, values[k])) for k, q in enumerate(dists, start=1)]
    )
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=2.0,
        what="ASR and q_k are averages of h in [0, 1]: 2 for the ratio",
    )
    return compare(
        "ASR_π(k) = E_{q_k}[H_k] (prefill attack)",
        np.stack([curve[1:], single]),
        direct[None, 1:],
        tol,
        lhs_name="tree.prefill_asr_curve; tree.prefill_asr with tree.harmful_prefix_dist "
        "(π = π0), k = 1 ... T-1",
        rhs_name="Σ_u q_k(u) H_k(u), q_k ∝ Σ_{y ⊒ u} P0(y) h(y) (direct sums)",
    )


def _train(inst, harm, mu, objective):
    base = tuple(jnp.asarray(z) for z in inst.tables)
    masks = tuple(jnp.asarray(m) for m in inst.determined[:-1])
    if objective == "kl":
        args = (base, jnp.asarray(harm), inst.lam)
    else:
        dists = tuple(jnp.asarray(q) for q in direct_prefix_dists(inst))
        args = (base, jnp.asarray(harm), dists, mu, inst.lam)
    # min(1, 1/λ): the KL term's curvature is at most λ per logit, so the step stays stable (a
    # larger one amplifies rounding residues at determined prefixes by ~λ per step).
    return train_tables(
        base,
        base,
        masks,
        args,
        objective=objective,
        steps=RECOVERY_STEPS,
        optimizer="sgd",
        learning_rate=min(RECOVERY_LR, 1.0 / inst.lam),
    )


def _contrast_positions(inst) -> list[int]:
    """Forced-prefix lengths ``k = 1 ... min(τ*, T) - 1``: the harm is still undetermined there."""
    return list(range(1, min(inst.horizon, inst.length)))


@register(
    "T9-train",
    "trained from the same π0 with the same λ, SGD and budget, L_rec + λ KL leaves "
    "a lower ASR(k) than L_λ for every k < τ*, and never moves determined "
    "conditionals",
    plants=["mu-zero", "mu-sign"],
    applies=_recovery_applies,
)
def recovery_training(inst, plant):
    """Measured contrast (THEORY.md T9: it depends on optimizer and budget, so the instances and
    budget are fixed here); with ``μ = 0`` both objectives coincide and the contrast must fail."""
    mu = _mu(inst) * {"mu-zero": 0.0, "mu-sign": -1.0}.get(plant, 1.0)
    final_rec, hist = _train(inst, inst.harm, mu, "recovery")
    final_kl, _ = _train(inst, inst.harm, mu, "kl")
    dists = direct_prefix_dists(inst)
    after_rec = [np.asarray(h) for h in engine_quantities(final_rec, inst.harm)["cond_harm"]]
    after_kl = [np.asarray(h) for h in engine_quantities(final_kl, inst.harm)["cond_harm"]]
    ks = _contrast_positions(inst)
    asr_rec = np.array([np.sum(dists[k - 1] * after_rec[k]) for k in ks])
    asr_kl = np.array([np.sum(dists[k - 1] * after_kl[k]) for k in ks])
    tol = frozen_tolerance(inst, RECOVERY_STEPS)
    floor = NONZERO_FACTOR * tol.value
    parts = [
        compare(
            "ASR_rec(k) < ASR_λ(k) for every k < τ*",
            asr_rec,
            asr_kl - floor,
            stated_tolerance(
                0.0,
                f"0: the claim is ASR_rec(k) <= ASR_λ(k) - {floor:.3g} (1e3 x rounding tolerance)",
            ),
            bound="upper",
            lhs_name=f"ASR(k) after {RECOVERY_STEPS} SGD steps on L_rec + λ KL "
            "(engine H_k, direct q_k)",
            rhs_name=f"ASR(k) after {RECOVERY_STEPS} SGD steps on L_λ, minus the floor",
        ),
        compare(
            "determined conditionals unchanged at every step",
            np.asarray(hist["determined_change"]),
            0.0,
            tol,
            scale=1.0,
            lhs_name="max |log π_k(v|u) - log π0(v|u)| over determined u, per step",
            rhs_name="0",
        ),
    ]
    return parts, {
        "k": ks,
        "asr_recovery": asr_rec.tolist(),
        "asr_l_lambda": asr_kl.tolist(),
        "kl_t_recovery_trained": np.asarray(hist["kl_t"])[-1].tolist(),
        "kl_t_equilibrium_l_lambda": sweep(inst)["kl"][0].tolist(),
    }


def cost_automaton(inst):
    """The instance's dense-cost automaton, or the recovery cost of its vocabulary (``V >= 3``)."""
    from proofs_check.instances import recovery_cost_automaton

    return inst.cost_dfa if inst.cost_dfa is not None else recovery_cost_automaton(inst.vocab_size)


def direct_costs(inst) -> list[np.ndarray]:
    """``c_t(y_<=t) = 1[cost state after y_<=t]`` for every response, by running the automaton."""
    dfa = cost_automaton(inst)
    responses = enumeration.all_responses(inst.vocab_size, inst.length)
    state = np.full(responses.shape[0], dfa.start)
    out = []
    for t in range(inst.length):
        state = dfa.transitions[state, responses[:, t]]
        out.append(np.isin(state, COST_STATES).astype(np.float64))
    return out  # per position, over whole responses


def direct_child_partitions(inst, total, lam) -> list[np.ndarray]:
    """``Z(uv) = Σ_{y ⊒ uv} π0(y | uv) exp(-C(y)/λ)`` per level, ``(V**l, V)``, by direct sums."""
    vocab, length = inst.vocab_size, inst.length
    weighted = enumeration.prefix_marginals(inst.probs * np.exp(-total / lam), vocab, length)
    marg = enumeration.prefix_marginals(inst.probs, vocab, length)
    return [(weighted[l + 1] / marg[l + 1]).reshape(-1, vocab) for l in range(length)]


def _dense_applies(inst) -> bool:
    return inst.vocab_size >= 3 and inst.length >= 2


@register(
    "T9b",
    "the dense-recovery equilibrium (tilt by h + Σ μ_t c_t) moves π0 at u exactly where "
    "the children's Z(uv) differ; its KL_t is non-zero beyond the horizon of h, where "
    "L_λ's is zero",
    plants=["costs-dropped", "lambda-sign"],
    applies=_dense_applies,
)
def dense_recovery_equilibrium(inst, plant):
    vocab, length, lam = inst.vocab_size, inst.length, inst.lam
    mu = np.zeros(length) if plant == "costs-dropped" else np.ones(length)
    costs = automaton_costs(cost_automaton(inst), length, COST_STATES)
    log_tables = [np.asarray(t) for t in dense_equilibrium(inst.tables, inst.harm, costs, mu, lam)]
    total = inst.harm + sum(direct_costs(inst))  # μ_t = 1 for every t
    lhs = enumeration.response_log_probs_from_tables(log_tables, vocab, length)
    direct_lam = -lam if plant == "lambda-sign" else lam
    rhs = enumeration.log_normalize(
        inst.quantities["token_log_probs"].sum(axis=1) - total / direct_lam
    )
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses + length,
        ops=ops(inst),
        magnitude=float(np.max(np.abs(rhs))) + (1 + length) / lam,
        what="max|log π*(y)| + (1 + T)/λ",
    )
    parts = [
        compare(
            "log π*(y) = log π0(y) - C(y)/λ - log Z",
            lhs,
            rhs,
            tol,
            lhs_name="Σ_t log π* from toy_lm.engines.objectives.dense_equilibrium_policy",
            rhs_name="normalized π0(y) exp(-(h + Σ_t μ_t c_t)/λ), costs by running the "
            "cost automaton (direct)",
        )
    ]
    kl = enumeration.per_prefix_kl(log_tables, [enumeration.log_softmax(z) for z in inst.tables])
    z_children = direct_child_partitions(inst, total, lam)
    # Z(uv) equal across v, to the rounding of the direct sums (relative, Z in (0, 1]).
    spread = [(z.max(axis=1) - z.min(axis=1)) / z.max(axis=1) for z in z_children]
    same = [d <= tol.value for d in spread]
    floor = NONZERO_FACTOR * tol.value
    nonzero = stated_tolerance(
        0.0, f"0: the claim is KL >= floor = 1e3 x rounding tolerance = {floor:.3g}"
    )
    moved = np.concatenate([k[~m] for k, m in zip(kl, same)])
    still = np.concatenate([k[m] for k, m in zip(kl, same)])
    parts += [
        compare(
            "KL(π*(.|u)‖π0(.|u)) > 0 where the children's Z(uv) differ",
            moved,
            floor,
            nonzero,
            bound="lower",
            lhs_name="per-prefix KL where the direct Z(uv) are not all equal",
            rhs_name="floor",
        ),
        compare(
            "KL(π*(.|u)‖π0(.|u)) = 0 where the children's Z(uv) are equal",
            still,
            0.0,
            tol,
            scale=float(np.max(moved, initial=0.0)),
            lhs_name="per-prefix KL where the direct Z(uv) are all equal",
            rhs_name="0",
        ),
    ]
    tau = inst.horizon
    # Beyond the horizon of h (where L_λ's equilibrium is π0, T7b): the dense equilibrium moves π0
    # at some prefix, and so (π* has full support) its per-position KL there is > 0. The per-prefix
    # KL is resolved against the floor; the per-position one is π*-weighted and can be tiny (at
    # λ = 1e-2 those prefixes carry weights like e^-30), so it is only required to be positive.
    beyond_rows = np.concatenate([k for k in kl[tau:]]) if tau < length else np.zeros(0)
    marg = np.ones(1)
    dense_kl = []
    for level, table in enumerate(log_tables):
        dense_kl.append(float(np.sum(marg * kl[level])))
        marg = (marg[:, None] * np.exp(table)).reshape(-1)
    beyond = np.array(dense_kl[tau:])
    tiny = stated_tolerance(0.0, "0: the claim is KL_t > 0 (at least the smallest normal float)")
    parts += [
        compare(
            "π* moves π0 at some prefix beyond the horizon of h",
            np.max(beyond_rows, initial=-np.inf) if beyond_rows.size else beyond_rows,
            floor,
            nonzero,
            bound="lower",
            lhs_name="largest per-prefix KL(π*(.|u)‖π0(.|u)) at levels >= τ*(h) (n/a when "
            "τ*(h) = T)",
            rhs_name="floor",
        ),
        compare(
            "KL_t(dense π*‖π0) > 0 for some t > τ*(h)",
            np.max(beyond, initial=-np.inf) if beyond.size else beyond,
            np.finfo(np.float64).tiny,
            tiny,
            bound="lower",
            lhs_name="largest per-position KL of the dense equilibrium beyond the horizon of h",
            rhs_name="smallest positive normal float",
        ),
    ]
    parts.append(_dense_loss_part(inst, costs, mu))
    return parts, {"dense_kl_t": dense_kl, "horizon_of_h": tau}


def _dense_loss_part(inst, costs, mu):
    """``L_dense`` (:func:`toy_lm.engines.objectives.dense_recovery_loss`): value and ``jax.grad`` w.r.t.
    the tables against ``Σ_y P(y) (h(y) + Σ_t μ_t c_t(y_<=t))`` written here over every response
    (found missing by the mechanical mutants: only the dense equilibrium was checked)."""

    vocab, length = inst.vocab_size, inst.length
    tables = tuple(jnp.asarray(z) for z in inst.tables)
    total = jnp.asarray(inst.harm + sum(m * c for m, c in zip(mu, direct_costs(inst))))

    def direct(z):  # Σ_y Π_t softmax(z_t)[y_t] C(y)
        return jnp.sum(jnp.exp(response_log_probs(z, vocab, length)) * total)

    loss = lambda z: objectives.dense_recovery_loss(
        z, jnp.asarray(inst.harm), costs, jnp.asarray(mu)
    )
    lhs, rhs = value_and_flat_grad(loss, tables), value_and_flat_grad(direct, tables)
    magnitude = 2.0 * (1.0 + float(np.sum(mu)))
    tol = rounding_tolerance(
        np.float64,
        terms=inst.num_responses,
        ops=ops(inst),
        magnitude=magnitude,
        what="2 (1 + Σ_t μ_t): C(y) <= 1 + Σ μ",
    )
    return compare(
        "L_dense and ∇L_dense = direct sums",
        lhs,
        rhs,
        tol,
        lhs_name="toy_lm.engines.objectives.dense_recovery_loss and its jax.grad (tables)",
        rhs_name="Σ_y P(y) (h(y) + Σ_t μ_t c_t(y_<=t)) over every response, and its "
        "jax.grad (costs by running the cost automaton)",
    )
