"""The model file of ``harm-horizon analyze-markov``: a Markov policy and an automaton harm.

One ``.npz`` with four arrays (THEORY.md's symbols: ``V`` tokens, ``T`` positions, order ``k``,
``S`` automaton states):

* ``markov_logits`` float ``(T, V**k, V)``: row ``c`` of position ``t`` (index ``t - 1``) holds the
  logits of ``y_t`` after the context ``c``, the last ``k`` tokens of ``y_<t`` read as a base-``V``
  number (``y_{t-k}`` most significant), left-padded with token 0 while ``t <= k``. The order
  ``k`` is not stored: it is read off the shape (``V**k`` contexts; ``k = 0`` is one context per
  position). This is :class:`~toy_lm.models.policies.MarkovPolicy`'s ``params[prompt]``.
* ``dfa_transitions`` int ``(S, V)``: ``δ(s, v)``, the state after reading token ``v`` in state
  ``s``.
* ``dfa_verdict`` float ``(S,)``: the harm ``h(y)`` of a response whose reading ends in state
  ``s``, in ``[0, 1]`` (0/1 for a binary harm).
* ``dfa_start`` int, a 0-d array: the state before the first token.

:func:`markov_model_arrays` turns a :class:`~toy_lm.models.automata.Automaton` and the logits into these
arrays (checked), :func:`save_markov_model` writes them atomically, and
:func:`random_markov_model` draws the instance of ``analyze-markov --random``.

Example::

    import jax
    from toy_lm import MarkovPolicy, harmful_before_refusal
    from toy_lm.models.markov_model import save_markov_model

    policy = MarkovPolicy(vocab_size=4, length=64, order=2)
    logits = policy.init(jax.random.key(0))[0]            # (T, V**k, V) of prompt 0
    dfa = harmful_before_refusal(4, 2, harmful_tokens=[1], refusal_tokens=[2])
    save_markov_model("model.npz", logits, dfa)           # harm-horizon analyze-markov model.npz
"""

from __future__ import annotations

import numpy as np

from toy_lm.errors import EnumerationTooLarge, InputError
from toy_lm.models.automata import Automaton, harmful_before_refusal, make_automaton

__all__ = ["MODEL_KEYS", "markov_model_arrays", "random_markov_model", "save_markov_model"]

#: The keys of the model file, in the order the format lists them.
MODEL_KEYS = ("markov_logits", "dfa_transitions", "dfa_verdict", "dfa_start")


def markov_model_arrays(logits, dfa: Automaton) -> dict[str, np.ndarray]:
    """The four arrays of the model file for ``logits`` ``(T, V**k, V)`` and ``dfa``.

    Args:
      logits: ``(T, V**k, V)`` Markov logits (see the module docstring for the context layout).
      dfa: the automaton harm, over the same ``V`` tokens.

    Returns:
      ``{"markov_logits": float64 (T, V**k, V), "dfa_transitions": int64 (S, V),
      "dfa_verdict": float64 (S,), "dfa_start": int64 ()}``.

    Raises:
      InputError: on inconsistent shapes, a context axis that is not a power of ``V``, non-finite
        logits, or an invalid automaton.
    """
    from toy_lm.engines.markov import check_markov

    dfa = make_automaton(dfa.transitions, dfa.verdict, dfa.start)
    logits = np.asarray(logits, dtype=np.float64)
    check_markov(logits, dfa)
    if not np.all(np.isfinite(logits)):
        raise InputError("markov_logits must be finite (use e.g. -30 for a near-zero probability)")
    return {
        "markov_logits": logits,
        "dfa_transitions": np.asarray(dfa.transitions, dtype=np.int64),
        "dfa_verdict": np.asarray(dfa.verdict, dtype=np.float64),
        "dfa_start": np.int64(dfa.start),
    }


def save_markov_model(path: str, logits, dfa: Automaton) -> None:
    """Write the model file for ``logits`` and ``dfa`` to ``path`` (atomically, checked first)."""
    from toy_lm.outputs import save_npz

    save_npz(path, markov_model_arrays(logits, dfa), tag="npz")


def random_markov_model(
    seed: int, vocab_size: int, length: int, order: int, num_harmful: int = 2
) -> tuple[np.ndarray, Automaton]:
    """A random order-``k`` :class:`~toy_lm.models.policies.MarkovPolicy` (standard normal logits drawn
    from ``jax.random.key(seed)``) and the refusal-world harm: ``K = num_harmful`` harmful tokens
    (token 1) before any refusal (token 2); tokens 0 and ``3 ... V-1`` are neutral. Needs ``V >= 3``.

    Returns:
      ``(logits (T, V**k, V) float64, dfa)``.
    """
    import jax

    from toy_lm.models.policies import MarkovPolicy
    from toy_lm.tables import memory_budget

    if vocab_size < 3:
        raise InputError(
            f"V = {vocab_size}: the random model's harm needs V >= 3 "
            "(token 1 harmful, token 2 refusal)"
        )
    if length < 1:
        raise InputError(f"T = {length}; responses need T >= 1")
    if order < 0:
        raise InputError(f"order k = {order} must be >= 0")
    # The logits alone hold T * V**(k+1) float64 numbers: refuse before drawing them.
    need, budget = 8 * length * vocab_size ** (order + 1), memory_budget()
    if need > budget:
        raise EnumerationTooLarge(
            f"order-{order} Markov logits at V={vocab_size}, T={length} "
            f"need {need / 2**30:.1f} GiB, more than the "
            f"{budget / 2**30:.1f} GiB available; use a lower order"
        )
    policy = MarkovPolicy(vocab_size, length, order=order)
    logits = np.asarray(policy.init(jax.random.key(seed))[0], dtype=np.float64)
    dfa = harmful_before_refusal(vocab_size, num_harmful, harmful_tokens=[1], refusal_tokens=[2])
    return logits, dfa
