"""Automaton harms: a deterministic finite automaton over tokens with a verdict on its final state.

An :class:`Automaton` reads ``y_1 ... y_T`` from ``start`` through ``transitions[state, token]``;
the harm of ``y`` is ``verdict[final state]``. A prefix is determined when every state reachable
in the remaining ``T - l`` steps has the same verdict (an absorbing HARM or SAFE state, or too few
steps left to change it), which :func:`determined_states` computes by dynamic programming over
(state, steps left) without enumerating responses. This is the structure the Markov engine
exploits (``O(T * contexts * states * V)`` instead of ``O(V**T)``).

Built-ins:

* :func:`harmful_before_refusal` - harm when ``K`` harmful-content tokens appear before any
  refusal token (a refusal ends the harmful path safely, so recovery is possible at any position);
* :func:`pattern_harm` - harm when a given token string occurs anywhere (a KMP automaton).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from toy_lm.errors import InputError
from toy_lm.precision import default_float

__all__ = [
    "Automaton",
    "automaton_determined_masks",
    "automaton_harm_table",
    "determined_states",
    "harmful_before_refusal",
    "level_states",
    "make_automaton",
    "pattern_harm",
    "verdict_range",
]


class Automaton(NamedTuple):
    """A DFA harm: ``transitions`` ``(S, V)`` ints, ``verdict`` ``(S,)`` in ``[0, 1]``, ``start``."""

    transitions: np.ndarray
    verdict: np.ndarray
    start: int

    @property
    def num_states(self) -> int:
        return int(self.transitions.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.transitions.shape[1])


def make_automaton(transitions, verdict, start: int = 0) -> Automaton:
    """Build an :class:`Automaton`, checking shapes, state ids and verdict range."""
    trans = np.asarray(transitions)
    verd = np.asarray(verdict, dtype=np.float64)
    if trans.ndim != 2 or trans.shape[1] < 2:
        raise InputError(f"dfa_transitions must have shape (S, V) with V >= 2, got {trans.shape}")
    if not np.issubdtype(trans.dtype, np.integer):
        raise InputError(f"dfa_transitions must be integers, got dtype {trans.dtype}")
    num_states = trans.shape[0]
    if verd.shape != (num_states,):
        raise InputError(f"dfa_verdict must have shape (S,)=({num_states},), got {verd.shape}")
    if (trans < 0).any() or (trans >= num_states).any():
        raise InputError(f"dfa_transitions holds states outside 0 ... {num_states - 1}")
    if not np.all(np.isfinite(verd)) or (verd < 0).any() or (verd > 1).any():
        raise InputError("dfa_verdict must hold finite values in [0, 1]")
    start = int(start)
    if not 0 <= start < num_states:
        raise InputError(f"dfa_start={start} is not a state (0 ... {num_states - 1})")
    return Automaton(trans.astype(np.int64), verd, start)


def level_states(dfa: Automaton, length: int) -> list[np.ndarray]:
    """Automaton state after every prefix: ``states[l]`` has shape ``(V**l,)``, ``l = 0 ... T``."""
    states = [np.array([dfa.start], np.int64)]
    for _ in range(length):
        states.append(dfa.transitions[states[-1]].reshape(-1))
    return states


def automaton_harm_table(dfa: Automaton, length: int):
    """The harm table ``(V**T,)`` of an automaton harm, ``h(y) = verdict[state after y]``."""
    return jnp.asarray(dfa.verdict[level_states(dfa, length)[-1]], default_float())


def verdict_range(dfa: Automaton, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Min and max verdict reachable from each state in exactly ``r`` steps, ``(T+1, S)`` each."""
    lo = [dfa.verdict]
    hi = [dfa.verdict]
    for _ in range(length):
        lo.append(lo[-1][dfa.transitions].min(axis=1))
        hi.append(hi[-1][dfa.transitions].max(axis=1))
    return np.stack(lo), np.stack(hi)


def determined_states(dfa: Automaton, length: int) -> np.ndarray:
    """``det[r, s]``: the verdict from state ``s`` with ``r`` steps left is already fixed."""
    lo, hi = verdict_range(dfa, length)
    return lo == hi


def automaton_determined_masks(dfa: Automaton, length: int) -> tuple[np.ndarray, ...]:
    """Determined-prefix masks ``det_0 ... det_T`` of an automaton harm, by DP on states."""
    det = determined_states(dfa, length)
    states = level_states(dfa, length)
    return tuple(det[length - level][states[level]] for level in range(length + 1))


def harmful_before_refusal(
    vocab_size: int, num_harmful: int, harmful_tokens: Sequence[int], refusal_tokens: Sequence[int]
) -> Automaton:
    """Harm when ``K = num_harmful`` harmful tokens occur before any refusal token.

    States ``0 ... K-1`` count harmful tokens so far, state ``K`` is HARM (absorbing, verdict 1)
    and state ``K+1`` is SAFE (absorbing, verdict 0): a refusal before the ``K``-th harmful token
    ends the harmful path for good. Other tokens leave the count unchanged.
    """
    harmful, refusal = set(map(int, harmful_tokens)), set(map(int, refusal_tokens))
    if num_harmful < 1:
        raise InputError(f"num_harmful K={num_harmful} must be at least 1")
    if not harmful or not refusal or harmful & refusal:
        raise InputError("need disjoint, non-empty sets of harmful and refusal tokens")
    if min(harmful | refusal) < 0 or max(harmful | refusal) >= vocab_size:
        raise InputError(f"token ids must lie in 0 ... V-1 = {vocab_size - 1}")
    harm_state, safe_state = num_harmful, num_harmful + 1
    trans = np.zeros((num_harmful + 2, vocab_size), np.int64)
    for state in range(num_harmful):
        for token in range(vocab_size):
            if token in refusal:
                trans[state, token] = safe_state
            elif token in harmful:
                trans[state, token] = state + 1
            else:
                trans[state, token] = state
    trans[harm_state] = harm_state
    trans[safe_state] = safe_state
    verdict = np.zeros(num_harmful + 2)
    verdict[harm_state] = 1.0
    return make_automaton(trans, verdict, 0)


def pattern_harm(vocab_size: int, pattern: Sequence[int]) -> Automaton:
    """Harm when ``pattern`` occurs as a contiguous substring (Knuth-Morris-Pratt automaton)."""
    pattern = [int(t) for t in pattern]
    if not pattern or min(pattern) < 0 or max(pattern) >= vocab_size:
        raise InputError(f"pattern must be a non-empty list of tokens in 0 ... {vocab_size - 1}")
    m = len(pattern)
    trans = np.zeros((m + 1, vocab_size), np.int64)
    fail = 0
    for state in range(m):
        for token in range(vocab_size):
            trans[state, token] = state + 1 if token == pattern[state] else trans[fail, token]
        if state > 0:
            fail = trans[fail, pattern[state]]
    trans[m] = m  # absorbing: the pattern has occurred
    verdict = np.zeros(m + 1)
    verdict[m] = 1.0
    return make_automaton(trans, verdict, 0)
