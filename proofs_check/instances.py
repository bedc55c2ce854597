"""Instances the checks run on, and the built-in suite of ``harm-horizon check``.

An :class:`Instance` is a policy (any parameterization) with its parameters, a harm table, the KL
weight ``λ`` and, for the recovery statements, the automata behind the harm and the dense cost.
Quantities that several checks share are computed once per instance and cached: the policy's
parameter-space quantities (:func:`proofs_check.autodiff.parameter_quantities`) and the direct
enumeration over every response (:mod:`proofs_check.enumeration`).

The built-in suite (:func:`builtin_suite`) covers every parameterization (tabular, positional,
Markov of order 1, a shared-weight transformer, an MLP) on two vocabulary/length/horizon settings, two
seeds (binary harm on even seeds, soft harm on odd ones), plus an automaton harm (harmful before
refusal, with a recovery cost) for T9/T9b; the transformer runs on the larger setting only. It keeps the number of distinct shapes small because
compilation, not computation, is what costs time on a CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from proofs_check import enumeration
from proofs_check.autodiff import level_tables, parameter_quantities, to_numpy
from toy_lm.errors import InputError, PrecisionError
from toy_lm.models.automata import (
    Automaton,
    automaton_harm_table,
    harmful_before_refusal,
    make_automaton,
)
from toy_lm.models.harms import random_decided_harm, soft_harm
from toy_lm.models.policies import Policy
from toy_lm.models.policy_factory import POLICY_KINDS, init_params, make_policy, policy_kind
from toy_lm.precision import check_x64

__all__ = [
    "BUILTIN_AUTOMATON",
    "BUILTIN_ONLY_EXTRA",
    "BUILTIN_SEEDS",
    "BUILTIN_SETTINGS",
    "ENGINE_FREE_CACHE",
    "EXTRA_INSTANCES",
    "HARMFUL_TOKEN",
    "Instance",
    "MAX_RESPONSES",
    "MIXTURE_INSTANCES",
    "NUM_HARMFUL",
    "RARE_LOGIT",
    "REFUSAL_TOKEN",
    "TRANSFORMER_SETTINGS",
    "builtin_suite",
    "make_instance",
    "make_mixture_instance",
    "recovery_cost_automaton",
    "suite_settings",
    "with_engine",
]

#: Largest number of responses ``V**T`` a check instance may have (DPO pairs cost ``V**(2T)``).
MAX_RESPONSES = 1024

#: Built-in (V, T, τ) settings with a decided harm, and the automaton-harm settings (V, T). The
#: transformer, whose programs take several times longer to compile than the others', runs on
#: the larger setting only (held-out runs give it other sizes with --vocab/--length/--horizon).
BUILTIN_SETTINGS = ((2, 3, 1), (3, 4, 2))
BUILTIN_AUTOMATON = ((3, 4),)
TRANSFORMER_SETTINGS = ((3, 4, 2),)

#: Built-in settings per kind where they differ from :data:`BUILTIN_SETTINGS` (the MLP runs on its
#: :data:`EXTRA_INSTANCES` entry only: its programs compile as slowly as the transformer's).
BUILTIN_ONLY_EXTRA = {"transformer": TRANSFORMER_SETTINGS, "mlp": ()}
BUILTIN_SEEDS = 2

#: Further built-in instances, each for a case the settings above miss: (kind, V, T, τ, harm kind,
#: λ, rare). ``mixed``: the harmful-before-refusal verdict of the first τ tokens, so the response
#: horizons τ(y) vary (a refusal decides at once) while τ* < T, over 1024 responses; ``ties``: a
#: soft harm with repeated values; ``rare``: one prefix of probability about 1e-13; λ at 1e-2 and 1e3.
EXTRA_INSTANCES = (
    ("tabular", 4, 5, 3, "mixed", 1.0, False),
    ("tabular", 3, 4, 2, "ties", 1e-2, True),
    ("mlp", 3, 4, 2, "soft", 1e3, False),
    ("transformer", 2, 3, 1, "binary", 1.0, False),
)

#: Built-in prompt mixtures: (kind, V, T, horizon of each prompt's harm, prompt weights p(x)).
#: The MLP shares its weights across prompts (a one-hot prompt input), so the prompts' gradients
#: mix in parameter space; the horizons differ, so the mixture's horizon is their maximum.
MIXTURE_INSTANCES = (("mlp", 3, 4, (1, 3, 2), (0.5, 0.3, 0.2)),)

#: Logit that makes a prefix rare: ``π(0|0) ≈ e^-30 ≈ 1e-13`` at the level-1 prefix ``0``.
RARE_LOGIT = -30.0

#: Token roles of the automaton instances: 0 neutral, 1 harmful, 2 refusal (others neutral), and
#: how many harmful tokens before a refusal make the response harmful.
HARMFUL_TOKEN, REFUSAL_TOKEN, NUM_HARMFUL = 1, 2, 2


def recovery_cost_automaton(
    vocab_size: int, harmful: int = HARMFUL_TOKEN, refusal: int = REFUSAL_TOKEN
) -> Automaton:
    """The dense cost's automaton: "harmful content emitted and not yet recovered".

    States: 0 clean, 1 harmful and not yet recovered (the cost state), 2 recovered (a refusal
    after harmful content), 3 refused before any harmful content. Unlike the harm of
    :func:`toy_lm.models.automata.harmful_before_refusal` (decided for good at the ``K``-th harmful
    token), this cost can still change after that token: a later refusal recovers. So
    the dense cost is undetermined beyond the horizon of ``h`` (T9b): once ``h`` is decided (``K``
    harmful tokens, or a refusal), the cost still depends on when the refusal comes.
    """
    trans = np.zeros((4, vocab_size), np.int64)
    trans[0] = 0
    trans[0, harmful], trans[0, refusal] = 1, 3
    trans[1] = 1
    trans[1, refusal] = 2
    trans[2], trans[3] = 2, 3
    return make_automaton(trans, np.array([0.0, 1.0, 0.0, 0.0]), 0)


@dataclasses.dataclass(frozen=True, eq=False)
class Instance:
    """One problem instance: a policy with parameters, a harm, ``λ`` and optional automata.

    Attributes:
      name: a readable id, e.g. ``"transformer V3 T4 tau2 binary s0"``.
      policy: the parameterization (any :class:`toy_lm.models.policies.Policy`, unconditioned).
      params: its parameters (``policy.init(key)``).
      harm: ``(V**T,)`` float64 harm table.
      lam: the KL weight ``λ`` of ``L_λ`` (T5, T7, T8).
      seed: the seed the instance was drawn from (also keys T10's samples).
      harm_kind: ``"binary"``, ``"soft"`` or ``"automaton"``.
      dfa: the automaton behind the harm, if any.
      cost_dfa: the automaton of the dense recovery cost (T9b), if any.
      engine: the engine whose outputs the engine-reading checks compare (see
        :mod:`proofs_check.engines`); ``"tree"`` by default.
      prompts: a prompt mixture (:class:`proofs_check.prompts.PromptMixture`), or None; then
        ``policy`` is conditioned on ``len(prompts.weights)`` prompts and ``harm`` is prompt 0's.
        Only the mixture checks run on such an instance.
    """

    name: str
    policy: Policy
    params: Any
    harm: np.ndarray
    lam: float = 1.0
    seed: int = 0
    harm_kind: str = "binary"
    dfa: Automaton | None = None
    cost_dfa: Automaton | None = None
    engine: str = "tree"
    prompts: Any = None

    def __post_init__(self):
        harm = np.asarray(self.harm, np.float64)
        n = self.policy.vocab_size**self.policy.length
        if harm.shape != (n,):
            raise InputError(
                f"instance {self.name!r}: harm has shape {harm.shape}, expected ({n},)"
            )
        if n > MAX_RESPONSES:
            raise InputError(
                f"instance {self.name!r} has V**T = {n} responses; the checks enumerate every "
                f"response (and DPO every pair), so keep V**T <= {MAX_RESPONSES}: lower --vocab "
                "or --length"
            )
        object.__setattr__(self, "harm", harm)
        low = {
            str(leaf.dtype)
            for leaf in jax.tree_util.tree_leaves(self.params)
            if np.issubdtype(leaf.dtype, np.floating) and leaf.dtype != np.float64
        }
        if low:
            raise PrecisionError(
                f"instance {self.name!r} has {', '.join(sorted(low))} parameters; the checks are "
                "exact in float64: call toy_lm.require_x64() before creating parameters"
            )

    @property
    def vocab_size(self) -> int:
        return self.policy.vocab_size

    @property
    def length(self) -> int:
        return self.policy.length

    @property
    def num_responses(self) -> int:
        return self.vocab_size**self.length

    @property
    def kind(self) -> str:
        return policy_kind(self.policy)

    @property
    def binary(self) -> bool:
        return bool(np.all((self.harm == 0) | (self.harm == 1)))

    @functools.cached_property
    def quantities(self) -> dict:
        """:func:`~proofs_check.autodiff.parameter_quantities` of this instance, as numpy."""
        return to_numpy(parameter_quantities(self.policy, self.params, self.harm))

    @functools.cached_property
    def tables(self) -> tuple[np.ndarray, ...]:
        """Canonical level tables ``(V**l, V)`` of the policy (logits).

        Read from :attr:`quantities` when those are computed already, else from a small program
        of their own (so that using the tables alone does not compile the whole bundle).
        """
        if "quantities" in self.__dict__:
            return tuple(self.quantities["tables"])
        return tuple(to_numpy(level_tables(self.policy, self.params)))

    @functools.cached_property
    def probs(self) -> np.ndarray:
        """``P(y)`` of every response from the teacher-forced log-probabilities, ``(V**T,)``."""
        return np.exp(self.quantities["token_log_probs"].sum(axis=1))

    @functools.cached_property
    def determined(self) -> list[np.ndarray]:
        """Determined-prefix masks ``det_0 ... det_T`` by direct comparison of harm values."""
        return enumeration.direct_determined(self.harm, self.vocab_size, self.length)

    @property
    def horizon(self) -> int:
        """Global harm horizon ``τ*`` (from :attr:`determined`)."""
        return next(l for l, d in enumerate(self.determined) if d.all())

    @functools.cached_property
    def direct_cond_harm(self) -> list[np.ndarray]:
        """``H_l`` for ``l = 0 ... T`` by direct sums over responses."""
        return enumeration.direct_cond_harm(self.probs, self.harm, self.vocab_size, self.length)


#: Cached values that do not depend on any engine: shared by an instance's copies for other engines.
ENGINE_FREE_CACHE = ("quantities", "tables", "probs", "determined", "direct_cond_harm")


def with_engine(inst: Instance, engine: str) -> Instance:
    """The same instance, read through another engine (``name [engine]``).

    Engine-free cached values (the policy's parameter-space quantities, the tables, the direct
    enumeration) are shared; engine outputs are not.
    """
    name = inst.name if engine == "tree" else f"{inst.name} [{engine}]"
    out = dataclasses.replace(inst, name=name, engine=engine)
    for key in ENGINE_FREE_CACHE:
        if key in inst.__dict__:
            out.__dict__[key] = inst.__dict__[key]
    return out


def make_instance(
    kind: str,
    vocab_size: int,
    length: int,
    *,
    seed: int,
    tau: int | None = None,
    harm_kind: str = "binary",
    lam: float = 1.0,
    rare: bool = False,
) -> Instance:
    """A random instance of a parameterization (needs float64 on: :func:`toy_lm.require_x64`).

    Args:
      kind: one of :data:`POLICY_KINDS`.
      vocab_size, length: ``V`` and ``T``.
      seed: seeds the parameters and the harm.
      tau: horizon of a decided harm (``"binary"``/``"soft"``); ignored for ``"automaton"``.
      harm_kind: ``"binary"`` or ``"soft"`` (harm decided by the first ``tau`` tokens),
        ``"ties"`` (soft, values in ``{0, 1/2, 1}``), ``"automaton"`` (``K = 2`` harmful tokens
        before any refusal, with the recovery cost of :func:`recovery_cost_automaton`; needs
        ``V >= 3``) or ``"mixed"`` (that automaton's verdict on the first ``tau`` tokens: varying
        response horizons, ``τ* <= tau``).
      lam: ``λ``.
      rare: tabular only: make the level-2 prefix ``00`` rare (probability about 1e-13).
    """
    check_x64("make_instance")
    policy = make_policy(kind, vocab_size, length)
    key_policy, key_harm = jax.random.split(jax.random.key(seed))
    params = init_params(policy, key_policy)
    if rare:
        if kind != "tabular" or length < 2:
            raise InputError("a rare prefix is built into tabular instances with T >= 2 only")
        params = tuple(params[:1]) + (params[1].at[0, 0, 0].set(RARE_LOGIT),) + tuple(params[2:])
    dfa = cost_dfa = None
    if harm_kind == "automaton":
        if vocab_size < 3:
            raise InputError(
                f"an automaton (harmful/refusal) instance needs V >= 3, got V={vocab_size}"
            )
        dfa = harmful_before_refusal(vocab_size, NUM_HARMFUL, [HARMFUL_TOKEN], [REFUSAL_TOKEN])
        cost_dfa = recovery_cost_automaton(vocab_size)
        harm = np.asarray(automaton_harm_table(dfa, length))
        label = "automaton"
    elif harm_kind == "mixed":
        if vocab_size < 3 or tau is None or not 1 <= tau <= length:
            raise InputError(
                f"a mixed-horizon instance needs V >= 3 and 1 <= tau <= T, got "
                f"V={vocab_size}, tau={tau}"
            )
        dfa = harmful_before_refusal(vocab_size, NUM_HARMFUL, [HARMFUL_TOKEN], [REFUSAL_TOKEN])
        first = np.asarray(automaton_harm_table(dfa, tau))
        harm = np.repeat(first, vocab_size ** (length - tau))
        dfa = None  # the automaton reads the whole response; this harm reads the first tau tokens
        label = f"tau{tau} mixed"
    else:
        if tau is None or not 0 <= tau <= length:
            raise InputError(f"horizon tau={tau} must satisfy 0 <= tau <= T={length}")
        if harm_kind == "binary":
            harm = np.asarray(random_decided_harm(key_harm, vocab_size, length, tau))
        elif harm_kind == "soft":
            harm = np.asarray(soft_harm(key_harm, vocab_size, length, tau))
        elif harm_kind == "ties":
            harm = np.round(2 * np.asarray(soft_harm(key_harm, vocab_size, length, tau))) / 2
        else:
            raise InputError(
                f"unknown harm kind {harm_kind!r}: binary, soft, ties, automaton or mixed"
            )
        label = f"tau{tau} {harm_kind}"
    name = f"{kind} V{vocab_size} T{length} {label} s{seed}"
    if lam != 1.0 and harm_kind != "automaton":
        name += f" lam{lam:g}"
    if rare:
        name += " rare"
    return Instance(
        name,
        policy,
        params,
        harm,
        lam=lam,
        seed=seed,
        harm_kind=harm_kind,
        dfa=dfa,
        cost_dfa=cost_dfa,
    )


def suite_settings(vocab=None, length=None, horizon=None) -> tuple[list, list]:
    """``(decided (V, T, τ) settings, automaton (V, T) settings)`` for the chosen sizes.

    With no choice, the built-in settings. Otherwise the product of the given values (defaults:
    ``V in {2, 3}``, ``T in {3, 4}``, ``τ = T // 2``), keeping ``τ <= T``; automaton settings
    for every chosen ``V >= 3`` and ``T``.
    """
    if vocab is None and length is None and horizon is None:
        return list(BUILTIN_SETTINGS), list(BUILTIN_AUTOMATON)
    vocabs = list(vocab) if vocab else [2, 3]
    lengths = list(length) if length else [3, 4]
    for v in vocabs:
        if v < 2:
            raise InputError(f"--vocab {v}: the vocabulary needs V >= 2")
    for t in lengths:
        if t < 1:
            raise InputError(f"--length {t}: responses need T >= 1")
    decided = []
    for v, t in itertools.product(vocabs, lengths):
        taus = list(horizon) if horizon else [t // 2]
        for tau in taus:
            if not 0 <= tau <= t:
                raise InputError(f"--horizon {tau} does not fit --length {t}: need 0 <= tau <= T")
            decided.append((v, t, tau))
    automaton = [(v, t) for v, t in itertools.product(vocabs, lengths) if v >= 3 and t >= 2]
    return decided, automaton


def make_mixture_instance(
    kind: str,
    vocab_size: int,
    length: int,
    *,
    seed: int,
    taus: Sequence[int],
    weights: Sequence[float] | np.ndarray,
) -> Instance:
    """A prompt mixture: prompt ``x`` has weight ``weights[x]`` and a binary harm decided by its
    first ``taus[x]`` tokens; the policy is conditioned on the prompt (see :class:`Instance`)."""
    from proofs_check.prompts import PromptMixture

    check_x64("make_mixture_instance")
    weights = np.asarray(weights, np.float64)
    if len(taus) != weights.size or weights.size < 2:
        raise InputError(
            f"a prompt mixture needs one horizon per prompt and at least two prompts, "
            f"got {len(taus)} horizons and {weights.size} weights"
        )
    if np.any(weights <= 0) or abs(weights.sum() - 1.0) > 1e-12:
        raise InputError(f"prompt weights must be positive and sum to 1, got {weights.tolist()}")
    policy = make_policy(kind, vocab_size, length, num_prompts=weights.size)
    key_policy, key_harm = jax.random.split(jax.random.key(seed))
    params = init_params(policy, key_policy)
    harms = np.stack(
        [
            np.asarray(random_decided_harm(k, vocab_size, length, tau))
            for k, tau in zip(jax.random.split(key_harm, weights.size), taus)
        ]
    )
    name = (
        f"{kind} V{vocab_size} T{length} prompts p={'/'.join(f'{w:g}' for w in weights)} "
        f"tau{'/'.join(map(str, taus))} s{seed}"
    )
    return Instance(
        name, policy, params, harms[0], seed=seed, prompts=PromptMixture(weights, harms)
    )


def builtin_suite(
    kinds=POLICY_KINDS,
    *,
    vocab=None,
    length=None,
    horizon=None,
    seeds: int = BUILTIN_SEEDS,
    first_seed: int = 0,
) -> list[Instance]:
    """The instances ``harm-horizon check`` runs (see the module docstring).

    Args:
      kinds: parameterizations to include.
      vocab, length, horizon: optional lists of ``V``, ``T``, ``τ`` (see :func:`suite_settings`).
      seeds: seeds per setting; seed ``s`` gets a binary harm when even, soft when odd.
      first_seed: the first seed (held-out runs pick other seeds).
    """
    if seeds < 1:
        raise InputError(f"--seeds {seeds}: need at least one seed")
    decided, automaton = suite_settings(vocab, length, horizon)
    builtin = vocab is None and length is None and horizon is None
    for v, t, *_ in decided + automaton:
        if v**t > MAX_RESPONSES:
            raise InputError(
                f"V={v}, T={t} gives V**T = {v**t} responses, more than the "
                f"checks enumerate ({MAX_RESPONSES}); lower --vocab or --length"
            )
    out = []
    for kind in kinds:
        settings = decided
        if builtin and kind in BUILTIN_ONLY_EXTRA:
            settings = BUILTIN_ONLY_EXTRA[kind]
        for (v, t, tau), s in itertools.product(settings, range(first_seed, first_seed + seeds)):
            out.append(
                make_instance(
                    kind, v, t, seed=s, tau=tau, harm_kind="binary" if s % 2 == 0 else "soft"
                )
            )
        for v, t in automaton if not (builtin and kind == "mlp") else ():
            out.append(make_instance(kind, v, t, seed=first_seed, harm_kind="automaton", lam=0.5))
    if builtin:
        out += [
            make_instance(
                kind, v, t, seed=first_seed, tau=tau, harm_kind=harm_kind, lam=lam, rare=rare
            )
            for kind, v, t, tau, harm_kind, lam, rare in EXTRA_INSTANCES
            if kind in kinds
        ]
        out += [
            make_mixture_instance(kind, v, t, seed=first_seed, taus=taus, weights=weights)
            for kind, v, t, taus, weights in MIXTURE_INSTANCES
            if kind in kinds
        ]
    elif decided and kinds:
        # chosen sizes: one two-prompt mixture at the first chosen (V, T, τ), the second prompt's
        # harm with another horizon, on the MLP (shared weights) when chosen
        v, t, tau = decided[0]
        taus = (tau, t) if tau < t else (tau, t - 1)
        kind = "mlp" if "mlp" in kinds else kinds[0]
        out.append(
            make_mixture_instance(kind, v, t, seed=first_seed, taus=taus, weights=(0.6, 0.4))
        )
    return out
