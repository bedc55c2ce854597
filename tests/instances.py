"""Local Hypothesis strategies for the foundation's tests: sizes, policies of every kind, harms.

Sizes are drawn from a short fixed list (``V**T <= 81``) so that compiled programs are reused
across examples: compile time, not arithmetic, dominates the suite. Everything is built
deterministically from an integer seed, so a failing example is reproducible from its printout.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from toy_lm.models import automata, harms, policy_factory
from toy_lm.precision import eps_tolerance

EPS = float(np.finfo(np.float64).eps)

#: True under ``HYPOTHESIS_PROFILE=long``, which also widens the sizes drawn.
LONG = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "long"
#: (V, T) pairs the property tests draw from. Under ``ci`` they are few, so that the compiled
#: programs are reused across examples and test files; ``long`` draws from many more.
SIZES = (
    ((2, 1), (2, 3), (3, 2), (2, 4), (3, 3), (4, 2), (2, 5), (3, 4), (4, 3))
    if LONG
    else ((2, 3), (3, 2), (2, 4))
)
#: Pairs for tests that compile bigger programs (neural policies, gradients, whole engines).
SMALL_SIZES = ((2, 1), (2, 3), (3, 2), (2, 4), (3, 3), (4, 2)) if LONG else ((2, 3), (3, 2))

POLICY_KINDS = ("tabular", "positional", "markov1", "markov2", "transformer", "mlp")
HARM_KINDS = (
    "table_binary",
    "table_soft",
    "decided",
    "soft",
    "before_refusal",
    "pattern",
    "random_dfa",
)
AUTOMATON_KINDS = ("before_refusal", "pattern", "random_dfa")


#: The tests' policy kinds as calls of the one factory (:func:`toy_lm.models.policy_factory.make_policy`):
#: its kind names, with the Markov order spelled out and a two-head transformer.
KIND_OPTIONS = {
    "tabular": ("tabular", {}),
    "positional": ("positional", {}),
    "markov1": ("markov", {"order": 1}),
    "markov2": ("markov", {"order": 2}),
    "transformer": ("transformer", {"num_heads": 2}),
    "mlp": ("mlp", {}),
}


@functools.cache
def make_policy(kind: str, vocab_size: int, length: int, num_prompts: int = 1):
    """A policy object of one of :data:`POLICY_KINDS` (cached: policies are hashable, stateless)."""
    factory_kind, options = KIND_OPTIONS[kind]
    return policy_factory.make_policy(
        factory_kind, vocab_size, length, num_prompts=num_prompts, **options
    )


NEURAL_KINDS = ("transformer", "mlp")


def init_params(policy, kind: str, seed: int, scale: float = 1.0):
    """Parameters of a policy drawn from ``seed``.

    Table-like policies get ``scale * N(0, 1)`` logits from numpy, in exactly the parameter shapes
    their ``init`` makes: compiling JAX's PRNG for every parameter shape would dominate the suite's
    run time (``init`` itself is tested in test_policies.py). Neural policies use ``init``.
    """
    if kind in NEURAL_KINDS:
        return policy.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(policy.init, jax.random.key(0))
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape)), shapes)


@functools.cache
def jitted(policy, method: str, static_argnames=None):
    """``jax.jit`` of a policy method, cached per policy (one compile per size and kind)."""
    return jax.jit(getattr(policy, method), static_argnames=static_argnames)


def random_automaton(seed: int, vocab_size: int) -> automata.Automaton:
    """A random DFA with 1-4 states and verdicts in {0, 1/2, 1}."""
    rng = np.random.default_rng(seed)
    num_states = int(rng.integers(1, 5))
    trans = rng.integers(0, num_states, size=(num_states, vocab_size))
    verdict = rng.choice([0.0, 0.5, 1.0], size=num_states)
    return automata.make_automaton(trans, verdict, int(rng.integers(0, num_states)))


def make_automaton(kind: str, vocab_size: int, length: int, seed: int) -> automata.Automaton:
    """A built-in or random automaton harm over ``V`` tokens."""
    rng = np.random.default_rng(seed)
    if kind == "before_refusal":
        tokens = rng.permutation(vocab_size)
        n_harmful = int(rng.integers(1, vocab_size))  # at least one refusal token remains
        n_refusal = int(rng.integers(1, vocab_size - n_harmful + 1))
        return automata.harmful_before_refusal(
            vocab_size,
            int(rng.integers(1, length + 2)),
            tokens[:n_harmful],
            tokens[n_harmful : n_harmful + n_refusal],
        )
    if kind == "pattern":
        return automata.pattern_harm(
            vocab_size, rng.integers(0, vocab_size, int(rng.integers(1, length + 1)))
        )
    if kind == "random_dfa":
        return random_automaton(seed, vocab_size)
    raise ValueError(kind)


def make_harm(kind: str, vocab_size: int, length: int, tau: int, seed: int) -> np.ndarray:
    """A harm table ``(V**T,)`` of the given kind, as float64 numpy."""
    key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    n = vocab_size**length
    if kind == "table_binary":
        return np.asarray(harms.harm_table(rng.integers(0, 2, n), vocab_size, length))
    if kind == "table_soft":
        return np.asarray(harms.harm_table(rng.random(n), vocab_size, length))
    if kind == "decided":
        return np.asarray(harms.random_decided_harm(key, vocab_size, length, tau))
    if kind == "soft":
        return np.asarray(harms.soft_harm(key, vocab_size, length, tau))
    dfa = make_automaton(kind, vocab_size, length, seed)
    return np.asarray(automata.automaton_harm_table(dfa, length))


@dataclasses.dataclass
class Instance:
    """A drawn test instance: policy, its parameters and level tables, and a harm."""

    vocab_size: int
    length: int
    tau: int
    seed: int
    policy_kind: str
    harm_kind: str
    policy: object
    params: object
    tables: list  # numpy float64 level tables (V**l, V)
    harm: np.ndarray  # (V**T,)

    def __repr__(self):  # Hypothesis prints this on failure; keep it short and reproducible.
        return (
            f"Instance(V={self.vocab_size}, T={self.length}, tau={self.tau}, seed={self.seed}, "
            f"policy={self.policy_kind}, harm={self.harm_kind})"
        )


@st.composite
def instances(draw, sizes=SIZES, policy_kinds=POLICY_KINDS, harm_kinds=HARM_KINDS, scale=None):
    """A random (policy, harm) instance over the given sizes and kinds."""
    vocab_size, length = draw(st.sampled_from(sizes))
    tau = draw(st.integers(0, length))
    seed = draw(st.integers(0, 2**31 - 1))
    # Neural policies only at the SMALL_SIZES, which other tests compile anyway: building and
    # compiling a transformer for every size would cost more than all the arithmetic.
    allowed = [
        k for k in policy_kinds if k not in NEURAL_KINDS or (vocab_size, length) in SMALL_SIZES
    ] or list(policy_kinds)
    policy_kind = draw(st.sampled_from(allowed))
    harm_kind = draw(st.sampled_from(harm_kinds))
    if scale is None:
        scale = draw(st.sampled_from((0.5, 1.0, 3.0)))
    policy = make_policy(policy_kind, vocab_size, length)
    params = init_params(policy, policy_kind, seed, scale)
    tables = [np.asarray(z, np.float64) for z in jitted(policy, "level_tables")(params)]
    harm = make_harm(harm_kind, vocab_size, length, tau, seed)
    return Instance(
        vocab_size, length, tau, seed, policy_kind, harm_kind, policy, params, tables, harm
    )


def tol(factor: float, why: str) -> float:
    """``factor * eps(float64)``; ``why`` states what the factor counts (kept for the reader)."""
    return eps_tolerance(np.float64, factor, why).value


def random_tables(rng: np.random.Generator, vocab_size: int, length: int, scale: float = 1.0):
    """Independent normal logit tables ``(V**l, V)`` (a tabular policy straight from numpy)."""
    return [scale * rng.normal(size=(vocab_size**level, vocab_size)) for level in range(length)]


def examples(n: int) -> int:
    """``n`` examples under the ``ci`` profile (25 by default), scaled up under ``long``."""
    from hypothesis import settings

    return max(n, settings.default.max_examples * n // 25)
