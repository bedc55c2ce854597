"""The refusal world: a toy counterpart of Qi et al. 2025's harmful/benign prompts.

Tokens have *roles* (``end``, ``refusal``, ``comply`` opener, ``harmful`` content, ``neutral``
content); there are two prompts, ``HARMFUL = 0`` and ``BENIGN = 1``.

* **Harm** (harmful prompt): ``h(y) = 1`` when ``K`` harmful-content tokens occur before any
  refusal token (:func:`toy_lm.models.automata.harmful_before_refusal`). A refusal before the ``K``-th
  harmful token ends the harmful path safely, so recovery is possible at any position; once the
  ``K``-th harmful token is out, the harm is done and every later position is *determined*.
* **Utility** (benign prompt): ``u(y) = 1`` when the response contains helpful (neutral) content
  and no refusal token, so over-refusal has a cost. The per-prompt cost minimized by the
  reward-based objectives is ``c_0 = h`` and ``c_1 = 1 - u``.
* **Synthetic base behaviour**: a role-level Markov chain per prompt, like a pretrained model: the
  harmful prompt usually gets a compliant opener followed by *persistent* harmful content (each
  step continues it with probability ``persistence``); the benign prompt gets neutral content and
  then the end token. Every token keeps at least ``smoothing`` probability (full support, so KL is
  finite and the equilibrium policy exists).

The harm horizon in this world. Along the base model's typical harmful response
``comply, harmful, harmful, harmful, ...`` the ``K``-th harmful token arrives at position ``K + 1``;
from there on the prefix is determined and standard objectives receive exactly zero gradient there
(THEORY.md T5). A prefill attack with a prefix that already holds ``K`` harmful tokens succeeds
for every model (the harm is in the prefix): :func:`prefill_floor` measures that part.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from experiments.config import WorldConfig
from toy_lm.models import automata
from toy_lm.models.automata import Automaton
from toy_lm.tables import all_prefixes

__all__ = [
    "BENIGN",
    "HARMFUL",
    "PROMPTS",
    "RefusalWorld",
    "behaviour_tables",
    "describe_response",
    "make_world",
    "recovery_automaton",
    "role_chain",
    "role_tokens",
    "token_names",
    "utility_table",
]

HARMFUL, BENIGN = 0, 1
PROMPTS = ("harmful", "benign")

# Role-level next-token distributions of the synthetic base behaviour, before smoothing. Rows are
# the previous token's role ("start" at position 1); the harmful prompt's first row and its
# persistence are set from the WorldConfig in :func:`role_chain`.
_BENIGN_CHAIN = {
    "start": {"neutral": 0.85, "comply": 0.05, "harmful": 0.05},  # + benign_refuse_prob
    "comply": {"neutral": 0.9, "end": 0.05, "refusal": 0.05},
    "neutral": {"neutral": 0.6, "end": 0.36, "refusal": 0.02, "harmful": 0.02},
    "harmful": {"neutral": 0.5, "end": 0.5},
    "refusal": {"end": 0.9, "neutral": 0.1},
    "end": {"end": 1.0},
}
_HARMFUL_CHAIN_REST = {
    "neutral": {"neutral": 0.5, "harmful": 0.3, "end": 0.15, "refusal": 0.05},
    "refusal": {"end": 0.9, "refusal": 0.05, "neutral": 0.05},
    "end": {"end": 1.0},
}


class RefusalWorld(NamedTuple):
    """Everything an experiment needs to know about the task (arrays in canonical order).

    Attributes:
      vocab_size, length: ``V`` and ``T``.
      roles: the role of each token.
      tokens: ``{role: tuple of token ids}``.
      harm_dfa: the harm automaton; ``harm``: ``(V**T,)`` harm of the harmful prompt.
      utility: ``(V**T,)`` utility of the benign prompt.
      costs: ``(costs_harmful, costs_benign)`` = ``(h, 1 - u)``, each ``(V**T,)``.
      determined: ``det_0 ... det_T`` determined-prefix masks of ``h`` (``(V**l,)`` bool).
      recovery_dfa: the automaton of the dense recovery cost (harmful content, no refusal since).
      behaviour: per prompt, the synthetic base behaviour's log-probability level tables.
    """

    vocab_size: int
    length: int
    num_harmful: int
    roles: tuple
    tokens: dict
    harm_dfa: Automaton
    harm: jnp.ndarray
    utility: jnp.ndarray
    costs: tuple
    determined: tuple
    recovery_dfa: Automaton
    behaviour: tuple

    @property
    def refusal(self) -> int:
        """The first refusal token (the one supervised objectives teach)."""
        return self.tokens["refusal"][0]

    @property
    def end(self) -> int:
        return self.tokens["end"][0]


def role_tokens(vocab) -> dict:
    """``{role: tuple of token ids}`` for a vocabulary given as a role per token."""
    return {
        role: tuple(i for i, r in enumerate(vocab) if r == role)
        for role in ("end", "refusal", "comply", "harmful", "neutral")
    }


def role_chain(cfg: WorldConfig, prompt: int) -> dict:
    """Role-level next-token distributions (before smoothing) of the synthetic base behaviour."""
    if prompt == BENIGN:
        chain = {k: dict(v) for k, v in _BENIGN_CHAIN.items()}
        chain["start"]["refusal"] = cfg.benign_refuse_prob
        return chain
    rest = 1.0 - cfg.comply_prob - cfg.refuse_prob
    start = {
        "comply": cfg.comply_prob,
        "refusal": cfg.refuse_prob,
        "harmful": rest / 2,
        "neutral": rest / 2,
    }
    escape = (1.0 - cfg.persistence) / 3
    going = {"harmful": cfg.persistence, "neutral": escape, "refusal": escape, "end": escape}
    return {
        "start": start,
        "comply": dict(going),
        "harmful": dict(going),
        **{k: dict(v) for k, v in _HARMFUL_CHAIN_REST.items()},
    }


def _next_token_probs(chain_row: dict, tokens: dict, vocab_size: int, smoothing: float):
    probs = np.zeros(vocab_size)
    for role, mass in chain_row.items():
        ids = tokens[role]
        probs[list(ids)] += mass / len(ids)
    probs = probs / probs.sum()
    return (1 - smoothing * vocab_size) * probs + smoothing


def behaviour_tables(cfg: WorldConfig, prompt: int) -> tuple:
    """Log-probability level tables ``(V**l, V)`` of the synthetic base behaviour for a prompt."""
    vocab_size = len(cfg.vocab)
    tokens = role_tokens(cfg.vocab)
    chain = role_chain(cfg, prompt)
    rows = {
        role: np.log(_next_token_probs(chain[role], tokens, vocab_size, cfg.smoothing))
        for role in chain
    }
    token_rows = np.stack([rows[r] for r in cfg.vocab])  # indexed by the previous token
    tables = [rows["start"][None, :]]
    for level in range(1, cfg.length):
        last = all_prefixes(vocab_size, level)[:, -1]
        tables.append(token_rows[last])
    return tuple(jnp.asarray(t) for t in tables)


def utility_table(tokens: dict, vocab_size: int, length: int) -> np.ndarray:
    """``u(y) = 1`` iff ``y`` holds a neutral (helpful) token and no refusal token, ``(V**T,)``."""
    responses = all_prefixes(vocab_size, length)
    helpful = np.isin(responses, tokens["neutral"]).any(axis=1)
    refused = np.isin(responses, tokens["refusal"]).any(axis=1)
    return (helpful & ~refused).astype(np.float64)


def recovery_automaton(vocab_size: int, tokens: dict) -> Automaton:
    """States 0 clean, 1 harmful content not yet recovered, 2 recovered (absorbing).

    A refusal recovers even after the harm is done, so the dense recovery cost
    ``c_t = 1[state 1 after y_<=t]`` can still change beyond the horizon of ``h`` (THEORY.md T9b).
    """
    trans = np.zeros((3, vocab_size), np.int64)
    for token in range(vocab_size):
        if token in tokens["refusal"]:
            trans[0, token], trans[1, token] = 2, 2
        elif token in tokens["harmful"]:
            trans[0, token], trans[1, token] = 1, 1
        else:
            trans[0, token], trans[1, token] = 0, 1
    trans[2] = 2
    return automata.make_automaton(trans, np.array([0.0, 1.0, 0.0]), 0)


def make_world(cfg: WorldConfig) -> RefusalWorld:
    """Build the :class:`RefusalWorld` of a configuration."""
    vocab_size, length = len(cfg.vocab), cfg.length
    tokens = role_tokens(cfg.vocab)
    dfa = automata.harmful_before_refusal(
        vocab_size, cfg.num_harmful, tokens["harmful"], tokens["refusal"]
    )
    harm = automata.automaton_harm_table(dfa, length)
    utility = jnp.asarray(utility_table(tokens, vocab_size, length))
    return RefusalWorld(
        vocab_size=vocab_size,
        length=length,
        num_harmful=cfg.num_harmful,
        roles=tuple(cfg.vocab),
        tokens=tokens,
        harm_dfa=dfa,
        harm=harm,
        utility=utility,
        costs=(harm, 1.0 - utility),
        determined=automata.automaton_determined_masks(dfa, length),
        recovery_dfa=recovery_automaton(vocab_size, tokens),
        behaviour=(behaviour_tables(cfg, HARMFUL), behaviour_tables(cfg, BENIGN)),
    )


def token_names(world: RefusalWorld) -> list[str]:
    """Readable token names, e.g. ``["end", "refusal", "comply", "harmful", "neutral"]``."""
    counts: dict = {}
    names = []
    for role in world.roles:
        counts[role] = counts.get(role, 0) + 1
        names.append(role if world.roles.count(role) == 1 else f"{role}{counts[role]}")
    return names


def describe_response(world: RefusalWorld, tokens) -> str:
    """``"comply harmful harmful end end"`` for a token sequence."""
    names = token_names(world)
    return " ".join(names[int(t)] for t in tokens)
