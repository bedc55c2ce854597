"""Imports every check module so that each registers its checks (see :mod:`proofs_check.registry`)."""

from proofs_check import (  # noqa: F401
    dpo,
    dynamics,
    equilibrium,
    gradients,
    horizon,
    information,
    martingale,
    prompts,
    recovery,
    reinforce,
    training,
)

__all__: list[str] = []  # imported for its side effect only
