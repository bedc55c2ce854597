"""Neural policies whose weights are shared across positions (Flax NNX).

The modules are ordinary ``nnx.Module`` s; the policies split them into ``(graphdef, state)`` at
construction, as in flax's ``examples/nnx_toy_examples/01_functional_api.py``: the parameters a
user differentiates are the ``nnx.State`` pytree, and :meth:`next_logits` merges it back
into a module inside whatever transformation (``jax.grad``, ``jit``) the caller applies.

Weight sharing is what makes these models interesting for the theory: a gradient step driven by
early positions also moves the conditionals *beyond* the harm horizon (the "spill-over" that
THEORY.md T8 says the toolkit measures rather than assumes away).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from toy_lm.errors import InputError
from toy_lm.models.policies import Policy
from toy_lm.precision import default_float
from toy_lm.tables import all_prefixes

__all__ = [
    "CausalSelfAttention",
    "CausalTransformer",
    "MLPPolicy",
    "PrefixMLP",
    "TransformerPolicy",
]


class CausalTransformer(nnx.Module):
    """A tiny pre-norm causal transformer over ``[prompt token, y_1, ..., y_l]``.

    Token ids ``0 ... V-1`` are the vocabulary; ``V + x`` is the start token of prompt ``x``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_prompts: int,
        length: int,
        *,
        d_model: int,
        num_heads: int,
        num_layers: int,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.embed = nnx.Embed(vocab_size + num_prompts, d_model, param_dtype=dtype, rngs=rngs)
        self.pos = nnx.Embed(length, d_model, param_dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([_Block(d_model, num_heads, dtype, rngs) for _ in range(num_layers)])
        self.norm = nnx.LayerNorm(d_model, param_dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab_size, param_dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """``(B, L)`` token ids -> ``(B, L, V)`` next-token logits at every position."""
        x = self.embed(tokens) + self.pos(jnp.arange(tokens.shape[1]))[None]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention written out with einsums.

    Written here rather than taken from ``nnx.MultiHeadAttention`` because the latter's
    derivatives are not float64-accurate in flax 0.12 (``jax.jacrev`` and ``jax.jacfwd`` of it
    disagree by about 1e-7 in float64, against 1e-14 for this module), which would put a floor
    under the exact gradient checks.
    """

    def __init__(self, d_model: int, num_heads: int, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = nnx.Linear(d_model, 3 * d_model, param_dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, d_model = x.shape
        head = d_model // self.num_heads
        q, k, v = jnp.split(self.qkv(x).reshape(batch, length, 3 * self.num_heads, head), 3, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(head, x.dtype))
        causal = jnp.tril(jnp.ones((length, length), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, d_model))


class _Block(nnx.Module):
    def __init__(self, d_model, num_heads, dtype, rngs):
        self.norm1 = nnx.LayerNorm(d_model, param_dtype=dtype, rngs=rngs)
        self.attn = CausalSelfAttention(d_model, num_heads, dtype, rngs)
        self.norm2 = nnx.LayerNorm(d_model, param_dtype=dtype, rngs=rngs)
        self.up = nnx.Linear(d_model, 4 * d_model, param_dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(4 * d_model, d_model, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class PrefixMLP(nnx.Module):
    """An MLP on (one-hot prefix padded to ``T-1`` slots, one-hot position, one-hot prompt)."""

    def __init__(
        self, vocab_size: int, num_prompts: int, length: int, *, hidden: int, dtype, rngs: nnx.Rngs
    ):
        features = max(length - 1, 0) * vocab_size + length + num_prompts
        self.inp = nnx.Linear(features, hidden, param_dtype=dtype, rngs=rngs)
        self.mid = nnx.Linear(hidden, hidden, param_dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(hidden, vocab_size, param_dtype=dtype, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.mid(jnp.tanh(self.inp(features)))))


def _graphdef(make):
    # Abstract construction: the graph structure without drawing (and compiling) random weights.
    return nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))[0]


@dataclasses.dataclass(frozen=True)
class TransformerPolicy(Policy):
    """A shared-weight causal transformer policy; parameters are an ``nnx.State``."""

    d_model: int = 16
    num_heads: int = 2
    num_layers: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.d_model % self.num_heads:
            raise InputError(
                f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}"
            )

    def _module(self, key):
        return CausalTransformer(
            self.vocab_size,
            self.num_prompts,
            self.length,
            d_model=self.d_model,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            dtype=default_float(),
            rngs=nnx.Rngs(key),
        )

    @functools.cached_property
    def graphdef(self):
        return _graphdef(self._module)

    def init(self, key: jax.Array) -> nnx.State:
        return nnx.split(self._module(key))[1]

    def _inputs(self, prefixes, prompt):
        start = jnp.broadcast_to(
            jnp.asarray(prompt, jnp.int32) + self.vocab_size, (prefixes.shape[0], 1)
        )
        return jnp.concatenate([start, prefixes.astype(jnp.int32)], axis=1)

    def next_logits(self, params, prefixes, prompt=0):
        model = nnx.merge(self.graphdef, params)
        return model(self._inputs(prefixes, prompt))[:, -1]

    def teacher_forced_logits(self, params, responses, prompt=0):
        model = nnx.merge(self.graphdef, params)
        return model(self._inputs(jnp.asarray(responses)[:, :-1], prompt))

    def level_tables(self, params, prompt=0):
        # One causal pass over every length-(T-1) sequence gives the logits of every prefix:
        # the level-l prefix with row i is the first l tokens of sequence i * V**(T-1-l).
        seqs = jnp.asarray(all_prefixes(self.vocab_size, self.length - 1))
        model = nnx.merge(self.graphdef, params)
        out = model(self._inputs(seqs, prompt))
        stride = self.vocab_size ** (self.length - 1)
        tables = []
        for level in range(self.length):
            stride_l = self.vocab_size ** (self.length - 1 - level)
            tables.append(out[::stride_l, level][: stride // stride_l])
        return tuple(tables)


@dataclasses.dataclass(frozen=True)
class MLPPolicy(Policy):
    """A shared-weight MLP policy on a padded one-hot prefix and the position."""

    hidden: int = 32

    def _module(self, key):
        return PrefixMLP(
            self.vocab_size,
            self.num_prompts,
            self.length,
            hidden=self.hidden,
            dtype=default_float(),
            rngs=nnx.Rngs(key),
        )

    @functools.cached_property
    def graphdef(self):
        return _graphdef(self._module)

    def init(self, key: jax.Array) -> nnx.State:
        return nnx.split(self._module(key))[1]

    def _features(self, prefixes, prompt):
        batch, level = prefixes.shape
        dtype = default_float()
        slots = max(self.length - 1, 0)
        onehot = jax.nn.one_hot(prefixes, self.vocab_size, dtype=dtype)  # (B, l, V)
        onehot = jnp.pad(onehot, ((0, 0), (0, slots - level), (0, 0))).reshape(batch, -1)
        pos = jnp.broadcast_to(
            jax.nn.one_hot(level, self.length, dtype=dtype), (batch, self.length)
        )
        prm = jnp.broadcast_to(
            jax.nn.one_hot(prompt, self.num_prompts, dtype=dtype), (batch, self.num_prompts)
        )
        return jnp.concatenate([onehot, pos, prm], axis=1)

    def next_logits(self, params, prefixes, prompt=0):
        model = nnx.merge(self.graphdef, params)
        return model(self._features(prefixes, prompt))
