"""Autoregressive policies over a vocabulary of size ``V`` with responses of length ``T``.

A policy is a frozen dataclass holding only its sizes (so it is hashable and can be a static
argument of ``jax.jit``); its parameters are a separate pytree made by :meth:`Policy.init` from an
explicit PRNG key. A subclass supplies two methods, as distrax's ``Distribution`` does:

* :meth:`Policy.init` ``(key) -> params``,
* :meth:`Policy.next_logits` ``(params, prefixes[B, l], prompt) -> logits[B, V]``,

and everything else is derived in this base class: the canonical level tables
(:meth:`Policy.level_tables`, the interchange format of THEORY.md), teacher-forced logits,
sequence log-probabilities and sampling. Subclasses override a derived method only to make it
faster (the tabular policy's tables *are* its parameters).

Every policy may be conditioned on a prompt ``x`` from a finite set ``{0, ..., P-1}``
(``num_prompts = P``); parameters then carry a leading prompt axis or a prompt embedding.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from toy_lm.errors import InputError
from toy_lm.precision import default_float
from toy_lm.tables import all_prefixes, level_size

__all__ = ["MarkovPolicy", "Params", "Policy", "PositionalPolicy", "TabularPolicy"]

Params = Any


def _check_sizes(vocab_size: int, length: int, num_prompts: int) -> None:
    for name, value, low in (
        ("vocab_size", vocab_size, 2),
        ("length", length, 1),
        ("num_prompts", num_prompts, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise InputError(f"{name} must be a Python int, got {type(value).__name__}")
        if value < low:
            raise InputError(f"{name}={value} is too small; it must be at least {low}")


@dataclasses.dataclass(frozen=True)
class Policy(abc.ABC):
    """Base class: an autoregressive policy ``π_θ(y) = Π_t π_θ(y_t | y_<t)``.

    Attributes:
      vocab_size: ``V``, a Python int >= 2.
      length: ``T``, the response length, a Python int >= 1.
      num_prompts: ``P``, how many prompts the policy is conditioned on (1: unconditioned).
    """

    vocab_size: int
    length: int
    num_prompts: int = 1

    #: ``True`` when the parameters are a tuple with one leaf per level and leaf ``l`` alone makes
    #: the logits of level ``l`` (:class:`TabularPolicy`): the gradient of whatever is computed
    #: from the logits of position ``l`` is then the ``l``-th leaf of the full gradient, zeros
    #: elsewhere (the training step's gradient map uses this: one pull-back instead of ``T``).
    separable_levels: ClassVar[bool] = False

    def __post_init__(self):
        _check_sizes(self.vocab_size, self.length, self.num_prompts)

    # -- what a subclass supplies -------------------------------------------------------------
    @abc.abstractmethod
    def init(self, key: jax.Array) -> Params:
        """Parameters drawn deterministically from ``key``."""

    @abc.abstractmethod
    def next_logits(self, params: Params, prefixes: jax.Array, prompt=0) -> jax.Array:
        """Logits ``z_θ(y_<t)`` of the next token.

        Args:
          params: the policy's parameters.
          prefixes: int array ``(B, l)`` of prefixes, all of the same level ``l < T``.
          prompt: prompt index (int or int scalar array).

        Returns:
          ``(B, V)`` logits.
        """

    # -- derived ------------------------------------------------------------------------------
    def level_tables(self, params: Params, prompt=0) -> tuple[jax.Array, ...]:
        """Canonical level tables: logits of every prefix, ``(V**l, V)`` for ``l = 0 ... T-1``."""
        return tuple(
            self.next_logits(params, jnp.asarray(all_prefixes(self.vocab_size, level)), prompt)
            for level in range(self.length)
        )

    def teacher_forced_logits(self, params: Params, responses: jax.Array, prompt=0) -> jax.Array:
        """Logits at every position of given responses: ``(B, T) -> (B, T, V)``."""
        responses = _check_responses(responses, self.vocab_size, self.length)
        return jnp.stack(
            [
                self.next_logits(params, responses[:, :level], prompt)
                for level in range(self.length)
            ],
            axis=1,
        )

    def token_log_probs(self, params: Params, responses: jax.Array, prompt=0) -> jax.Array:
        """``log π_θ(y_t | y_<t)`` for every position: ``(B, T) -> (B, T)``."""
        responses = _check_responses(responses, self.vocab_size, self.length)
        logp = jax.nn.log_softmax(self.teacher_forced_logits(params, responses, prompt), axis=-1)
        return jnp.take_along_axis(logp, responses[..., None], axis=-1)[..., 0]

    def log_prob(self, params: Params, responses: jax.Array, prompt=0) -> jax.Array:
        """Sequence log-probability ``log π_θ(y)``: ``(B, T) -> (B,)``."""
        return self.token_log_probs(params, responses, prompt).sum(axis=-1)

    def sample(self, key: jax.Array, params: Params, num_samples: int, prompt=0) -> jax.Array:
        """Draw ``num_samples`` responses ``(num_samples, T)`` (int32) autoregressively."""
        tokens = jnp.zeros((num_samples, 0), jnp.int32)
        for level in range(self.length):
            logits = self.next_logits(params, tokens, prompt)
            nxt = jax.random.categorical(jax.random.fold_in(key, level), logits, axis=-1)
            tokens = jnp.concatenate([tokens, nxt[:, None].astype(jnp.int32)], axis=1)
        return tokens


def _check_responses(responses, vocab_size: int, length: int) -> jax.Array:
    responses = jnp.asarray(responses)
    if responses.ndim != 2 or responses.shape[1] != length:
        raise InputError(f"responses must have shape (B, T={length}), got {responses.shape}")
    return responses.astype(jnp.int32)


def _prefix_rows(prefixes: jax.Array, vocab_size: int) -> jax.Array:
    """Canonical row index of each prefix in ``(B, l)``: base-V value, ``y_1`` most significant."""
    rows = jnp.zeros(prefixes.shape[:1], jnp.int32)
    for j in range(prefixes.shape[1]):
        rows = rows * vocab_size + prefixes[:, j]
    return rows


def _normal(key, shape, scale):
    return scale * jax.random.normal(key, shape, default_float())


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _normal_flat(key, scale, shapes, dtype):
    """A flat ``N(0, scale**2)`` draw of as many values as tables of ``shapes`` hold."""
    size = sum(math.prod(shape) for shape in shapes)
    # The barrier keeps the scaling out of the draw's fused loop: the same values, to the bit, as
    # the eager ``scale * jax.random.normal(...)`` of earlier versions under XLA's default compile
    # options (fused, XLA contracts it into the normal's last multiply-add and the last bit
    # differs; tests/test_policies.py).
    return scale * jax.lax.optimization_barrier(jax.random.normal(key, (size,), dtype))


def _cut(flat, shapes):
    """``flat`` cut into consecutive pieces of ``shapes``, in order."""
    bounds = np.cumsum([0] + [math.prod(shape) for shape in shapes])
    return tuple(flat[a:b].reshape(shape) for a, b, shape in zip(bounds[:-1], bounds[1:], shapes))


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _normal_tables(key, scale, shapes, dtype):
    """One flat ``N(0, scale**2)`` draw cut into tables of ``shapes``, in order, as one compiled
    program (cut eagerly, every slice and reshape compiled a program of its own per level shape:
    about 40 compiles, 2 s, for a first ``analyze --random`` at ``T = 12``)."""
    return _cut(_normal_flat(key, scale, shapes, dtype), shapes)


@dataclasses.dataclass(frozen=True)
class TabularPolicy(Policy):
    """Free logits for every prefix: ``params[l]`` has shape ``(P, V**l, V)``.

    The parameters *are* the canonical tables (one set per prompt), so :meth:`level_tables` is a
    slice and the logit gradient ``G`` of THEORY.md is exactly the parameter gradient.
    """

    separable_levels: ClassVar[bool] = True

    def init(self, key: jax.Array, *, scale: float = 1.0) -> tuple[jax.Array, ...]:
        """Independent ``N(0, scale**2)`` logits for every prefix and prompt.

        One flat draw for all levels, cut into the level tables ``(P, V**l, V)`` in order: one
        compiled random program whatever ``T`` is (a draw per level would compile one per level
        shape).
        """
        return _normal_tables(key, scale, self._table_shapes(), np.dtype(default_float()))

    def init_tables(self, key: jax.Array, *, scale: float = 1.0) -> tuple[np.ndarray, ...]:
        """:meth:`init`'s tables as numpy arrays ``(P, V**l, V)``, to the bit: read-only views of
        one flat draw, which XLA writes once, with no table copied out of it.

        For a large policy read on the host (``harm-horizon analyze --random``). Measured on the
        2-core CPU at ``V = 2, T = 24`` (2**25 logits), first call in a fresh process, compile
        included, three alternated runs: 1.48-1.52 s and 0.90 GB peak resident memory against
        2.42-2.74 s and 1.34 GB for ``init`` and a numpy view of each table (XLA writes the draw,
        then copies every table out of it).
        """
        shapes = self._table_shapes()
        return _cut(np.asarray(_normal_flat(key, scale, shapes, np.dtype(default_float()))), shapes)

    def _table_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(
            (self.num_prompts, level_size(self.vocab_size, level), self.vocab_size)
            for level in range(self.length)
        )

    def from_tables(self, tables, prompt_axis: bool = False) -> tuple[jax.Array, ...]:
        """Parameters holding given level tables (adds the prompt axis unless present)."""
        return tuple(jnp.asarray(t) if prompt_axis else jnp.asarray(t)[None] for t in tables)

    def next_logits(self, params, prefixes, prompt=0):
        level = prefixes.shape[1]
        return params[level][prompt][_prefix_rows(prefixes, self.vocab_size)]

    def level_tables(self, params, prompt=0):
        return tuple(table[prompt] for table in params)


@dataclasses.dataclass(frozen=True)
class PositionalPolicy(Policy):
    """Logits that depend on the position only: ``params`` has shape ``(P, T, V)``."""

    def init(self, key: jax.Array, *, scale: float = 1.0) -> jax.Array:
        return _normal(key, (self.num_prompts, self.length, self.vocab_size), scale)

    def next_logits(self, params, prefixes, prompt=0):
        level = prefixes.shape[1]
        return jnp.broadcast_to(params[prompt, level], (prefixes.shape[0], self.vocab_size))

    def level_tables(self, params, prompt=0):
        return tuple(
            jnp.broadcast_to(
                params[prompt, level], (level_size(self.vocab_size, level), self.vocab_size)
            )
            for level in range(self.length)
        )


@dataclasses.dataclass(frozen=True)
class MarkovPolicy(Policy):
    """Order-``k`` Markov logits: the last ``k`` tokens and the position.

    ``params`` has shape ``(P, T, V**k, V)``: ``params[x, l, c]`` are the logits of ``y_{l+1}``
    after context ``c``, the base-``V`` value of the last ``k`` tokens of the prefix left-padded
    with token 0 (the layout of ``harm-horizon analyze-markov``'s ``markov_logits``). With the
    canonical prefix order this context is simply ``row % V**k``.
    """

    order: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.order, (int, np.integer)) or self.order < 0:
            raise InputError(f"Markov order must be a non-negative int, got {self.order!r}")

    @property
    def num_contexts(self) -> int:
        return level_size(self.vocab_size, self.order)

    def init(self, key: jax.Array, *, scale: float = 1.0) -> jax.Array:
        return _normal(
            key, (self.num_prompts, self.length, self.num_contexts, self.vocab_size), scale
        )

    def next_logits(self, params, prefixes, prompt=0):
        level = prefixes.shape[1]
        context = _prefix_rows(prefixes, self.vocab_size) % self.num_contexts
        return params[prompt, level][context]

    def level_tables(self, params, prompt=0):
        return tuple(
            params[prompt, level][np.arange(level_size(self.vocab_size, level)) % self.num_contexts]
            for level in range(self.length)
        )
