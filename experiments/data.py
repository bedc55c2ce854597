"""Supervised data as per-level token weights, exact or sampled.

Every supervised objective here (base SFT, SFT on refusals, safety-recovery augmentation, the
harmful fine-tuning attack, Qi et al.'s constrained objective) is a weighted token-level loss
``Σ_l Σ_{u,v} W_l[u, v] ℓ(π(v | u))`` over prefixes ``u`` of level ``l`` and next tokens ``v``.
The *level weights* ``W_l`` of shape ``(V**l, V)`` (canonical order, ``l = 0 ... T-1``) say how
much supervision the token ``v`` after the prefix ``u`` receives.

A dataset is a :class:`Examples` triple - sequences ``(N, T)``, the level from which the loss
applies (earlier tokens are context only), and a weight per example - turned into level weights
by :func:`level_weights`. The *exact* data distribution enumerates every example with its
probability; a *finite* dataset draws ``N`` examples from it once (:func:`sample_examples`), so
both go through the same loss.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from experiments.world import RefusalWorld
from toy_lm.tables import all_prefixes, level_size

__all__ = [
    "Examples",
    "augmentation_examples",
    "harmful_prefix_dists",
    "harmful_response_probs",
    "helpful_response_probs",
    "level_weights",
    "mixture",
    "policy_weights",
    "refusal_examples",
    "refusal_response",
    "response_examples",
    "response_probs",
    "sample_examples",
    "zeros_like_weights",
]


class Examples(NamedTuple):
    """``sequences (N, T)`` int, ``loss_from (N,)`` int (first supervised level), ``weights (N,)``."""

    sequences: np.ndarray
    loss_from: np.ndarray
    weights: np.ndarray


def level_weights(examples: Examples, vocab_size: int, length: int) -> tuple[np.ndarray, ...]:
    """Scatter-add examples into level weights ``W_l`` ``(V**l, V)``, ``l = 0 ... T-1``."""
    seqs = np.asarray(examples.sequences, np.int64)
    out = []
    row = np.zeros(len(seqs), np.int64)
    for level in range(length):
        table = np.zeros((level_size(vocab_size, level), vocab_size))
        live = examples.loss_from <= level
        np.add.at(table, (row[live], seqs[live, level]), examples.weights[live])
        out.append(table)
        row = row * vocab_size + seqs[:, level]
    return tuple(out)


def response_examples(probs: np.ndarray, vocab_size: int, length: int) -> Examples:
    """Every response with its probability ``probs`` ``(V**T,)`` (loss on every token)."""
    probs = np.asarray(probs, np.float64)
    return Examples(all_prefixes(vocab_size, length), np.zeros(len(probs), np.int64), probs)


def _conditionals(log_tables) -> list[np.ndarray]:
    """``π(v | u)`` per level in numpy (data preparation needs no compiled program)."""
    out = []
    for z in log_tables:
        z = np.asarray(z, np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out.append(e / e.sum(axis=1, keepdims=True))
    return out


def policy_weights(log_tables) -> tuple[np.ndarray, ...]:
    """Exact level weights of a policy's own responses: ``W_l[u, v] = P(u) π(v | u)``.

    (Cheaper than enumerating responses; equals ``level_weights(response_examples(P))``.)
    """
    prefix = np.ones(1)
    out = []
    for pi in _conditionals(log_tables):
        out.append(prefix[:, None] * pi)
        prefix = out[-1].reshape(-1)
    return tuple(out)


def response_probs(log_tables) -> np.ndarray:
    """``P(y)`` for every response ``(V**T,)``."""
    return policy_weights(log_tables)[-1].reshape(-1)


def harmful_response_probs(base_tables, world: RefusalWorld) -> np.ndarray:
    """``P_{π0}(y | h = 1)`` on the harmful prompt, ``(V**T,)``: the base model's harmful answers."""
    joint = response_probs(base_tables) * np.asarray(world.harm)
    return joint / joint.sum()


def helpful_response_probs(base_tables, world: RefusalWorld) -> np.ndarray:
    """``P_{π0}(y | u = 1)`` on the benign prompt: the base model's helpful answers."""
    joint = response_probs(base_tables) * np.asarray(world.utility)
    return joint / joint.sum()


def refusal_response(world: RefusalWorld, prefix) -> np.ndarray:
    """``prefix`` followed by a refusal and end tokens up to length ``T``."""
    prefix = list(prefix)
    tail = [world.refusal] + [world.end] * (world.length - len(prefix) - 1)
    return np.asarray(prefix + tail, np.int64)


def augmentation_examples(base_tables, world: RefusalWorld) -> Examples:
    """Qi et al.'s safety-recovery examples, exactly: harmful prefix of ``k`` tokens, then refusal.

    ``k = 0`` with probability 1/2, otherwise uniform over ``1 ... T-1``; the prefix is the first
    ``k`` tokens of a base harmful response (``q_k``, :func:`harmful_prefix_dists`),
    and the loss applies to the refusal response only (from level ``k``).
    """
    vocab_size, length = world.vocab_size, world.length
    seqs, starts, weights = [refusal_response(world, [])[None]], [0], [0.5]
    dists = harmful_prefix_dists(base_tables, world.harm)
    for k in range(1, length):
        q = np.asarray(dists[k])
        prefixes = all_prefixes(vocab_size, k)
        tail = np.broadcast_to(refusal_response(world, [0] * k)[k:], (len(q), length - k))
        seqs.append(np.concatenate([prefixes, tail], axis=1))
        starts.extend([k] * len(q))
        weights.extend(0.5 / (length - 1) * q)
    return Examples(np.concatenate(seqs), np.asarray(starts), np.asarray(weights))


def harmful_prefix_dists(base_tables, harm) -> list[np.ndarray]:
    """``q_0 ... q_{T-1}``, ``q_l = P_{π0}(y_<=l | h = 1)`` ``(V**l,)``: base harmful prefixes.

    The marginals of ``P_{π0}(y | h = 1)`` (numpy; the same quantity as
    :func:`toy_lm.engines.tree.harmful_prefix_dist`, which the tests compare it with).
    """
    joint = response_probs(base_tables) * np.asarray(harm, np.float64)
    joint = joint / joint.sum()
    vocab_size, length = np.shape(base_tables[0])[1], len(base_tables)
    return [joint.reshape(level_size(vocab_size, level), -1).sum(axis=1) for level in range(length)]


def refusal_examples(world: RefusalWorld) -> Examples:
    """One example: the refusal response to the harmful prompt (SFT on refusals)."""
    return Examples(refusal_response(world, [])[None], np.zeros(1, np.int64), np.ones(1))


def sample_examples(key: jax.Array, examples: Examples, num: int) -> Examples:
    """A finite dataset: ``num`` examples drawn with probability ``weights``, each weight ``1/num``.

    ``num = 0`` returns ``examples`` unchanged (the exact data distribution).
    """
    if num == 0:
        return examples
    probs = np.asarray(examples.weights, np.float64)
    probs = probs / probs.sum()
    index = np.asarray(jax.random.choice(key, len(probs), (num,), p=probs))
    return Examples(examples.sequences[index], examples.loss_from[index], np.full(num, 1.0 / num))


def mixture(*weighted: tuple[float, tuple]) -> tuple[np.ndarray, ...]:
    """``Σ_i c_i W^(i)`` for pairs ``(c_i, level weights W^(i))`` of the same shapes."""
    first = weighted[0][1]
    return tuple(sum(c * w[level] for c, w in weighted) for level in range(len(first)))


def zeros_like_weights(vocab_size: int, length: int) -> tuple[np.ndarray, ...]:
    """All-zero level weights (a prompt that receives no supervision)."""
    return tuple(np.zeros((level_size(vocab_size, level), vocab_size)) for level in range(length))
