"""Hypothesis strategies for property tests of your own claims about toy policies and harms.

Composable pieces: :func:`vocab_sizes`, :func:`lengths`, :func:`policies` (every parameterization,
parameters drawn from a seed), :func:`harms` (binary, soft or automaton harm, with a given or a
random horizon) and :func:`instances` (a full :class:`~proofs_check.instances.Instance`, ready for
any registered check or your own computation). Example - a property of the engine in a few lines::

    import jax
    from hypothesis import given
    import toy_lm
    from proofs_check.strategies import instances

    harm_information = jax.jit(toy_lm.harm_information)  # compiled once per tree shape

    @given(instances(max_vocab=3, max_length=4))
    def test_no_information_beyond_the_horizon(inst):
        info = harm_information(inst.tables, inst.harm)
        assert all(float(i) == 0.0 for i in info[inst.horizon:])

Drawing a policy turns JAX's float64 mode on (:func:`toy_lm.require_x64`): the checks are exact
in float64. Every drawn policy shape ``(kind, V, T)`` compiles its programs once; keep the ranges small
(``V**T`` up to a few hundred) so a run stays fast. Shrinking goes towards small ``V``, ``T`` and
seed 0.
"""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import strategies as st

from proofs_check.instances import (
    HARMFUL_TOKEN,
    NUM_HARMFUL,
    REFUSAL_TOKEN,
    Instance,
    recovery_cost_automaton,
)
from toy_lm.models.automata import automaton_harm_table, harmful_before_refusal, pattern_harm
from toy_lm.models.harms import random_decided_harm, soft_harm
from toy_lm.models.policy_factory import POLICY_KINDS, init_params, make_policy, policy_kind
from toy_lm.precision import require_x64

__all__ = ["HARM_KINDS", "harms", "instances", "lengths", "mixtures", "policies", "vocab_sizes"]

#: Harm kinds :func:`harms` can draw.
HARM_KINDS = ("binary", "soft", "automaton")

_SEEDS = st.integers(min_value=0, max_value=2**31 - 1)


def vocab_sizes(min_value: int = 2, max_value: int = 3) -> st.SearchStrategy[int]:
    """Vocabulary sizes ``V``."""
    return st.integers(min_value=min_value, max_value=max_value)


def lengths(min_value: int = 1, max_value: int = 4) -> st.SearchStrategy[int]:
    """Response lengths ``T``."""
    return st.integers(min_value=min_value, max_value=max_value)


@st.composite
def policies(
    draw,
    *,
    vocab_size=None,
    length=None,
    kinds=POLICY_KINDS,
    max_vocab: int = 3,
    max_length: int = 4,
):
    """``(policy, params)`` of a drawn parameterization and size.

    Args:
      vocab_size, length: fix ``V`` / ``T`` (ints) or leave ``None`` to draw them.
      kinds: parameterizations to draw from (``"tabular"``, ``"positional"``, ``"markov"``,
        ``"transformer"``).
      max_vocab, max_length: upper limits when drawing ``V`` / ``T``.
    """
    require_x64()
    kind = draw(st.sampled_from(tuple(kinds)))
    v = vocab_size if vocab_size is not None else draw(vocab_sizes(2, max_vocab))
    t = length if length is not None else draw(lengths(1, max_length))
    policy = make_policy(kind, v, t)
    params = init_params(policy, jax.random.key(draw(_SEEDS)))
    return policy, params


@st.composite
def harms(draw, vocab_size: int, length: int, *, horizon=None, kinds=HARM_KINDS):
    """A harm table ``(V**T,)`` (numpy float64).

    Args:
      vocab_size, length: ``V`` and ``T``.
      horizon: ``τ*`` of a decided harm (int), or ``None`` to draw it from ``0 ... T``.
      kinds: ``"binary"`` / ``"soft"`` (decided by the first ``τ`` tokens, horizon exactly ``τ``
        for binary, at most ``τ`` for soft) and ``"automaton"`` (a harmful-before-refusal or
        pattern automaton; drawn only when ``horizon`` is ``None``, since an automaton sets its
        own horizon).
    """
    allowed = [k for k in kinds if k != "automaton" or horizon is None]
    if not allowed:
        raise ValueError("an automaton harm has its own horizon: pass horizon=None or other kinds")
    kind = draw(st.sampled_from(allowed))
    key = jax.random.key(draw(_SEEDS))
    if kind == "automaton":
        if vocab_size >= 3 and draw(st.booleans()):
            dfa = harmful_before_refusal(
                vocab_size, draw(st.integers(1, 2)), [HARMFUL_TOKEN], [REFUSAL_TOKEN]
            )
        else:
            pattern = draw(
                st.lists(
                    st.integers(0, vocab_size - 1), min_size=1, max_size=max(1, min(length, 2))
                )
            )
            dfa = pattern_harm(vocab_size, pattern)
        return np.asarray(automaton_harm_table(dfa, length), np.float64)
    tau = horizon if horizon is not None else draw(st.integers(0, length))
    if kind == "binary":
        return np.asarray(random_decided_harm(key, vocab_size, length, tau), np.float64)
    return np.asarray(soft_harm(key, vocab_size, length, tau), np.float64)


@st.composite
def instances(
    draw,
    *,
    kinds=POLICY_KINDS,
    harm_kinds=HARM_KINDS,
    max_vocab: int = 3,
    max_length: int = 4,
    min_length: int = 1,
    min_vocab: int = 2,
    horizon=None,
    lams=st.floats(min_value=0.1, max_value=10.0),
):
    """A full :class:`~proofs_check.instances.Instance`: policy, parameters, harm and ``λ``.

    Automaton instances drawn here (``V >= 3``, ``"automaton"`` in ``harm_kinds``) carry the
    harmful-before-refusal automaton and the recovery cost automaton, so T9/T9b apply to them.
    ``min_vocab = max_vocab`` and ``min_length = max_length`` fix one tree shape per policy kind
    (one compilation of each program).
    """
    v = draw(vocab_sizes(min_vocab, max_vocab))
    t = draw(lengths(min_length, max_length))
    policy, params = draw(policies(vocab_size=v, length=t, kinds=kinds))
    lam = draw(lams)
    seed = draw(_SEEDS)
    recovery = (
        "automaton" in harm_kinds and horizon is None and v >= 3 and t >= 2 and draw(st.booleans())
    )
    if recovery:
        dfa = harmful_before_refusal(v, NUM_HARMFUL, [HARMFUL_TOKEN], [REFUSAL_TOKEN])
        harm = np.asarray(automaton_harm_table(dfa, t), np.float64)
        return Instance(
            f"drawn {policy_kind(policy)} V{v} T{t} recovery",
            policy,
            params,
            harm,
            lam=lam,
            seed=seed,
            harm_kind="automaton",
            dfa=dfa,
            cost_dfa=recovery_cost_automaton(v),
        )
    harm = draw(harms(v, t, horizon=horizon, kinds=harm_kinds))
    binary = bool(np.all((harm == 0) | (harm == 1)))
    return Instance(
        f"drawn {policy_kind(policy)} V{v} T{t}",
        policy,
        params,
        harm,
        lam=lam,
        seed=seed,
        harm_kind="binary" if binary else "soft",
    )


@st.composite
def mixtures(
    draw,
    *,
    kinds=POLICY_KINDS,
    max_vocab: int = 3,
    max_length: int = 4,
    min_length: int = 1,
    min_vocab: int = 2,
    max_prompts: int = 3,
):
    """A prompt-mixture :class:`~proofs_check.instances.Instance` (THEORY.md "Prompts"): a policy
    conditioned on ``P = 2 ... max_prompts`` prompts, drawn positive weights ``p(x)`` and one drawn
    harm per prompt (binary or soft, with its own horizon)."""
    from proofs_check.prompts import PromptMixture

    require_x64()
    v = draw(vocab_sizes(min_vocab, max_vocab))
    t = draw(lengths(min_length, max_length))
    num_prompts = draw(st.integers(2, max_prompts))
    kind = draw(st.sampled_from(tuple(kinds)))
    policy = make_policy(kind, v, t, num_prompts=num_prompts)
    params = init_params(policy, jax.random.key(draw(_SEEDS)))
    counts = np.array(
        draw(st.lists(st.integers(1, 9), min_size=num_prompts, max_size=num_prompts)), np.float64
    )
    weights = counts / counts.sum()
    prompt_harms = np.stack(
        [draw(harms(v, t, kinds=("binary", "soft"))) for _ in range(num_prompts)]
    )
    return Instance(
        f"drawn {kind} V{v} T{t} prompts p={'/'.join(f'{w:.3g}' for w in weights)}",
        policy,
        params,
        prompt_harms[0],
        seed=draw(_SEEDS),
        prompts=PromptMixture(weights, prompt_harms),
    )
