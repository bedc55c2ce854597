"""Run checks over instances (and their planted errors), and summarize the results per check.

:func:`run_checks` is what ``harm-horizon check`` calls: every selected check on every instance it
applies to, or, with ``negative_controls=True``, every planted error of every check on every
instance the error applies to. A check that raises an unexpected exception yields a failed result
carrying the error, so one bug never hides the other results.
"""

from __future__ import annotations

import dataclasses
import math
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from proofs_check.controls import PLANTS
from proofs_check.registry import Check, all_checks
from proofs_check.results import CheckResult, Part
from toy_lm.errors import HarmHorizonError

__all__ = ["Summary", "Task", "plan", "run_checks", "run_tasks", "summarize"]

if TYPE_CHECKING:
    from proofs_check.instances import Instance


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: a check on an instance, optionally with a planted error."""

    check: Check
    instance: Instance
    plant: str | None = None


def plan(
    checks: Sequence[Check], instances: Sequence, *, negative_controls: bool = False
) -> list[Task]:
    """The tasks to run, instance by instance (so each instance's cached quantities are reused).

    A check runs on an instance when it applies to it and reads the instance's engine.
    """
    tasks = []
    for inst in instances:
        for check in checks:
            if inst.engine not in check.engines or not check.applies(inst):
                continue
            if negative_controls:
                tasks += [Task(check, inst, p.name) for p in check.plants_for(inst)]
            else:
                tasks.append(Task(check, inst))
    return tasks


def _crashed(task: Task, err: BaseException) -> CheckResult:
    where = traceback.extract_tb(err.__traceback__)[-1]
    message = f"{type(err).__name__}: {err} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
    part = Part(
        name="check raised an exception",
        lhs=message,
        rhs="",
        lhs_summary=[],
        rhs_summary=[],
        max_abs_error=math.inf,
        max_rel_error=math.inf,
        tolerance=0.0,
        tolerance_derivation="",
        dtype="",
        passed=False,
        kind="error",
        compared=0,
    )
    return CheckResult(
        task.check.id, task.check.statement, task.instance.name, [part], plant=task.plant
    )


def run_tasks(
    tasks: Sequence[Task], progress: Callable[[Task, bool], None] | None = None
) -> list[CheckResult]:
    """Run tasks in order; ``progress(task, done)`` is called before (False) and after (True) each."""
    results = []
    for task in tasks:
        if progress is not None:
            progress(task, False)
        try:
            result = task.check.run(task.instance, task.plant)
        except HarmHorizonError:
            raise
        except Exception as err:  # noqa: BLE001 - reported as a failed check, not swallowed
            result = _crashed(task, err)
        results.append(result)
        if progress is not None:
            progress(task, True)
    return results


def run_checks(
    checks, instances, *, negative_controls: bool = False, progress=None
) -> list[CheckResult]:
    """:func:`plan` then :func:`run_tasks`: every check on every instance it applies to.

    Args:
      checks: :class:`proofs_check.registry.Check` objects (e.g. from
        :func:`proofs_check.registry.select`).
      instances: :class:`proofs_check.instances.Instance` objects.
      negative_controls: run each check's planted errors instead (each must be flagged).
      progress: optional ``progress(task, done)`` callback.

    Returns:
      One :class:`proofs_check.results.CheckResult` per (check, instance[, plant]).

    Example: T4 (the logit form of the gradient, against autodiff) on one small tabular instance.

    >>> from proofs_check import make_instance, select
    >>> inst = make_instance("tabular", 2, 3, seed=0, tau=1)
    >>> [(r.check, r.status, r.worst.dtype) for r in run_checks(select(["T4"]), [inst])]
    [('T4', 'pass', 'float64')]
    """
    return run_tasks(plan(checks, instances, negative_controls=negative_controls), progress)


@dataclasses.dataclass
class Summary:
    """One row of the report: a check (and, for negative controls, a planted error).

    ``failed`` counts runs whose comparison failed (for negative controls: detections), ``errors``
    runs that raised (never a detection), ``na`` runs that compared nothing, and ``comparisons``
    the values compared over all runs.
    """

    check: str
    statement: str
    plant: str | None
    instances: int
    failed: int
    worst: Part | None
    worst_instance: str
    errors: int = 0
    na: int = 0
    comparisons: int = 0

    @property
    def ok(self) -> bool:
        """Checks: no failure, no error, and at least one comparison was made. Negative controls:
        every run flagged the planted error by a failed comparison (an exception is no detection)."""
        if self.errors:
            return False
        if self.plant is None:
            return self.failed == 0 and self.comparisons > 0
        return self.failed == self.instances

    @property
    def status(self) -> str:
        if self.plant is not None:
            return "DETECTED" if self.ok else ("ERROR" if self.errors else "MISSED")
        if self.errors:
            return "ERROR"
        if self.failed:
            return "FAIL"
        return "PASS" if self.comparisons else "N/A"


def summarize(results: Sequence[CheckResult]) -> list[Summary]:
    """Group results by (check, plant); the worst part is the one closest to or past its tolerance.

    For negative controls ``failed`` counts detections and ``worst`` is the *least* flagrant
    detection (or an undetected run), the one that came closest to slipping through.
    """
    groups: dict[tuple, list[CheckResult]] = {}
    for r in results:
        groups.setdefault((r.check, r.plant), []).append(r)
    rows = []
    order = {c.id: i for i, c in enumerate(all_checks())}
    plant_order = {name: i for i, name in enumerate(PLANTS)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), plant_order.get(k[1], -1)))
    for check, plant in keys:
        rs = groups[(check, plant)]
        if plant is None:
            pick = max(rs, key=lambda r: (r.status in ("fail", "error"), r.worst.ratio))
        else:
            pick = min(rs, key=lambda r: (r.status != "fail", r.worst.ratio))
        rows.append(
            Summary(
                check,
                rs[0].statement,
                plant,
                len(rs),
                sum(r.status == "fail" for r in rs),
                pick.worst,
                pick.instance,
                errors=sum(r.status == "error" for r in rs),
                na=sum(r.status == "n/a" for r in rs),
                comparisons=sum(r.comparisons for r in rs),
            )
        )
    return rows
