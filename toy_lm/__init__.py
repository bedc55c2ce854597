"""toy_lm: toy autoregressive policies, harm functions and exact engines.

Index convention (everywhere): a *level* ``l = 0 ... T`` is a prefix length; a *position*
``t = 1 ... T`` is a token index, chosen by the level-``(t-1)`` conditional. See
:mod:`toy_lm.tables` for the canonical table layout.
"""

from toy_lm.analysis import TreeAnalysis as TreeAnalysis
from toy_lm.analysis import analyze_tree as analyze_tree
from toy_lm.automata import Automaton as Automaton
from toy_lm.automata import automaton_determined_masks as automaton_determined_masks
from toy_lm.automata import automaton_harm_table as automaton_harm_table
from toy_lm.automata import determined_states as determined_states
from toy_lm.automata import harmful_before_refusal as harmful_before_refusal
from toy_lm.automata import level_states as level_states
from toy_lm.automata import make_automaton as make_automaton
from toy_lm.automata import pattern_harm as pattern_harm
from toy_lm.errors import ConfigError as ConfigError
from toy_lm.errors import EnumerationTooLarge as EnumerationTooLarge
from toy_lm.errors import HarmHorizonError as HarmHorizonError
from toy_lm.errors import InputError as InputError
from toy_lm.errors import PrecisionError as PrecisionError
from toy_lm.gradients import per_position_grads_autodiff as per_position_grads_autodiff
from toy_lm.gradients import per_position_grads_surrogate as per_position_grads_surrogate
from toy_lm.gradients import per_position_norms as per_position_norms
from toy_lm.gradients import total_grad as total_grad
from toy_lm.harms import determined_masks as determined_masks
from toy_lm.harms import harm_table as harm_table
from toy_lm.harms import horizon as horizon
from toy_lm.harms import random_decided_harm as random_decided_harm
from toy_lm.harms import response_horizons as response_horizons
from toy_lm.harms import soft_harm as soft_harm
from toy_lm.markov_analysis import MarkovAnalysis as MarkovAnalysis
from toy_lm.markov_analysis import analyze_markov as analyze_markov
from toy_lm.markov_analysis import expand_to_tree as expand_to_tree
from toy_lm.montecarlo import Estimate as Estimate
from toy_lm.montecarlo import cond_harm_mc as cond_harm_mc
from toy_lm.montecarlo import harmful_prefixes as harmful_prefixes
from toy_lm.montecarlo import per_position_kl_mc as per_position_kl_mc
from toy_lm.montecarlo import prefill_asr_mc as prefill_asr_mc
from toy_lm.montecarlo import reinforce_grads as reinforce_grads
from toy_lm.neural import MLPPolicy as MLPPolicy
from toy_lm.neural import TransformerPolicy as TransformerPolicy
from toy_lm.policies import MarkovPolicy as MarkovPolicy
from toy_lm.policies import Policy as Policy
from toy_lm.policies import PositionalPolicy as PositionalPolicy
from toy_lm.policies import TabularPolicy as TabularPolicy
from toy_lm.precision import eps_tolerance as eps_tolerance
from toy_lm.precision import require_x64 as require_x64
from toy_lm.sharded import analyze_sharded as analyze_sharded
from toy_lm.tables import all_prefixes as all_prefixes
from toy_lm.tables import check_enumeration_size as check_enumeration_size
from toy_lm.tree import cond_harm as cond_harm
from toy_lm.tree import equilibrium_policy as equilibrium_policy
from toy_lm.tree import expected_harm as expected_harm
from toy_lm.tree import harm_information as harm_information
from toy_lm.tree import harm_information_mi as harm_information_mi
from toy_lm.tree import harmful_prefix_dist as harmful_prefix_dist
from toy_lm.tree import increments as increments
from toy_lm.tree import log_partition as log_partition
from toy_lm.tree import log_policy as log_policy
from toy_lm.tree import logit_grads as logit_grads
from toy_lm.tree import per_position_kl as per_position_kl
from toy_lm.tree import prefill_asr as prefill_asr
from toy_lm.tree import prefill_asr_curve as prefill_asr_curve
from toy_lm.tree import prefix_probs as prefix_probs
from toy_lm.tree import response_log_probs as response_log_probs

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
