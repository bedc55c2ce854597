"""The one policy factory: every parameterization by one name, and its initial parameters.

Every layer names policies the same way (:data:`POLICY_KINDS`): ``harm-horizon check --policy``,
the check instances (:mod:`proofs_check.instances`), the experiments' ``policy.kind`` (a subset:
:data:`experiments.config.POLICY_KINDS`) and the tests all build their policies here. The neural
kinds default to the tiny sizes of the exact checks (d_model 8, one head, one layer; 8 hidden
units); a caller passes other sizes as options.

Example:

>>> import jax
>>> from toy_lm.models.policy_factory import init_params, make_policy, policy_kind
>>> policy = make_policy("markov", 3, 4, order=2)
>>> policy_kind(policy), policy.vocab_size, policy.length, policy.order
('markov', 3, 4, 2)
>>> params = init_params(policy, jax.random.key(0), scale=0.1)
>>> params.shape, str(params.dtype)   # (P, T, V**k, V)
((1, 4, 9, 3), 'float64')
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax

from toy_lm.errors import InputError
from toy_lm.models.neural import MLPPolicy, TransformerPolicy
from toy_lm.models.policies import MarkovPolicy, Params, Policy, PositionalPolicy, TabularPolicy

__all__ = [
    "POLICY_CLASSES",
    "POLICY_KINDS",
    "POLICY_OPTIONS",
    "init_params",
    "make_policy",
    "policy_kind",
]

#: The class of each parameterization, by the name every layer uses.
POLICY_CLASSES: Mapping[str, type[Policy]] = {
    "tabular": TabularPolicy,
    "positional": PositionalPolicy,
    "markov": MarkovPolicy,
    "transformer": TransformerPolicy,
    "mlp": MLPPolicy,
}

#: Parameterizations, by name (the names of ``harm-horizon check --policy``).
POLICY_KINDS = tuple(POLICY_CLASSES)

#: The options each kind takes, with their defaults (the sizes of the exact checks).
POLICY_OPTIONS: Mapping[str, Mapping[str, int]] = {
    "tabular": {},
    "positional": {},
    "markov": {"order": 1},
    "transformer": {"d_model": 8, "num_heads": 1, "num_layers": 1},
    "mlp": {"hidden": 8},
}

#: Kinds whose parameters are logit tables drawn i.i.d. ``N(0, scale**2)`` by ``init``.
_TABLE_KINDS = (TabularPolicy, PositionalPolicy, MarkovPolicy)


def make_policy(
    kind: str, vocab_size: int, length: int, *, num_prompts: int = 1, **options: int
) -> Policy:
    """The policy of a parameterization at a size.

    Args:
      kind: one of :data:`POLICY_KINDS`.
      vocab_size: ``V``, a Python int >= 2.
      length: ``T``, a Python int >= 1.
      num_prompts: ``P``, the number of prompts the policy is conditioned on.
      **options: the kind's own sizes (:data:`POLICY_OPTIONS`): ``order`` (markov),
        ``d_model``, ``num_heads``, ``num_layers`` (transformer), ``hidden`` (mlp).

    Returns:
      A hashable :class:`toy_lm.models.policies.Policy` (usable as a static argument of ``jax.jit``).

    Raises:
      InputError: an unknown kind, or an option the kind does not take.

    >>> make_policy("transformer", 2, 3, d_model=4, num_heads=2).num_heads
    2
    >>> make_policy("tabular", 2, 3, order=2)
    Traceback (most recent call last):
    ...
    toy_lm.errors.InputError: policy kind 'tabular' takes no option order (it takes none)
    """
    if kind not in POLICY_CLASSES:
        raise InputError(f"unknown policy kind {kind!r}; choose from {', '.join(POLICY_KINDS)}")
    allowed = POLICY_OPTIONS[kind]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(
            f"policy kind {kind!r} takes no option {', '.join(unknown)} "
            f"(it takes {', '.join(allowed) or 'none'})"
        )
    return POLICY_CLASSES[kind](vocab_size, length, num_prompts, **{**allowed, **options})


def policy_kind(policy: Policy) -> str:
    """The name of a policy's parameterization (``type(policy).__name__`` for other classes)."""
    for kind, cls in POLICY_CLASSES.items():
        if type(policy) is cls:
            return kind
    return type(policy).__name__


@functools.partial(jax.jit, static_argnames=("policy",))
def init_params(policy: Policy, key: jax.Array, *, scale=1.0) -> Params:
    """Initial parameters of ``policy`` from ``key``, as one compiled program.

    The table-like kinds (tabular, positional, markov) draw their logits i.i.d.
    ``N(0, scale**2)``; the neural kinds use their layers' own initializers and ignore ``scale``.
    ``scale`` may be an array, so that ``jax.vmap`` can map it with ``key``.

    Args:
      policy: the parameterization (static).
      key: a PRNG key.
      scale: standard deviation of the table-like kinds' logits (float or scalar array).

    Returns:
      The parameter pytree of ``policy.init``.
    """
    if isinstance(policy, _TABLE_KINDS):
        return policy.init(key, scale=scale)
    return policy.init(key)
