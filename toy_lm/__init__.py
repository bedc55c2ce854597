"""toy_lm: toy autoregressive policies, harm functions and exact engines.

Index convention (everywhere): a *level* ``l = 0 ... T`` is a prefix length; a *position*
``t = 1 ... T`` is a token index, chosen by the level-``(t-1)`` conditional. See
:mod:`toy_lm.tables` for the canonical table layout.

Names are re-exported lazily (PEP 562): ``import toy_lm`` loads no engine, so the command-line
entry point (:mod:`toy_lm.cli`) installs its signal handlers before numpy, JAX and numba load.
"""

import importlib

#: Public name -> the module that defines it.
_EXPORTS = {
    "TreeAnalysis": "toy_lm.analysis",
    "analyze_tree": "toy_lm.analysis",
    "Automaton": "toy_lm.automata",
    "automaton_determined_masks": "toy_lm.automata",
    "automaton_harm_table": "toy_lm.automata",
    "determined_states": "toy_lm.automata",
    "harmful_before_refusal": "toy_lm.automata",
    "level_states": "toy_lm.automata",
    "make_automaton": "toy_lm.automata",
    "pattern_harm": "toy_lm.automata",
    "ConfigError": "toy_lm.errors",
    "EnumerationTooLarge": "toy_lm.errors",
    "HarmHorizonError": "toy_lm.errors",
    "InputError": "toy_lm.errors",
    "PrecisionError": "toy_lm.errors",
    "OutputError": "toy_lm.errors",
    "MIN_LAMBDA": "toy_lm.bounds",
    "open_input": "toy_lm.io",
    "check_output": "toy_lm.outputs",
    "write_atomic": "toy_lm.outputs",
    "per_position_grads_autodiff": "toy_lm.gradients",
    "per_position_grads_surrogate": "toy_lm.gradients",
    "per_position_norms": "toy_lm.gradients",
    "total_grad": "toy_lm.gradients",
    "determined_masks": "toy_lm.harms",
    "harm_table": "toy_lm.harms",
    "horizon": "toy_lm.harms",
    "random_decided_harm": "toy_lm.harms",
    "response_horizons": "toy_lm.harms",
    "soft_harm": "toy_lm.harms",
    "MarkovAnalysis": "toy_lm.markov_analysis",
    "analyze_markov": "toy_lm.markov_analysis",
    "expand_to_tree": "toy_lm.markov_analysis",
    "Estimate": "toy_lm.montecarlo",
    "cond_harm_mc": "toy_lm.montecarlo",
    "harmful_prefixes": "toy_lm.montecarlo",
    "per_position_kl_mc": "toy_lm.montecarlo",
    "prefill_asr_mc": "toy_lm.montecarlo",
    "reinforce_grads": "toy_lm.montecarlo",
    "MLPPolicy": "toy_lm.neural",
    "TransformerPolicy": "toy_lm.neural",
    "MarkovPolicy": "toy_lm.policies",
    "Policy": "toy_lm.policies",
    "PositionalPolicy": "toy_lm.policies",
    "TabularPolicy": "toy_lm.policies",
    "eps_tolerance": "toy_lm.precision",
    "require_x64": "toy_lm.precision",
    "analyze_sharded": "toy_lm.sharded",
    "all_prefixes": "toy_lm.tables",
    "check_enumeration_size": "toy_lm.tables",
    "cond_harm": "toy_lm.tree",
    "equilibrium_policy": "toy_lm.tree",
    "expected_harm": "toy_lm.tree",
    "harm_information": "toy_lm.tree",
    "harm_information_mi": "toy_lm.tree",
    "harmful_prefix_dist": "toy_lm.tree",
    "increments": "toy_lm.tree",
    "log_partition": "toy_lm.tree",
    "log_policy": "toy_lm.tree",
    "logit_grads": "toy_lm.tree",
    "per_position_kl": "toy_lm.tree",
    "prefill_asr": "toy_lm.tree",
    "prefill_asr_curve": "toy_lm.tree",
    "prefix_probs": "toy_lm.tree",
    "response_log_probs": "toy_lm.tree",
}

__version__ = "0.1.0"

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:   # a submodule used as an attribute (``toy_lm.tree``) imports on demand
        try:
            return importlib.import_module(f"toy_lm.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'toy_lm' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
