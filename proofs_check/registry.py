"""The registry of checks: one named, runnable check per statement of THEORY.md section 3.

A check is a function ``(instance, plant) -> parts`` (or ``(parts, measurements)``) registered
with its id, a one-line statement, the planted errors it must catch and the instances it applies
to. :meth:`Check.run` wraps the parts into a :class:`~proofs_check.results.CheckResult` and times
it. Ids: ``T1`` ... ``T14``; sub-claims carry a suffix (``T1-sum``, ``T3-total``, ``T7a`` ... ``T7e``,
``T9-train``, ``T9b``, ``T11-train``, ``T14-natural``). :func:`select` picks checks by statement: ``T7`` selects
``T7a`` ... ``T7e``, ``T1`` selects ``T1`` and ``T1-*`` but not ``T10``/``T11``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from proofs_check.controls import PLANTS, Plant
from proofs_check.ids import matches
from proofs_check.results import CheckResult
from toy_lm.errors import InputError

__all__ = ["Check", "REGISTRY", "all_checks", "register", "select"]


@dataclasses.dataclass(frozen=True)
class Check:
    """A registered check.

    Attributes:
      id: e.g. ``"T3"`` or ``"T7c"``.
      statement: one line, in THEORY.md's symbols.
      fn: ``fn(instance, plant) -> list[Part]`` or ``(list[Part], measurements dict)``.
      plants: the planted errors it must detect (names in :data:`~proofs_check.controls.PLANTS`).
      applies: whether the statement applies to an instance (e.g. binary harm only).
      topic: the module it lives in (for listings).
      plant_requires: extra conditions, per planted error, for it to be detectable by this check.
      engines: the engines whose outputs it reads (:mod:`proofs_check.engines`); it runs on an
        instance read through any of them. Checks of autodiff, objectives and training read the
        ``tree`` engine only.
      mixture: True for a check of prompt mixtures (it runs on mixture instances only).
    """

    id: str
    statement: str
    fn: Callable
    plants: tuple[str, ...]
    applies: Callable = lambda inst: True
    topic: str = ""
    plant_requires: tuple = ()
    engines: tuple[str, ...] = ("tree",)
    mixture: bool = False

    def run(self, instance, plant: str | None = None) -> CheckResult:
        """Run on one instance, optionally with a planted error; returns the timed result."""
        start = time.perf_counter()
        out = self.fn(instance, plant)
        parts, measurements = out if isinstance(out, tuple) else (out, {})
        return CheckResult(
            check=self.id,
            statement=self.statement,
            instance=instance.name,
            parts=list(parts),
            seconds=time.perf_counter() - start,
            plant=plant,
            measurements=measurements,
        )

    def plants_for(self, instance) -> list[Plant]:
        """The planted errors of this check that apply to ``instance``."""
        extra = dict(self.plant_requires)
        return [
            PLANTS[name]
            for name in self.plants
            if PLANTS[name].applies(instance) and extra.get(name, lambda inst: True)(instance)
        ]


REGISTRY: dict[str, Check] = {}


def register(
    check_id: str,
    statement: str,
    *,
    plants: Sequence[str],
    applies=None,
    plant_requires=None,
    engines: Sequence[str] = ("tree",),
    mixture: bool = False,
):
    """Decorator: register ``fn(instance, plant)`` as the check ``check_id``.

    ``plant_requires`` maps a planted error to an extra condition on the instance under which this
    check can see it (e.g. a claim about determined prefixes needs one to exist). A check with
    ``mixture=True`` runs on prompt-mixture instances only, every other check on single-prompt
    instances only (the statements hold per prompt; the mixture checks average them).
    """
    unknown = [p for p in plants if p not in PLANTS]
    if unknown or not plants:
        raise ValueError(f"check {check_id}: needs known planted errors, got {list(plants)}")

    def wrap(fn):
        if check_id in REGISTRY:
            raise ValueError(f"check {check_id} registered twice")
        condition = applies or (lambda inst: True)

        def applies_here(inst):
            return (getattr(inst, "prompts", None) is not None) == mixture and condition(inst)

        REGISTRY[check_id] = Check(
            check_id,
            statement,
            fn,
            tuple(plants),
            applies_here,
            fn.__module__.rsplit(".", 1)[-1],
            tuple((plant_requires or {}).items()),
            tuple(engines),
            mixture,
        )
        return fn

    return wrap


def all_checks() -> list[Check]:
    """Every registered check, in statement order (imports the check modules)."""
    import proofs_check.checks  # noqa: F401  (registers everything)

    def order(c: Check):
        head = c.id.split("-")[0]
        num = int("".join(ch for ch in head if ch.isdigit()))
        return num, head, c.id

    return sorted(REGISTRY.values(), key=order)


def select(theorems: Sequence[str] | None = None) -> list[Check]:
    """Checks for the given statements (``None``: all), e.g. ``["T3", "T5"]``.

    Raises:
      InputError: when a name matches no check.
    """
    checks = all_checks()
    if not theorems:
        return checks
    chosen = []
    for want in theorems:
        hits = [c for c in checks if matches(c.id, want)]
        if not hits:
            ids = ", ".join(c.id for c in checks)
            raise InputError(f"--theorem {want}: no such check; choose from {ids}")
        chosen += [c for c in hits if c not in chosen]
    return [c for c in checks if c in chosen]
