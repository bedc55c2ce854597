"""T9 (a recovery penalty creates signal everywhere) and T9b (the dense recovery equilibrium).

These statements need a harm that a later token can still avert: the automaton instances
(:func:`toy_lm.automata.harmful_before_refusal`: ``K`` harmful tokens before any refusal; a refusal
ends the harmful path safely) with the dense cost of
:func:`proofs_check.instances.recovery_cost_automaton` (harmful content emitted, not yet recovered).

T9. Under ``L_rec = E_π[h] + Σ_k μ_k ASR_π(k)`` (``q_k`` = the base model's harmful prefixes) the logit
gradient is ``G(w)_v = W(w) π(v|w) (H(wv) - H(w))`` with
``W(w) = P(w) + Σ_{k<=|w|} μ_k q_k(w_<=k) P(w)/P(w_<=k)``: ``jax.grad`` of the foundation's objective
against this closed form from direct sums, and non-zero at every undetermined prefix ``w`` at
levels ``k ... T-1`` (positions ``k+1 ... T``) extending a forced prefix with ``q_k > 0``.
T9-train: gradient descent on ``L_rec + λ KL`` from ``π0`` lowers ``ASR(k)`` for every ``k``.

T9b. The minimizer of ``L_dense + λ KL`` (``π0`` tilted by ``exp(-(h + Σ_t μ_t c_t)/λ)``) has non-zero
``KL(π*(.|u)‖π0(.|u))`` at every prefix where the total cost is undetermined - including prefixes
where ``h`` is already decided - and zero where it is determined.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from toy_lm.objectives import automaton_costs
from proofs_check import controls, enumeration
from proofs_check.common import engine, ops
from proofs_check.engine import dense_equilibrium, engine_quantities, recovery_grad
from proofs_check.equilibrium import sweep
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance, stated_tolerance
from proofs_check.training import frozen_tolerance, train_tables

#: Steps and step size of the recovery training run (plain gradient descent).
RECOVERY_STEPS, RECOVERY_LR = 16, 1.0

#: "Clearly non-zero" means above this multiple of the rounding tolerance.
NONZERO_FACTOR = 1e3

#: The cost state of :func:`proofs_check.instances.recovery_cost_automaton`.
COST_STATES = (1,)


def _is_automaton(inst) -> bool:
    return inst.dfa is not None and inst.cost_dfa is not None and inst.length >= 2


def _mu(inst) -> np.ndarray:
    return np.ones(inst.length - 1)


def direct_prefix_dists(inst) -> list[np.ndarray]:
    """``q_k(u) = Σ_{y ⊒ u} P0(y) h(y) / Σ_y P0(y) h(y)`` for ``k = 1 ... T-1`` (``π0`` = instance)."""
    weight = inst.probs * inst.harm
    return [enumeration.block_sums(weight, inst.vocab_size, k) / weight.sum()
            for k in range(1, inst.length)]


def recovery_weights(inst, mu) -> list[np.ndarray]:
    """``W(w) = P(w) + Σ_{k=1}^{|w|} μ_k q_k(w_<=k) P(w) / P(w_<=k)`` for levels ``0 ... T-1``."""
    vocab = inst.vocab_size
    marg = enumeration.prefix_marginals(inst.probs, vocab, inst.length)
    dists = direct_prefix_dists(inst)
    out = []
    for level in range(inst.length):
        w = marg[level].copy()
        for k in range(1, level + 1):
            ancestor = np.repeat(np.arange(vocab ** k), vocab ** (level - k))
            w = w + mu[k - 1] * dists[k - 1][ancestor] * marg[level] / marg[k][ancestor]
        out.append(w)
    return out


@register("T9", "under L_rec the logit gradient W(w) π Δ is non-zero at every undetermined prefix "
                "along the forced prefixes, positions k+1 ... T",
          plants=["mu-dropped", "shifted-H"], applies=_is_automaton)
def recovery_signal(inst, plant):
    vocab, length = inst.vocab_size, inst.length
    mu = _mu(inst)
    out = recovery_grad(inst.tables, inst.tables, inst.harm, mu)
    grad = [np.asarray(g) for g in out["grad_tables"]]
    weights = recovery_weights(inst, np.zeros_like(mu) if plant == "mu-dropped" else mu)
    values = inst.direct_cond_harm
    if plant == "shifted-H":
        values = controls.shifted_levels(values)
    conds = enumeration.direct_conditionals(inst.probs, vocab, length)
    closed = [weights[l][:, None] * conds[l] * (values[l + 1].reshape(-1, vocab) - values[l][:, None])
              for l in range(length)]
    flat = lambda ts: np.concatenate([t.reshape(-1) for t in ts])
    tol = rounding_tolerance(np.float64, terms=inst.num_responses * length, ops=ops(inst),
                             magnitude=2.0 * (1.0 + mu.sum()), what="2 (1 + Σ_k μ_k)")
    parts = [compare("∇L_rec = W(w) π(v|w) Δ(wv)", flat(grad), flat(closed), tol,
                     lhs_name="jax.grad of toy_lm.objectives.recovery_prefill_loss w.r.t. the tables",
                     rhs_name="W(w) π(v|w) (H(wv) - H(w)) from direct sums")]
    # Undetermined prefixes w at levels k ... T-1 below a forced prefix u (level k, q_k(u) > 0).
    dists = direct_prefix_dists(inst)
    norms = []
    for k in range(1, length):
        if mu[k - 1] <= 0:
            continue
        for level in range(k, length):
            ancestor = np.repeat(np.arange(vocab ** k), vocab ** (level - k))
            reach = (dists[k - 1][ancestor] > 0) & ~inst.determined[level]
            norms.append(np.max(np.abs(grad[level][reach]), axis=1))
    norms = np.concatenate(norms)
    floor = NONZERO_FACTOR * tol.value
    nonzero = stated_tolerance(0.0, f"0: the claim is |G(w)| >= floor = 1e3 x rounding tolerance "
                                    f"= {floor:.3g} at each of the {norms.size} prefixes")
    parts.append(compare("|G(w)| > 0 at undetermined prefixes below forced prefixes",
                         np.min(norms, initial=np.inf), floor, nonzero, bound="lower",
                         lhs_name="min over those prefixes of max_v |∂L_rec/∂z_v(w)|",
                         rhs_name="floor (1e3 x rounding tolerance)"))
    ratio = [w / np.maximum(m, np.finfo(float).tiny) for w, m in
             zip(weights, enumeration.prefix_marginals(inst.probs, vocab, length))]
    return parts, {"prefixes_checked": int(norms.size),
                   "signal_amplification_W_over_P_max": float(max(np.max(r) for r in ratio))}


@register("T9-train", "gradient descent on L_rec + λ KL from π0 lowers ASR(k) for every k and never "
                      "moves determined conditionals", plants=["mu-sign", "harm-below-determined"],
          applies=_is_automaton)
def recovery_training(inst, plant):
    harm = controls.planted_harm(inst, plant)
    mu = -_mu(inst) if plant == "mu-sign" else _mu(inst)
    base = tuple(jnp.asarray(z) for z in inst.tables)
    masks = tuple(jnp.asarray(m) for m in inst.determined[:-1])
    dists = tuple(jnp.asarray(q) for q in direct_prefix_dists(inst))
    final, hist = train_tables(base, base, masks, (base, jnp.asarray(harm), dists, mu, inst.lam),
                               objective="recovery", steps=RECOVERY_STEPS, optimizer="sgd",
                               learning_rate=RECOVERY_LR)
    before = engine(inst)["cond_harm"]
    after = [np.asarray(h) for h in engine_quantities(final, inst.harm)["cond_harm"]]
    asr_before = np.array([np.sum(np.asarray(q) * before[k]) for k, q in enumerate(dists, 1)])
    asr_after = np.array([np.sum(np.asarray(q) * after[k]) for k, q in enumerate(dists, 1)])
    tol = frozen_tolerance(inst, RECOVERY_STEPS)
    floor = NONZERO_FACTOR * tol.value
    parts = [compare("ASR(k) falls for every k", asr_after, asr_before - floor,
                     stated_tolerance(0.0, f"0: the claim is ASR_after(k) <= ASR_before(k) - "
                                           f"{floor:.3g} (1e3 x rounding tolerance)"),
                     bound="upper", lhs_name="ASR_π(k) after training, k = 1 ... T-1 (engine H_k)",
                     rhs_name="ASR_π0(k) minus the non-zero floor"),
             compare("determined conditionals unchanged at every step",
                     np.asarray(hist["determined_change"]), 0.0, tol, scale=1.0,
                     lhs_name="max |log π_k(v|u) - log π0(v|u)| over determined u, per step",
                     rhs_name="0")]
    kl_rec = np.asarray(hist["kl_t"])[-1]
    kl_eq = sweep(inst)["kl"][0]
    return parts, {"asr_before": asr_before.tolist(), "asr_after": asr_after.tolist(),
                   "kl_t_recovery_trained": kl_rec.tolist(), "kl_t_equilibrium_l_lambda": kl_eq.tolist()}


def direct_costs(inst) -> list[np.ndarray]:
    """``c_t(y_<=t) = 1[cost state after y_<=t]`` for every response, by running the automaton."""
    dfa = inst.cost_dfa
    responses = enumeration.all_responses(inst.vocab_size, inst.length)
    state = np.full(responses.shape[0], dfa.start)
    out = []
    for t in range(inst.length):
        state = dfa.transitions[state, responses[:, t]]
        out.append(np.isin(state, COST_STATES).astype(np.float64))
    return out  # per position, over whole responses


@register("T9b", "the dense-recovery equilibrium moves π at every prefix where the cost is "
                 "undetermined, including prefixes where h is already decided",
          plants=["costs-dropped", "lambda-sign"], applies=_is_automaton)
def dense_recovery_equilibrium(inst, plant):
    vocab, length, lam = inst.vocab_size, inst.length, inst.lam
    mu = np.zeros(length) if plant == "costs-dropped" else np.ones(length)
    costs = automaton_costs(inst.cost_dfa, length, COST_STATES)
    log_tables = [np.asarray(t) for t in dense_equilibrium(inst.tables, inst.harm, costs, mu, lam)]
    total = inst.harm + sum(direct_costs(inst))  # μ_t = 1 for every t
    lhs = enumeration.response_log_probs_from_tables(log_tables, vocab, length)
    direct_lam = -lam if plant == "lambda-sign" else lam
    rhs = enumeration.log_normalize(inst.quantities["token_log_probs"].sum(axis=1) - total / direct_lam)
    tol = rounding_tolerance(np.float64, terms=inst.num_responses + length, ops=ops(inst),
                             magnitude=float(np.max(np.abs(rhs))) + (1 + length) / lam,
                             what="max|log π*(y)| + (1 + T)/λ")
    parts = [compare("log π*(y) = log π0(y) - C(y)/λ - log Z", lhs, rhs, tol,
                     lhs_name="Σ_t log π* from toy_lm.objectives.dense_equilibrium_policy",
                     rhs_name="normalized π0(y) exp(-(h + Σ_t μ_t c_t)/λ), costs by running the "
                              "cost automaton (direct)")]
    kl = enumeration.per_prefix_kl(log_tables, [enumeration.log_softmax(z) for z in inst.tables])
    cost_det = enumeration.direct_determined(total, vocab, length)
    floor = NONZERO_FACTOR * tol.value
    undetermined = np.concatenate([k[~d] for k, d in zip(kl, cost_det[:-1])])
    beyond = np.concatenate([k[~d & h] for k, d, h in zip(kl, cost_det[:-1], inst.determined[:-1])])
    determined = np.concatenate([k[d] for k, d in zip(kl, cost_det[:-1])])
    nonzero = stated_tolerance(0.0, f"0: the claim is KL >= floor = 1e3 x rounding tolerance = {floor:.3g}")
    parts += [
        compare("KL(π*(.|u)‖π0(.|u)) > 0 where the cost is undetermined",
                np.min(undetermined, initial=np.inf), floor, nonzero, bound="lower",
                lhs_name="min per-prefix KL over cost-undetermined prefixes", rhs_name="floor"),
        compare("... including prefixes where h is decided (beyond the horizon of h)",
                np.min(beyond, initial=-np.inf if beyond.size == 0 else np.inf), floor, nonzero,
                bound="lower", lhs_name=f"min per-prefix KL over the {beyond.size} prefixes that are "
                                        "h-determined but cost-undetermined", rhs_name="floor"),
        compare("KL(π*(.|u)‖π0(.|u)) = 0 where the cost is determined", determined, 0.0, tol,
                scale=float(np.max(undetermined, initial=0.0)),
                lhs_name="per-prefix KL over cost-determined prefixes", rhs_name="0"),
    ]
    return parts, {"prefixes_beyond_h_horizon": int(beyond.size)}
