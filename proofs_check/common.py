"""Small helpers the check modules share: cached engine outputs, rounding scales, expectations."""

from __future__ import annotations

import numpy as np

from proofs_check.autodiff import parameter_quantities, to_numpy
from proofs_check.engine import engine_quantities
from toy_lm.models.neural import MLPPolicy, TransformerPolicy

__all__ = [
    "NEURAL_OPS",
    "OPS_PER_LEVEL",
    "engine",
    "expect",
    "level_blocks",
    "ops",
    "outputs",
    "quantities",
    "score_magnitude",
]

#: Floating-point operations per level along one term's path: log-softmax (max, subtract, exp,
#: sum, log), the product of conditionals, and the same again in the backward pass.
OPS_PER_LEVEL = 8

#: Extra operations per term for a neural policy's logits (embedding, attention, MLP, norm).
NEURAL_OPS = 64


def ops(inst) -> int:
    """Operations along one term's path: ``8 T`` (+ 64 for a neural policy's forward pass)."""
    neural = isinstance(inst.policy, (TransformerPolicy, MLPPolicy))
    return OPS_PER_LEVEL * inst.length + (NEURAL_OPS if neural else 0)


def engine(inst, harm=None) -> dict:
    """:func:`proofs_check.engine.engine_quantities` of the instance's tables (cached per harm)."""
    if harm is None or harm is inst.harm:
        cache = inst.__dict__.setdefault("_engine_cache", {})
        if "engine" not in cache:
            cache["engine"] = to_numpy(engine_quantities(inst.tables, inst.harm))
        return cache["engine"]
    return to_numpy(engine_quantities(inst.tables, harm))


def quantities(inst, harm=None) -> dict:
    """Parameter-space quantities (cached for the instance's own harm, fresh for a planted one)."""
    if harm is None or harm is inst.harm:
        return inst.quantities
    return to_numpy(parameter_quantities(inst.policy, inst.params, harm))


def expect(probs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``E[values(Y)] = Σ_y P(y) values(y)`` over the leading (response) axis."""
    values = np.asarray(values)
    return np.tensordot(probs, values, axes=(0, 0))


def score_magnitude(inst) -> float:
    """``max_{t,i} E|s_{t,i}|``: bounds ``Σ_y P(y)|x(y) s_{t,i}(y)|`` for any ``|x| <= 1``."""
    scores = inst.quantities["scores"]
    return float(np.max(expect(inst.probs, np.abs(scores)), initial=0.0))


def level_blocks(values_per_response: np.ndarray, vocab_size: int, level: int) -> np.ndarray:
    """Reshape ``(V**T, ...)`` to ``(V**l, V**(T-l), ...)``: responses grouped by level-l prefix."""
    values = np.asarray(values_per_response)
    return values.reshape((vocab_size**level, -1) + values.shape[1:])


def outputs(inst, harm=None) -> dict:
    """The outputs of the instance's engine (:func:`proofs_check.engines.engine_outputs`)."""
    from proofs_check.engines import engine_outputs

    return engine_outputs(inst, harm)
