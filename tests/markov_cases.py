"""Held-out Markov x automaton instances and their tree-engine expansions, shared by the tests.

Automata are drawn at random (random transitions, some absorbing HARM/SAFE states, binary or soft
verdicts) next to the built-ins, so the DP engine is checked on structures it was not written
around. Every comparison tolerance is derived from float64 machine epsilon and the problem size.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from toy_lm.compile_options import CPU_COMPILER_OPTIONS
from toy_lm.models.automata import Automaton, automaton_harm_table, make_automaton
from toy_lm.models.policies import MarkovPolicy
from toy_lm.precision import Tolerance, eps_tolerance


class Case(NamedTuple):
    vocab_size: int
    length: int
    order: int
    logits: np.ndarray  # (T, V**k, V)
    ref_logits: np.ndarray  # (T, V**k', V), another order
    dfa: Automaton
    tables: tuple  # canonical level tables of the Markov policy
    ref_tables: tuple
    harm: np.ndarray  # (V**T,)


def random_automaton(
    rng: np.random.Generator,
    num_states: int,
    vocab_size: int,
    *,
    binary: bool = True,
    absorbing: int = 2,
) -> Automaton:
    """Random transitions; the last ``absorbing`` states absorb (HARM first, then SAFE)."""
    trans = rng.integers(0, num_states, (num_states, vocab_size))
    verdict = (
        rng.integers(0, 2, num_states).astype(float)
        if binary
        else np.round(rng.random(num_states), 3)
    )
    for j in range(min(absorbing, num_states - 1)):
        state = num_states - 1 - j
        trans[state] = state
        verdict[state] = float(j == 0)
    return make_automaton(trans, verdict, int(rng.integers(0, num_states - absorbing)))


def markov_tables(logits: np.ndarray, vocab_size: int, length: int, order: int) -> tuple:
    """Canonical level tables of Markov logits, through :class:`MarkovPolicy` (the oracle path)."""
    policy = MarkovPolicy(vocab_size, length, order=order)
    return tuple(np.asarray(t) for t in policy.level_tables(np.asarray(logits)[None]))


def make_case(
    seed: int,
    vocab_size: int,
    length: int,
    order: int,
    num_states: int,
    *,
    binary: bool = True,
    dfa: Automaton | None = None,
    scale: float = 1.5,
) -> Case:
    rng = np.random.default_rng(seed)
    dfa = dfa if dfa is not None else random_automaton(rng, num_states, vocab_size, binary=binary)
    logits = scale * rng.normal(size=(length, vocab_size**order, vocab_size))
    ref_order = (order + 1) % 3
    ref_logits = scale * rng.normal(size=(length, vocab_size**ref_order, vocab_size))
    return Case(
        vocab_size,
        length,
        order,
        logits,
        ref_logits,
        dfa,
        markov_tables(logits, vocab_size, length, order),
        markov_tables(ref_logits, vocab_size, length, ref_order),
        np.asarray(automaton_harm_table(dfa, length)),
    )


#: Held-out instances: orders 0, 1, 2; binary and soft verdicts; random automata and built-ins.
CASES = {
    "k0-V3-T5-random": dict(seed=11, vocab_size=3, length=5, order=0, num_states=4),
    "k1-V3-T6-random": dict(seed=12, vocab_size=3, length=6, order=1, num_states=4),
    "k1-V2-T8-soft": dict(seed=13, vocab_size=2, length=8, order=1, num_states=6, binary=False),
    "k2-V3-T5-random": dict(seed=14, vocab_size=3, length=5, order=2, num_states=4),
    "k2-V2-T7-soft": dict(seed=15, vocab_size=2, length=7, order=2, num_states=4, binary=False),
}


def builtin_cases() -> dict:
    from toy_lm.models.automata import harmful_before_refusal, pattern_harm

    # Same shapes as two random cases above (S = 4), so they reuse the compiled programs.
    return {
        "k1-V3-T6-refusal": dict(
            seed=21,
            vocab_size=3,
            length=6,
            order=1,
            num_states=0,
            dfa=harmful_before_refusal(3, 2, [1], [2]),
        ),
        "k2-V2-T7-pattern": dict(
            seed=22, vocab_size=2, length=7, order=2, num_states=0, dfa=pattern_harm(2, [1, 0, 1])
        ),
    }


def all_cases() -> dict:
    return {**CASES, **builtin_cases()}


def prefix_probs(tables) -> list[np.ndarray]:
    """Prefix probabilities ``P_l`` of level tables, in plain numpy (no compile per shape)."""
    probs = [np.ones(1)]
    for z in tables:
        z = np.asarray(z, np.float64)
        pi = np.exp(z - z.max(axis=1, keepdims=True))
        pi /= pi.sum(axis=1, keepdims=True)
        probs.append((probs[-1][:, None] * pi).reshape(-1))
    return probs


def tolerance(case: Case) -> Tolerance:
    """``eps * 16 (T+1) V²``: per level, softmax and V-term sums in both engines, over T+1 levels.

    Quantities are sums of probability-weighted terms of magnitude <= 1 (the callers scale by the
    magnitude of what they compare). At the test sizes this is below 1e-12, tighter than the
    issue's 1e-10.
    """
    factor = 16 * (case.length + 1) * case.vocab_size**2
    return eps_tolerance(
        np.float64, factor, f"16 (T+1) V^2 with T={case.length}, V={case.vocab_size}"
    )


def assert_close(actual, expected, tol: Tolerance, what: str) -> float:
    """Max abs error of ``actual`` against ``expected``, asserting it is within ``tol`` (scaled by
    the magnitude of ``expected`` when that exceeds 1). Returns the error."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= tol.value * scale, (
        f"{what}: max abs error {err:.3g} > {tol.value * scale:.3g} ({tol.derivation}, "
        f"scaled by {scale:.3g})"
    )
    return err


_JITTED: dict = {}


def jit(fn, **static):
    """``fn`` jitted (cached) with ``dfa`` as a traced pytree and keyword arguments closed over,
    so instances of the same shapes share one compiled program."""
    key = (fn, tuple(sorted(static.items())))
    if key not in _JITTED:
        _JITTED[key] = jax.jit(
            lambda *args: fn(*args, **static), compiler_options=CPU_COMPILER_OPTIONS
        )
    return _JITTED[key]
