"""toy_lm: toy autoregressive policies, harm functions and exact engines.

Index convention (everywhere): a *level* ``l = 0 ... T`` is a prefix length; a *position*
``t = 1 ... T`` is a token index, chosen by the level-``(t-1)`` conditional. See
:mod:`toy_lm.tables` for the canonical table layout.

Names are re-exported lazily (PEP 562): ``import toy_lm`` loads no engine, so the command-line
entry point (:mod:`experiments.cli.main`) installs its signal handlers before numpy, JAX and numba load.
"""

from importlib.metadata import PackageNotFoundError, version

from toy_lm.lazy import lazy_exports

try:  # the one version source: the installed distribution's metadata (pyproject.toml)
    __version__ = version("harm-horizon")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
del PackageNotFoundError, version

#: What the package re-exports, by the module that defines it (imported on first use).
_EXPORTS = {
    "toy_lm.engines.analysis": ("TreeAnalysis", "analyze_tree"),
    "toy_lm.models.automata": (
        "Automaton",
        "automaton_determined_masks",
        "automaton_harm_table",
        "determined_states",
        "harmful_before_refusal",
        "level_states",
        "make_automaton",
        "pattern_harm",
    ),
    "toy_lm.errors": (
        "ConfigError",
        "EnumerationTooLarge",
        "HarmHorizonError",
        "InputError",
        "OutputError",
        "PrecisionError",
    ),
    "toy_lm.bounds": ("MIN_LAMBDA",),
    "toy_lm.io": ("open_input",),
    "toy_lm.outputs": ("check_output", "write_atomic"),
    "toy_lm.engines.gradients": (
        "per_position_grads_autodiff",
        "per_position_grads_surrogate",
        "per_position_norms",
        "total_grad",
    ),
    "toy_lm.models.harms": (
        "determined_masks",
        "harm_table",
        "horizon",
        "random_decided_harm",
        "response_horizons",
        "soft_harm",
    ),
    "toy_lm.engines.markov_analysis": ("MarkovAnalysis", "analyze_markov", "expand_to_tree"),
    "toy_lm.models.markov_model": (
        "markov_model_arrays",
        "random_markov_model",
        "save_markov_model",
    ),
    "toy_lm.engines.montecarlo": (
        "Estimate",
        "cond_harm_mc",
        "harmful_prefixes",
        "per_position_kl_mc",
        "prefill_asr_mc",
        "reinforce_grads",
    ),
    "toy_lm.models.neural": ("MLPPolicy", "TransformerPolicy"),
    "toy_lm.models.policies": ("MarkovPolicy", "Policy", "PositionalPolicy", "TabularPolicy"),
    "toy_lm.models.policy_factory": ("POLICY_KINDS", "init_params", "make_policy", "policy_kind"),
    "toy_lm.precision": ("check_x64", "eps_tolerance", "require_x64"),
    "toy_lm.engines.sharded": ("analyze_sharded",),
    "toy_lm.tables": ("all_prefixes", "check_enumeration_size"),
    "toy_lm.engines.tree": (
        "cond_harm",
        "equilibrium_policy",
        "expected_harm",
        "harm_information",
        "harm_information_mi",
        "harmful_prefix_dist",
        "increments",
        "log_partition",
        "log_policy",
        "logit_grads",
        "per_position_kl",
        "prefill_asr",
        "prefill_asr_curve",
        "prefix_probs",
        "response_log_probs",
    ),
}

__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS, eager=("__version__",))
