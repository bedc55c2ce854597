"""proofs_check: every statement of THEORY.md section 3 as a named, runnable, falsifiable check.

Each check compares two independent computations (an engine's output or autodiff against direct
sums over every response, or a closed form) within a tolerance derived from the dtype's machine
epsilon, on every parameterization and every engine (:mod:`proofs_check.engines`), has planted
errors it must flag (negative controls), and the engines carry planted bugs it must kill
(:mod:`proofs_check.mutants`).

Quick use::

    from proofs_check import builtin_suite, select
    for check in select(["T3", "T5"]):
        for inst in builtin_suite(["tabular"]):
            print(check.run(inst).to_json()["passed"])

Command line: ``harm-horizon check`` (see :mod:`proofs_check.cli`). Hypothesis strategies for your
own property tests: :mod:`proofs_check.strategies`.
"""

from proofs_check.controls import PLANTS as PLANTS
from proofs_check.engines import ENGINES as ENGINES
from proofs_check.engines import available_engines as available_engines
from proofs_check.engines import engine_outputs as engine_outputs
from proofs_check.engines import read_through as read_through
from proofs_check.controls import Plant as Plant
from proofs_check.instances import POLICY_KINDS as POLICY_KINDS
from proofs_check.instances import Instance as Instance
from proofs_check.instances import builtin_suite as builtin_suite
from proofs_check.instances import make_instance as make_instance
from proofs_check.instances import make_policy as make_policy
from proofs_check.instances import recovery_cost_automaton as recovery_cost_automaton
from proofs_check.instances import with_engine as with_engine
from proofs_check.mutants import MUTANTS as MUTANTS
from proofs_check.mutants import Mutant as Mutant
from proofs_check.mutants import run_mutants as run_mutants
from proofs_check.registry import REGISTRY as REGISTRY
from proofs_check.registry import Check as Check
from proofs_check.registry import all_checks as all_checks
from proofs_check.registry import select as select
from proofs_check.results import CheckResult as CheckResult
from proofs_check.results import Part as Part
from proofs_check.results import rounding_tolerance as rounding_tolerance
from proofs_check.runner import run_checks as run_checks
from proofs_check.runner import summarize as summarize

__all__ = [
    "ENGINES", "MUTANTS", "PLANTS", "POLICY_KINDS", "REGISTRY", "Check", "CheckResult", "Instance",
    "Mutant", "Part", "Plant", "all_checks", "available_engines", "builtin_suite", "engine_outputs",
    "make_instance", "make_policy", "read_through", "recovery_cost_automaton", "rounding_tolerance",
    "run_checks", "run_mutants", "select", "summarize", "with_engine",
]
