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

Command line: ``harm-horizon check`` (see :mod:`experiments.cli.check`). Hypothesis strategies for your
own property tests: :mod:`proofs_check.strategies`.
"""

from toy_lm.lazy import lazy_exports

#: What the package re-exports, by the module that defines it (imported on first use).
_EXPORTS = {
    "proofs_check.controls": ("PLANTS", "Plant"),
    "proofs_check.engines": ("ENGINES", "available_engines", "engine_outputs", "read_through"),
    "proofs_check.instances": (
        "Instance",
        "builtin_suite",
        "make_instance",
        "recovery_cost_automaton",
        "with_engine",
    ),
    "proofs_check.mutants": ("MUTANTS", "Mutant", "run_mutants"),
    "proofs_check.registry": ("REGISTRY", "Check", "all_checks", "select"),
    "proofs_check.results": ("CheckResult", "Part", "rounding_tolerance"),
    "proofs_check.runner": ("run_checks", "summarize"),
}

__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS)
