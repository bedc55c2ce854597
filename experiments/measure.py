"""Exact measurements of a trained model against its base model (enumeration, no sampling).

Index conventions: *positions* ``t = 1 ... T`` (arrays of length ``T``, entry ``t - 1``); prefill
lengths ``k = 0 ... T-1`` (entry ``k``); levels ``l`` = prefix lengths. All arrays are returned as
plain Python lists so that a result is JSON.

For the harmful prompt with aligned tables ``π`` and base tables ``π0``:

* ``per_position_kl`` - teacher-forced on the base model's harmful responses, as Qi et al.
  measure it: ``KL_t^TF = Σ_{y_<t} q_{t-1}(y_<t) KL(π(.|y_<t) ‖ π0(.|y_<t))`` with
  ``q_l = P_{π0}(y_<=l | h = 1)``;
* ``per_position_kl_beyond_horizon`` - the same sum restricted to determined prefixes (where the
  harm is already decided: standard objectives have no gradient there, THEORY.md T5);
* ``per_position_kl_own`` - ``KL_t(π ‖ π0)`` on the model's own responses;
* ``spill_over_kl`` - ``Σ_{y_<t determined} P_π(y_<t) KL(...)``: KL beyond the horizon on the
  model's own responses (zero for tabular standard objectives, measured for shared weights);
* ``prefill_asr`` - ``ASR_π(k) = E_{q_k}[H^π_k]``, ``k = 0 ... T-1`` (:func:`toy_lm.engines.tree.prefill_asr_curve`);
* ``prefill_asr_floor`` (base) - ``Σ q_k(u) 1[u determined] H_k(u)``: the part of any model's ASR
  that is harm already done inside the forced prefix;
* ``harm_information`` (base) - ``I_t(π0)``, and the equilibrium ``KL_t(π*_λ ‖ π0)`` for a few
  ``λ`` (THEORY.md T7c: ``2 λ² KL_t / I_t → 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.world import RefusalWorld, describe_response
from toy_lm.compile_options import one_off_jit
from toy_lm.engines import objectives as exact
from toy_lm.engines import tree
from toy_lm.models.harms import horizon_from_masks
from toy_lm.tables import all_prefixes, prefix_index

__all__ = [
    "base_measurements",
    "equilibria_arrays",
    "equilibria_from_arrays",
    "equilibrium_measurements",
    "equilibrium_optima",
    "martingale_paths",
    "model_arrays",
    "model_from_arrays",
    "model_measurements",
    "recovery_costs",
    "row_kl",
    "sample_from_tables",
    "tokens_from_uniforms",
    "value_paths",
]


def _list(x) -> list:
    return np.asarray(x, np.float64).tolist()


def row_kl(logits, ref_logits) -> list:
    """``KL(π(.|u) ‖ π0(.|u))`` for every prefix ``u`` of every level, ``(V**l,)`` each."""
    out = []
    for z, zr in zip(logits, ref_logits):
        logp, logq = jax.nn.log_softmax(jnp.asarray(z), -1), jax.nn.log_softmax(jnp.asarray(zr), -1)
        out.append(jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1))
    return out


def sample_from_tables(key: jax.Array, logits, num: int) -> np.ndarray:
    """``num`` responses ``(num, T)`` drawn from level tables (inverse CDF of uniforms from ``key``)."""
    return tokens_from_uniforms(logits, np.asarray(jax.random.uniform(key, (num, len(logits)))))


def tokens_from_uniforms(logits, uniforms) -> np.ndarray:
    """Responses ``(num, T)`` from level tables by the inverse CDF of ``uniforms`` ``(num, T)``."""
    vocab_size = np.shape(logits[0])[1]
    uniforms = np.asarray(uniforms)
    num = uniforms.shape[0]
    tokens = np.zeros((num, 0), np.int64)
    for level, z in enumerate(logits):
        z = np.asarray(z)[prefix_index(tokens, vocab_size)]
        probs = np.exp(z - z.max(axis=1, keepdims=True))
        cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
        nxt = np.minimum((cdf < uniforms[:, level : level + 1]).sum(axis=1), vocab_size - 1)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
    return tokens


def martingale_paths(key, logits, harm, num: int, values=None) -> tuple[np.ndarray, np.ndarray]:
    """Sampled responses and their paths ``H_0 ... H_T`` under the same policy, ``(num, T+1)``.

    ``values`` may pass the already computed ``H_0 ... H_T`` of ``logits``.
    """
    values = values if values is not None else _cond_harm(tuple(logits), harm)
    responses = sample_from_tables(key, logits, num)
    return responses, value_paths(values, responses, np.shape(logits[0])[1])


def value_paths(values, responses, vocab_size: int) -> np.ndarray:
    """``H_0(y_<1) ... H_T(y)`` along each response, ``(num, T+1)``, from ``values`` ``H_l``."""
    return np.stack(
        [
            np.asarray(values[level])[prefix_index(responses[:, :level], vocab_size)]
            for level in range(responses.shape[1] + 1)
        ],
        axis=1,
    )


_cond_harm = one_off_jit(tree.cond_harm)


@one_off_jit
def _base_arrays(base_h, base_b, harm, utility, det, lams):
    qs = tree.harmful_prefix_dists(base_h, harm)[: len(base_h)]
    values = tree.cond_harm(base_h, harm)
    eq_kl = jax.vmap(
        lambda lam: tree.per_position_kl(tree.equilibrium_policy(base_h, harm, lam), base_h)
    )(lams)
    return {
        "expected_harm": values[0][0],
        "utility": tree.expected_harm(base_b, utility),
        "prefill_asr": tree.prefill_asr_curve(base_h, harm, base_h),
        "prefill_asr_floor": jnp.stack([jnp.sum(q * v * d) for q, v, d in zip(qs, values, det)]),
        "determined_fraction": jnp.stack([jnp.sum(q * d) for q, d in zip(qs, det)]),
        "harm_information": tree.harm_information(base_h, harm),
        "harm_information_mi": tree.harm_information_mi(base_h, harm),
        "equilibrium_kl": eq_kl,
        "harmful_responses": jnp.exp(tree.response_log_probs(base_h)) * harm,
    }


def base_measurements(world: RefusalWorld, base_tables, equilibrium_lams) -> dict:
    """Everything about the base model ``π0`` a run reports (harmful prompt unless noted)."""
    det = world.determined
    arrays = _base_arrays(
        *base_tables,
        world.harm,
        world.utility,
        det[:-1],
        jnp.asarray(equilibrium_lams, jnp.float64),
    )
    joint = np.asarray(arrays.pop("harmful_responses"))
    typical = all_prefixes(world.vocab_size, world.length)[int(np.argmax(joint))]
    path_horizon = int(
        sum(
            not det[level][int(prefix_index(typical[:level], world.vocab_size))]
            for level in range(world.length)
        )
    )
    out = {k: (float(v) if np.ndim(v) == 0 else _list(v)) for k, v in arrays.items()}
    eq_kl = out.pop("equilibrium_kl")
    return {
        **out,
        "global_horizon": int(horizon_from_masks(det)),
        "typical_harmful_response": describe_response(world, typical),
        "typical_harmful_probability": float(joint.max() / joint.sum()),
        "harmful_path_horizon": path_horizon,
        "equilibrium": {"lams": list(map(float, equilibrium_lams)), "kl": eq_kl},
    }


@one_off_jit
def model_arrays(tab_h, tab_b, base_h, base_b, harm, utility, det):
    """The exact arrays behind :func:`model_measurements` (jitted; ``jax.vmap`` maps it)."""
    qs = tree.harmful_prefix_dists(base_h, harm)[: len(base_h)]
    kl_rows = row_kl(tab_h, base_h)
    own = tree.prefix_probs(tab_h)
    return {
        "expected_harm": tree.expected_harm(tab_h, harm),
        "utility": tree.expected_harm(tab_b, utility),
        "per_position_kl": jnp.stack([jnp.sum(q * k) for q, k in zip(qs, kl_rows)]),
        "per_position_kl_beyond_horizon": jnp.stack(
            [jnp.sum(q * k * d) for q, k, d in zip(qs, kl_rows, det)]
        ),
        "per_position_kl_own": tree.per_position_kl(tab_h, base_h),
        "spill_over_kl": jnp.stack([jnp.sum(p * k * d) for p, k, d in zip(own, kl_rows, det)]),
        "benign_per_position_kl": tree.per_position_kl(tab_b, base_b),
        "prefill_asr": tree.prefill_asr_curve(tab_h, harm, base_h),
        "cond_harm": tree.cond_harm(tab_h, harm),
    }


def _scalars_and_lists(arrays: dict) -> dict:
    return {k: (float(v) if np.ndim(v) == 0 else _list(v)) for k, v in arrays.items()}


def equilibrium_measurements(world: RefusalWorld, base_tables, lam: float, mu: float) -> dict:
    """The exact optima (not trained) of two objectives at the run's ``λ``, ``μ``, measured like a model.

    * ``rlhf``: ``π*_λ ∝ π0 exp(-h/λ)`` (harmful prompt; THEORY.md T7);
    * ``recovery_dense``: ``π0`` tilted by ``exp(-(h + μ Σ_t c_t)/λ)`` (THEORY.md T9b).

    The benign prompt keeps the base tables, so only harmful-prompt fields are meaningful.
    """
    arrays = equilibria_arrays(
        *base_tables,
        world.harm,
        world.utility,
        world.determined[:-1],
        recovery_costs(world),
        jnp.full(world.length, mu),
        lam,
    )
    return equilibria_from_arrays(arrays)


def recovery_costs(world: RefusalWorld):
    """The dense recovery costs ``c_t`` of the world (:func:`toy_lm.engines.objectives.automaton_costs`)."""
    return exact.automaton_costs(world.recovery_dfa, world.length, [1])


def equilibria_from_arrays(arrays: dict) -> dict:
    """:func:`equilibrium_measurements` from the arrays of :func:`equilibria_arrays`."""
    return {
        name: _scalars_and_lists(
            {
                k: v
                for k, v in measured.items()
                if not k.startswith("benign") and k not in ("utility", "cond_harm")
            }
        )
        for name, measured in arrays.items()
    }


@one_off_jit
def equilibria_arrays(base_h, base_b, harm, utility, det, costs, mu, lam):
    """The exact optima of :func:`equilibrium_measurements`, measured by :func:`model_arrays`."""
    return {
        name: model_arrays(tables, base_b, base_h, base_b, harm, utility, det)
        for name, tables in equilibrium_optima(base_h, harm, costs, mu, lam).items()
    }


def equilibrium_optima(base_h, harm, costs, mu, lam) -> dict:
    """Level tables of ``π*_λ`` (``rlhf``) and of the dense recovery optimum (``recovery_dense``)."""
    return {
        "rlhf": tree.equilibrium_policy(base_h, harm, lam),
        "recovery_dense": exact.dense_equilibrium_policy(base_h, harm, costs, mu, lam),
    }


def model_measurements(world: RefusalWorld, tables, base_tables, key, num_paths: int) -> dict:
    """Exact measurements of a model with level tables ``(harmful, benign)`` against the base."""
    arrays = model_arrays(*tables, *base_tables, world.harm, world.utility, world.determined[:-1])
    uniforms = jax.random.uniform(key, (num_paths, world.length))
    return model_from_arrays(world, arrays, tables[0], uniforms)


def model_from_arrays(world: RefusalWorld, arrays: dict, tables_harmful, uniforms) -> dict:
    """:func:`model_measurements` from the arrays of :func:`model_arrays` (``cond_harm``
    included), the harmful prompt's level tables and the uniforms ``(num_paths, T)`` of the
    martingale paths (``jax.random.uniform(key, (num_paths, T))``)."""
    arrays = dict(arrays)
    values = [np.asarray(v) for v in arrays.pop("cond_harm")]
    out = _scalars_and_lists(arrays)
    responses = tokens_from_uniforms(tables_harmful, uniforms)
    out["martingale_paths"] = value_paths(values, responses, world.vocab_size).tolist()
    return out
