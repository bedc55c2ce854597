"""The docstring examples run as doctests (small, float64, no network), in the default run.

One test per module that has examples; a module listed here must have at least one, so that an
example cannot silently vanish.
"""

import doctest
import importlib

import pytest

#: The modules whose docstrings carry runnable examples.
MODULES = (
    "toy_lm.models.policy_factory",
    "toy_lm.models.harms",
    "toy_lm.engines.analysis",
    "toy_lm.engines.markov_analysis",
    "toy_lm.mutation",
    "toy_lm.cli_output",
    "proofs_check.runner",
    "experiments.workers",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
        report=True,
    )
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
