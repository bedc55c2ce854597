"""T3-prompts: the statements on a prompt mixture (THEORY.md section 3, "Prompts").

A prompt ``x`` from a finite set with weights ``p(x)`` conditions the policy (a prompt embedding:
the weights are shared across prompts) and the harm ``h_x``; the objective is the mixture
``Σ_x p(x) E_π(.|x)[h_x]``. The check compares, position by position,

* ``g_t`` of the mixture by autodiff: one ``jax.jacrev`` of ``Σ_x p(x) Σ_y P(y|x) h_x(y)`` over the
  teacher-forced log-probabilities of every prompt, with every position but ``t`` under
  stop-gradient (no engine code), against
* ``Σ_x p(x) Cov_x(H_t^x, s_t^x)``: per prompt, ``H_t^x`` from the tree engine
  (:func:`toy_lm.engines.tree.cond_harm` on that prompt's level tables), the score tensor ``s_t^x`` and
  ``P(y|x)`` from the teacher-forced log-probabilities, the covariance by direct sums;

and that the mixture's ``g_t`` is zero beyond the horizon taken over prompts,
``τ* = max_x τ*(h_x)``, with each ``τ*(h_x)`` from comparing harm values directly. Planted errors:
the prompt weights ignored (a uniform average), the horizon taken as the minimum over prompts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from proofs_check import enumeration
from proofs_check.autodiff import flatten, jit, score_tensor, to_numpy
from proofs_check.common import ops
from proofs_check.registry import register
from proofs_check.results import compare, rounding_tolerance
from toy_lm.engines import tree
from toy_lm.tables import all_prefixes

__all__ = [
    "PromptMixture",
    "covariance_sum",
    "has_mixture",
    "mixture_gradient",
    "mixture_gradients",
    "mixture_horizon",
    "per_prompt",
    "prompt_quantities",
]


class PromptMixture(NamedTuple):
    """Prompts of an instance: weights ``p(x)`` ``(P,)`` (summing to 1) and harms ``(P, V**T)``."""

    weights: np.ndarray
    harms: np.ndarray


@jit(static_argnames=("policy",))
def mixture_gradients(policy, params, harms, weights) -> jax.Array:
    """``g_t`` of ``Σ_x p(x) E[h_x | x]`` by autodiff, position ``t`` live only: ``(T, D)``."""
    responses = jnp.asarray(all_prefixes(policy.vocab_size, policy.length))
    length = responses.shape[1]

    def objective(p):  # (T,): entry t has only position t's factor live
        lp = jnp.stack([policy.token_log_probs(p, responses, x) for x in range(harms.shape[0])])
        fixed = jax.lax.stop_gradient(lp)
        live = fixed.sum(axis=-1, keepdims=True) + (lp - fixed)  # (P, N, T)
        return jnp.einsum("x,xn,xnt->t", weights, harms, jnp.exp(live))

    return flatten(jax.jacrev(objective)(params), (length,))


@jit(static_argnames=("policy",))
def prompt_quantities(policy, params, prompt) -> dict:
    """One prompt's level tables, response log-probabilities and score tensor."""
    responses = jnp.asarray(all_prefixes(policy.vocab_size, policy.length))
    return {
        "tables": policy.level_tables(params, prompt),
        "log_probs": policy.token_log_probs(params, responses, prompt).sum(axis=-1),
        "scores": score_tensor(_Prompted(policy, prompt), params, responses),
    }


class _Prompted:
    """A policy's ``token_log_probs`` at a fixed prompt (what :func:`score_tensor` calls)."""

    def __init__(self, policy, prompt):
        self.policy, self.prompt = policy, prompt

    def token_log_probs(self, params, responses):
        return self.policy.token_log_probs(params, responses, self.prompt)


def per_prompt(inst) -> list[dict]:
    """:func:`prompt_quantities` of every prompt, plus ``H`` from the tree engine (cached)."""
    cache = inst.__dict__.setdefault("_prompt_cache", {})
    if "per_prompt" not in cache:
        out = []
        for x, harm in enumerate(inst.prompts.harms):
            q = to_numpy(prompt_quantities(inst.policy, inst.params, x))
            q["cond_harm"] = to_numpy(tree.cond_harm(tuple(q["tables"]), jnp.asarray(harm)))
            q["horizon"] = enumeration.direct_horizon(harm, inst.vocab_size, inst.length)
            out.append(q)
        cache["per_prompt"] = out
    return cache["per_prompt"]


def covariance_sum(inst, weights) -> np.ndarray:
    """``Σ_x w_x Cov_x(H_t^x, s_t^x)`` by direct sums, ``(T, D)``."""
    vocab, length = inst.vocab_size, inst.length
    total = 0.0
    for w, q in zip(weights, per_prompt(inst)):
        probs = np.exp(q["log_probs"])
        cov = np.zeros(q["scores"].shape[1:])
        for t in range(1, length + 1):
            s = q["scores"][:, t - 1]
            h_t = enumeration.expand(np.asarray(q["cond_harm"][t]), vocab, length)
            cov[t - 1] = np.tensordot(probs, h_t[:, None] * s, axes=(0, 0)) - np.dot(
                probs, h_t
            ) * np.tensordot(probs, s, axes=(0, 0))
        total = total + w * cov
    return total


def _weights(inst, plant) -> np.ndarray:
    weights = np.asarray(inst.prompts.weights, np.float64)
    if plant == "prompt-weights-ignored":
        return np.full_like(weights, 1.0 / weights.size)
    return weights


def mixture_horizon(inst, plant=None) -> int:
    """``τ* = max_x τ*(h_x)`` (the planted error takes the minimum)."""
    horizons = [q["horizon"] for q in per_prompt(inst)]
    return min(horizons) if plant == "horizon-min-over-prompts" else max(horizons)


def has_mixture(inst) -> bool:
    return inst.prompts is not None


@register(
    "T3-prompts",
    "on a prompt mixture, g_t of Σ_x p(x) E[h_x|x] = Σ_x p(x) Cov_x(H_t, s_t), "
    "and g_t = 0 for t > τ* = max_x τ*(h_x)",
    plants=["prompt-weights-ignored", "horizon-min-over-prompts"],
    applies=has_mixture,
    mixture=True,
)
def mixture_gradient(inst, plant):
    mix = to_numpy(
        mixture_gradients(
            inst.policy,
            inst.params,
            jnp.asarray(inst.prompts.harms),
            jnp.asarray(inst.prompts.weights),
        )
    )
    cov = covariance_sum(inst, _weights(inst, plant))
    score_mag = max(
        float(np.max(np.tensordot(np.exp(q["log_probs"]), np.abs(q["scores"]), axes=(0, 0))))
        for q in per_prompt(inst)
    )
    terms = inst.num_responses * len(inst.prompts.weights)
    tol = rounding_tolerance(
        np.float64,
        terms=terms,
        ops=ops(inst),
        magnitude=2 * score_mag,
        what="2 max_{x,t,i} E_x|s_{t,i}|, as |h|, |H_t| <= 1 and Σ p(x) = 1",
    )
    tau = mixture_horizon(inst, plant)
    parts = [
        compare(
            "g_t (mixture, autodiff) = Σ_x p(x) Cov_x(H_t, s_t)",
            mix,
            cov,
            tol,
            lhs_name="jax.jacrev of Σ_x p(x) Σ_y P(y|x) h_x(y), teacher-forced, position t live",
            rhs_name="Σ_x p(x) Cov_x(H_t, s_t): H_t from the tree engine per prompt, scores "
            "and P(y|x) teacher-forced, covariance by direct sums",
        ),
        compare(
            "g_t = 0 for t > max_x τ*(h_x)",
            mix[tau:],
            0.0,
            tol,
            scale=float(np.max(np.abs(mix))),
            lhs_name="mixture g_t beyond the horizon over prompts (n/a when it is T)",
            rhs_name="0",
        ),
    ]
    return parts, {"horizons": [q["horizon"] for q in per_prompt(inst)], "claimed_horizon": tau}
