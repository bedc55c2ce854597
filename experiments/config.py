"""Typed, frozen, validated configurations of one experiment run.

A run is described by a :class:`RunConfig` made of five sections (``world``, ``policy``,
``base``, ``align``, ``attack``) plus ``measure``, ``seed`` and ``name``. Every field has a
default, so a configuration file only states what differs. Invalid values raise
:class:`~toy_lm.errors.ConfigError` with a one-line message naming the field, the value and the
fix (the CLI prints it and exits with status 2).

Built-in presets and configuration files are read by :mod:`experiments.presets`.

Dotted overrides (``{"align.objective": "dpo", "seed": 3}``) are what sweeps use; see
:func:`with_overrides`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from typing import Any

from toy_lm.bounds import MAX_SEED, check_lam
from toy_lm.errors import ConfigError

__all__ = [
    "ATTACK_OBJECTIVES",
    "AlignConfig",
    "AttackConfig",
    "BASELINES",
    "BaseConfig",
    "MAX_BATCH",
    "MAX_EXAMPLES",
    "MAX_LAYERS",
    "MAX_LENGTH",
    "MAX_PATHS",
    "MAX_STEPS",
    "MAX_WIDTH",
    "MeasureConfig",
    "OBJECTIVES",
    "OPTIMIZERS",
    "POLICY_KINDS",
    "PolicyConfig",
    "ROLES",
    "RunConfig",
    "SAMPLED_OBJECTIVES",
    "SECTIONS",
    "WorldConfig",
    "check_run_memory",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "estimate_run_bytes",
    "flat_config",
    "validate",
    "with_overrides",
]

#: The roles a token can play in the refusal world (see :mod:`experiments.world`).
ROLES = ("end", "refusal", "comply", "harmful", "neutral")

#: Alignment objectives: ``none`` leaves the base model untouched (the headline's base row).
OBJECTIVES = (
    "none",
    "rlhf",
    "reinforce",
    "dpo",
    "dpo_sampled",
    "sft_refusal",
    "augmentation",
    "recovery_prefill",
    "recovery_dense",
)
#: Objectives that sample responses from the current policy at every step.
SAMPLED_OBJECTIVES = ("reinforce", "dpo_sampled")
BASELINES = ("none", "value", "mean")
#: The kinds of :data:`toy_lm.models.policy_factory.POLICY_KINDS` an experiment can configure.
POLICY_KINDS = ("tabular", "markov", "transformer")
OPTIMIZERS = ("sgd", "adam")
ATTACK_OBJECTIVES = ("sft", "constrained", "both")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """The refusal world (tokens, length, harm) and its synthetic base behaviour.

    Attributes:
      vocab: the role of every token, ``V = len(vocab)``; each role of :data:`ROLES` at least once.
      length: ``T``, the response length.
      num_harmful: ``K``; harm = ``K`` harmful-content tokens before any refusal token.
      comply_prob: base ``P(y_1 = comply opener | harmful prompt)``.
      refuse_prob: base ``P(y_1 = refusal | harmful prompt)``.
      persistence: base probability that harmful content follows an opener or harmful content
        (how decided the harm is once the base model has started complying).
      benign_refuse_prob: base ``P(y_1 = refusal | benign prompt)``.
      smoothing: probability mass floor of every token in every context (full support).
    """

    vocab: tuple[str, ...] = ROLES
    length: int = 5
    num_harmful: int = 3
    comply_prob: float = 0.7
    refuse_prob: float = 0.1
    persistence: float = 0.98
    benign_refuse_prob: float = 0.05
    smoothing: float = 0.005


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Which policy parameterization is trained (``tabular``, ``markov`` or ``transformer``)."""

    kind: str = "tabular"
    markov_order: int = 1
    d_model: int = 16
    num_heads: int = 2
    num_layers: int = 1
    init_scale: float = 0.1


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Supervised fine-tuning of the base model on the synthetic base behaviour.

    ``num_examples = 0`` minimizes the exact population cross-entropy; ``N > 0`` a dataset of
    ``N`` responses per prompt sampled once from the synthetic behaviour.
    """

    steps: int = 400
    learning_rate: float = 0.1
    optimizer: str = "adam"
    num_examples: int = 0


@dataclasses.dataclass(frozen=True)
class AlignConfig:
    """The alignment objective and its optimizer.

    Attributes:
      objective: one of :data:`OBJECTIVES`.
      lam: ``λ``, the KL weight (rlhf, reinforce, recovery_*).
      beta: DPO ``β``.
      mu: recovery weight ``μ_k`` (prefill form, every ``k``) or ``μ_t`` (dense form).
      baseline: REINFORCE baseline, one of :data:`BASELINES` (``value`` is ``H_{t-1}``).
      steps, learning_rate, optimizer: the optax loop.
      batch_size: responses sampled per step (sampled objectives).
      utility_weight: weight of the benign prompt (utility examples) in every objective.
      num_examples: supervised objectives: 0 = exact data distribution, ``N`` = a sampled dataset.
      grad_map_every: record per-position gradient norms every this many steps.
    """

    objective: str = "rlhf"
    lam: float = 0.3
    beta: float = 0.1
    mu: float = 1.0
    baseline: str = "none"
    steps: int = 300
    learning_rate: float = 1.0
    optimizer: str = "sgd"
    batch_size: int = 64
    utility_weight: float = 0.5
    num_examples: int = 0
    grad_map_every: int = 1


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Fine-tuning attack: ``steps`` of SFT on harmful completions of the harmful prompt.

    ``objective = "constrained"`` uses Qi et al.'s token-wise constrained loss with
    ``β_1 = beta_first``, ``β_t = beta_early`` for ``2 <= t <= early_until``, ``beta_late`` after;
    ``"both"`` runs the plain and the constrained attack from the same aligned model.
    """

    steps: int = 20
    learning_rate: float = 1.0
    optimizer: str = "sgd"
    num_examples: int = 16
    objective: str = "both"
    beta_first: float = 0.5
    beta_early: float = 2.0
    early_until: int = 5
    beta_late: float = 0.1


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """What is measured besides the always-on exact quantities."""

    num_paths: int = 24
    equilibrium_lams: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One experiment run."""

    name: str = "run"
    seed: int = 0
    world: WorldConfig = WorldConfig()
    policy: PolicyConfig = PolicyConfig()
    base: BaseConfig = BaseConfig()
    align: AlignConfig = AlignConfig()
    attack: AttackConfig = AttackConfig()
    measure: MeasureConfig = MeasureConfig()

    def __post_init__(self):
        validate(self)


SECTIONS = {
    "world": WorldConfig,
    "policy": PolicyConfig,
    "base": BaseConfig,
    "align": AlignConfig,
    "attack": AttackConfig,
    "measure": MeasureConfig,
}


# -- validation -------------------------------------------------------------------------------
def _need(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _positive_int(name, value, low=1, high=None):
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    shown = (
        f"~10^{len(str(abs(value))) - 1}"
        if ok is False and isinstance(value, int) and abs(value) >= 10**15
        else repr(value)
    )
    _need(
        ok,
        f"{name}={shown} must be an integer >= {low}" + ("" if high is None else f" and <= {high}"),
    )


#: Upper bounds of the size settings (far above any sensible run; memory is checked separately
#: by :func:`check_run_memory` before anything is allocated).
MAX_LENGTH = 64
MAX_STEPS = 10**7
MAX_EXAMPLES = 10**7
MAX_BATCH = 10**6
MAX_PATHS = 10**6
MAX_WIDTH = 4096
MAX_LAYERS = 64


def _probability(name, value, *, open_low=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (0 < value if open_low else 0 <= value) and value <= 1
    _need(ok, f"{name}={value!r} must be a number in {'(0' if open_low else '[0'}, 1]")


def _positive(name, value, *, allow_zero=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _need(
        ok and (value >= 0 if allow_zero else value > 0),
        f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number",
    )


def _choice(name, value, choices):
    _need(value in choices, f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def validate(cfg: RunConfig) -> None:
    """Check every field of a :class:`RunConfig`; raises :class:`ConfigError` on the first problem."""
    w, p, b, a, k, m = cfg.world, cfg.policy, cfg.base, cfg.align, cfg.attack, cfg.measure
    _need(isinstance(cfg.name, str) and cfg.name != "", "name must be a non-empty string")
    _positive_int("seed", cfg.seed, 0, MAX_SEED)
    _need(
        isinstance(w.vocab, tuple) and all(r in ROLES for r in w.vocab),
        f"world.vocab={list(w.vocab)!r} may only contain the roles {', '.join(ROLES)}",
    )
    missing = [r for r in ROLES if r not in w.vocab]
    _need(
        not missing, f"world.vocab lacks the role(s) {', '.join(missing)}; every role needs a token"
    )
    _positive_int("world.length", w.length, 1, MAX_LENGTH)
    _positive_int("world.num_harmful", w.num_harmful)
    _need(
        w.num_harmful <= w.length,
        f"world.num_harmful K={w.num_harmful} exceeds world.length "
        f"T={w.length}: harm could never occur; use K <= T",
    )
    _need(
        len(w.vocab) ** w.length <= 5**7,
        f"world V**T = {len(w.vocab)}**{w.length} is too large "
        "for exact enumeration in experiments; use V**T <= 78125",
    )
    for name in ("comply_prob", "refuse_prob", "persistence", "benign_refuse_prob"):
        _probability(f"world.{name}", getattr(w, name))
    _need(w.comply_prob + w.refuse_prob <= 1, "world.comply_prob + world.refuse_prob must be <= 1")
    _probability("world.smoothing", w.smoothing, open_low=True)
    _need(
        w.smoothing * len(w.vocab) < 0.5,
        f"world.smoothing={w.smoothing} is too large for V={len(w.vocab)}; use smoothing < 0.5 / V",
    )
    _choice("policy.kind", p.kind, POLICY_KINDS)
    _positive_int("policy.markov_order", p.markov_order, 0, w.length)  # k > T adds nothing
    _positive_int("policy.d_model", p.d_model, 1, MAX_WIDTH)
    _positive_int("policy.num_heads", p.num_heads, 1, MAX_WIDTH)
    _positive_int("policy.num_layers", p.num_layers, 1, MAX_LAYERS)
    _need(
        p.d_model % p.num_heads == 0,
        f"policy.d_model={p.d_model} must be divisible by policy.num_heads={p.num_heads}",
    )
    _positive("policy.init_scale", p.init_scale, allow_zero=True)
    for section, c in (("base", b), ("align", a), ("attack", k)):
        _positive_int(f"{section}.steps", c.steps, 0, MAX_STEPS)
        _positive(f"{section}.learning_rate", c.learning_rate)
        _choice(f"{section}.optimizer", c.optimizer, OPTIMIZERS)
        _positive_int(f"{section}.num_examples", c.num_examples, 0, MAX_EXAMPLES)
    _choice("align.objective", a.objective, OBJECTIVES)
    _choice("align.baseline", a.baseline, BASELINES)
    _need(
        a.baseline == "none" or a.objective == "reinforce",
        f"align.baseline={a.baseline!r} only applies to objective 'reinforce'",
    )
    check_lam(a.lam, "align.lam", ConfigError)
    _positive("align.beta", a.beta)
    _positive("align.mu", a.mu, allow_zero=True)
    _positive_int("align.batch_size", a.batch_size, 2, MAX_BATCH)
    _probability("align.utility_weight", a.utility_weight)
    _need(
        a.utility_weight < 1, "align.utility_weight must be < 1 (the harmful prompt needs weight)"
    )
    _positive_int("align.grad_map_every", a.grad_map_every, 1, MAX_STEPS)
    _choice("attack.objective", k.objective, ATTACK_OBJECTIVES)
    for name in ("beta_first", "beta_early", "beta_late"):
        _positive(f"attack.{name}", getattr(k, name))
    _positive_int("attack.early_until", k.early_until, 1, MAX_LENGTH)
    _positive_int("measure.num_paths", m.num_paths, 0, MAX_PATHS)
    _need(
        isinstance(m.equilibrium_lams, tuple) and len(m.equilibrium_lams) > 0,
        "measure.equilibrium_lams must be a non-empty list of positive numbers",
    )
    for lam in m.equilibrium_lams:
        check_lam(lam, "measure.equilibrium_lams entry", ConfigError)


def estimate_run_bytes(cfg: RunConfig) -> int:
    """A generous estimate of a run's peak memory (bytes), from its sizes alone.

    Counts, in float64 over two prompts: ten copies of the full tables ``Σ_l V**l x V`` (params,
    gradients, optimizer moments, base and aligned tables, measurements); the Markov tables
    ``T x V**k x V`` likewise; the sampled data ``N x T x V`` of each ``num_examples`` and
    ``batch_size`` (eight copies: logits, log-probabilities, gradients); the transformer's
    activations over every prefix ``V**T x T x (d_model + T x heads)`` per layer (four copies);
    and the martingale paths ``num_paths x (T + 1) x V``.
    """
    w, p, a = cfg.world, cfg.policy, cfg.align
    vocab, length = len(w.vocab), w.length
    leaves = vocab**length
    tables = 2 * sum(vocab**l for l in range(length)) * vocab
    floats = 10 * tables
    if p.kind == "markov":
        floats += 10 * 2 * length * vocab**p.markov_order * vocab
    if p.kind == "transformer":
        floats += 4 * p.num_layers * leaves * length * (p.d_model + length * p.num_heads)
        floats += 16 * p.num_layers * p.d_model * p.d_model
    examples = max(cfg.base.num_examples, a.num_examples, cfg.attack.num_examples, a.batch_size)
    floats += 8 * 2 * examples * length * vocab
    floats += 4 * cfg.measure.num_paths * (length + 1) * vocab
    return 8 * floats


def check_run_memory(cfg: RunConfig) -> int:
    """Refuse, before anything is allocated, a run whose :func:`estimate_run_bytes` exceeds the
    memory budget (``$HARM_HORIZON_MEMORY_LIMIT`` or 80% of available memory); returns it."""
    from toy_lm.tables import human_bytes, memory_budget

    need, budget = estimate_run_bytes(cfg), memory_budget()
    if need > budget:
        raise ConfigError(
            f"run {cfg.name!r} needs about {human_bytes(need)} (estimated from world.length, "
            "policy sizes, num_examples, batch_size and measure.num_paths), more than the "
            f"{human_bytes(budget)} available; lower the largest of these (limit set by "
            "HARM_HORIZON_MEMORY_LIMIT)"
        )
    return need


# -- dict <-> config ----------------------------------------------------------------------------
def _coerce(name: str, field: dataclasses.Field, value: Any):
    """Turn a JSON/TOML value into the field's type, or raise a one-line ConfigError."""
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        inner = float if "float" in kind else str
        if inner is float:
            for item in value:
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    raise ConfigError(f"{name} must be a list of numbers, got {value!r}")
            return tuple(float(v) for v in value)
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value  # pragma: no cover - every field type is handled above


def _section_from_dict(cls, data: dict, prefix: str, start):
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}] must be a table of settings, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting {prefix}.{unknown[0]}; known {prefix} settings: {', '.join(fields)}"
        )
    values = {k: _coerce(f"{prefix}.{k}", fields[k], v) for k, v in data.items()}
    return dataclasses.replace(start, **values)


def config_from_dict(data: dict, start: RunConfig | None = None) -> RunConfig:
    """A :class:`RunConfig` from nested dicts (sections as sub-dicts), on top of ``start``."""
    start = start if start is not None else _default()
    if not isinstance(data, dict):
        raise ConfigError(f"a configuration must be a table of settings, got {type(data).__name__}")
    top = {}
    sections = {}
    for key, value in data.items():
        if key in SECTIONS:
            sections[key] = _section_from_dict(SECTIONS[key], value, key, getattr(start, key))
        elif key in ("name", "seed"):
            field = next(f for f in dataclasses.fields(RunConfig) if f.name == key)
            top[key] = _coerce(key, field, value)
        else:
            known = ", ".join(["name", "seed", "preset", *SECTIONS])
            raise ConfigError(f"unknown setting {key!r}; known top-level keys: {known}")
    return _build(start, **top, **sections)


@functools.cache
def _default() -> RunConfig:
    # frozen, so one serves every call (building and validating it was a third of the time of
    # reading a sweep's 1000 configurations back)
    return RunConfig()


def _build(start: RunConfig, **changes) -> RunConfig:
    # dataclasses.replace re-runs __post_init__, hence validation.
    return dataclasses.replace(start, **changes)


def config_to_dict(cfg: RunConfig) -> dict:
    """Nested plain-Python dict (tuples as lists), the inverse of :func:`config_from_dict`."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    out = {"name": cfg.name, "seed": cfg.seed}
    for section in SECTIONS:
        # The sections' fields are numbers, strings and tuples of them (no nested dataclass):
        # read directly, which is dataclasses.asdict without its deep copy (3x faster; a sweep
        # computes every run's id from this several times).
        part = getattr(cfg, section)
        out[section] = {f.name: plain(getattr(part, f.name)) for f in dataclasses.fields(part)}
    return out


def flat_config(cfg: RunConfig) -> dict:
    """``{"world.length": 6, "align.objective": "rlhf", ...}``; lists become JSON strings."""
    flat = {}
    for key, value in config_to_dict(cfg).items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = json.dumps(v) if isinstance(v, list) else v
        else:
            flat[key] = value
    return flat


def config_hash(cfg: RunConfig) -> str:
    """A 12-hex-digit identity of a configuration (everything but ``name``)."""
    data = config_to_dict(cfg)
    data.pop("name")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def with_overrides(cfg: RunConfig, overrides: dict) -> RunConfig:
    """Apply dotted overrides, e.g. ``{"align.objective": "dpo", "seed": 1}``."""
    nested: dict = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or key.count(".") > 1:
            raise ConfigError(f"override key {key!r} must be 'section.field' or a top-level key")
        if "." in key:
            section, field = key.split(".")
            nested.setdefault(section, {})
            if not isinstance(nested[section], dict):
                raise ConfigError(f"override {key!r} conflicts with a value for {section!r}")
            nested[section][field] = value
        else:
            nested[key] = value
    return config_from_dict(nested, cfg)
