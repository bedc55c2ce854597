"""What a check returns: the two sides it compared, the errors, and a derived tolerance.

A check of one statement on one instance produces a :class:`CheckResult` made of one or more
:class:`Part` s (a statement such as T1 has several sub-claims; T10 has a statistical part and an
exact part). Each part compares two independently computed quantities ``lhs`` and ``rhs`` and
passes when ``max |lhs - rhs| <= tolerance``; the result passes when every part passes, and its
headline numbers are those of the part closest to (or furthest past) its tolerance.

Tolerances are derived, never tuned. Exact parts use :func:`rounding_tolerance`, the classical
bound on the rounding error of a floating-point sum (Higham 2002, eq. 4.4: ``|fl(Σx) - Σx| <=
γ_{n-1} Σ|x|`` with ``γ_n ≈ n eps``), widened by the operations each term went through:

``tol = eps(dtype) x 2 (both sides) x (ops per term + terms summed) x Σ|terms|``.

Statistical and rate parts (T10, T7c) state their own justification in the derivation string.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from toy_lm.precision import Tolerance, eps_tolerance

__all__ = ["CheckResult", "Part", "compare", "rounding_tolerance", "stated_tolerance"]


def rounding_tolerance(dtype, *, terms: int, ops: int, magnitude: float, what: str) -> Tolerance:
    """``eps x 2 x (ops + terms) x magnitude``: the rounding bound for two computed sums.

    Args:
      dtype: the dtype both sides were computed in.
      terms: how many terms one compared value sums (e.g. ``V**T`` responses).
      ops: floating-point operations along one term's path (e.g. ``8 T`` for a product of ``T``
        softmax conditionals and its backward pass).
      magnitude: ``Σ|terms|`` of one compared value (or a stated upper bound on it).
      what: what ``magnitude`` is, for the derivation string.

    Returns:
      A :class:`~toy_lm.precision.Tolerance` whose derivation names every factor.
    """
    magnitude = float(magnitude)
    if not math.isfinite(magnitude):
        magnitude = math.inf
    factor = 2.0 * (ops + terms) * max(magnitude, np.finfo(np.dtype(dtype)).tiny)
    why = f"2 sides x ({ops} ops/term + {terms} terms summed) x Σ|terms| {magnitude:.3g} ({what})"
    return eps_tolerance(dtype, factor, why)


def stated_tolerance(value: float, derivation: str, dtype="float64") -> Tolerance:
    """A tolerance that is not a multiple of eps (statistical or asymptotic), with its reason."""
    return Tolerance(float(value), derivation, np.dtype(dtype).name)


def _summary(x, limit: int = 8) -> list[float]:
    """A short JSON-ready summary of a compared quantity: the values, or norms when large."""
    arr = np.asarray(x, np.float64)
    if arr.ndim == 0:
        return [float(arr)]
    if arr.size <= limit:
        return [float(v) for v in arr.reshape(-1)]
    flat = (
        arr.reshape(arr.shape[0], -1)
        if arr.ndim > 1 and arr.shape[0] <= limit
        else arr.reshape(1, -1)
    )
    return [float(v) for v in np.sqrt(np.sum(flat**2, axis=1))]


@dataclasses.dataclass
class Part:
    """One comparison: ``lhs`` against ``rhs`` (both described in words) within ``tolerance``.

    ``compared`` counts the compared values: a part that compared nothing is "n/a", never a pass.
    ``independent`` is False when both sides come from engine code (such a part can still fail,
    but an engine mutant it flags does not count as killed: see :mod:`proofs_check.mutants`).
    ``dtype`` is read from the compared arrays, not from the tolerance.

    ``max_abs_error`` is ``max |lhs - rhs|``; ``max_rel_error`` divides it by ``scale`` (by default
    the larger of ``max|lhs|`` and ``max|rhs|``; zero-claims pass the size of the quantity where
    it is not zero). For one-sided claims (``bound`` set to ``"upper"``), the error is the largest
    excess ``max(lhs - rhs, 0)``; ``"lower"`` is the largest shortfall ``max(rhs - lhs, 0)``.
    """

    name: str
    lhs: str
    rhs: str
    lhs_summary: list
    rhs_summary: list
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    tolerance_derivation: str
    dtype: str
    passed: bool
    kind: str = "exact"
    compared: int = 1
    independent: bool = True

    @property
    def status(self) -> str:
        """``"pass"``, ``"fail"``, ``"n/a"`` (nothing was compared) or ``"error"`` (it raised)."""
        if self.kind == "error":
            return "error"
        if self.compared == 0:
            return "n/a"
        return "pass" if self.passed else "fail"

    @property
    def ratio(self) -> float:
        """``max_abs_error / tolerance`` (how close the part came to failing)."""
        if self.tolerance > 0:
            return self.max_abs_error / self.tolerance
        return 0.0 if self.max_abs_error == 0 else math.inf


def _data_dtype(*sides) -> str:
    """The dtype of the compared arrays (Python numbers, such as a claimed 0, carry none)."""
    dtypes = [np.asarray(x).dtype for x in sides if not isinstance(x, (int, float))]
    return np.result_type(*dtypes).name if dtypes else "float64"


def compare(
    name: str,
    lhs,
    rhs,
    tol: Tolerance,
    *,
    lhs_name: str,
    rhs_name: str,
    scale: float | None = None,
    bound: str | None = None,
    kind: str = "exact",
    independent: bool = True,
) -> Part:
    """Build a :class:`Part` comparing two arrays (broadcast against each other).

    Args:
      name: the sub-claim, e.g. ``"E[Δ_t|Y_<t] = 0"``.
      lhs, rhs: the two independently computed sides.
      tol: the tolerance (value, derivation, dtype).
      lhs_name, rhs_name: what each side is and how it was computed.
      scale: denominator of the relative error (default ``max(|lhs|, |rhs|)``).
      bound: ``None`` (equality), ``"upper"`` (claim ``lhs <= rhs``) or ``"lower"`` (``lhs >= rhs``).
      kind: ``"exact"``, ``"statistical"`` or ``"rate"``.
      independent: False when both sides are computed by engine code.
    """
    dtype = _data_dtype(lhs, rhs)
    a = np.asarray(lhs, np.float64)
    b = np.asarray(rhs, np.float64)
    if bound is None:
        diff = np.abs(a - b)
    elif bound == "upper":
        diff = np.maximum(a - b, 0.0)
    elif bound == "lower":
        diff = np.maximum(b - a, 0.0)
    else:  # pragma: no cover - programming error
        raise ValueError(f"bound must be None, 'upper' or 'lower', got {bound!r}")
    if diff.size == 0:
        err = 0.0
    else:
        err = float(np.max(diff)) if np.all(np.isfinite(diff)) else math.inf
    if scale is None:
        scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    return Part(
        name=name,
        lhs=lhs_name,
        rhs=rhs_name,
        lhs_summary=_summary(a),
        rhs_summary=_summary(b),
        max_abs_error=err,
        max_rel_error=rel,
        tolerance=tol.value,
        tolerance_derivation=tol.derivation,
        dtype=dtype,
        passed=bool(err <= tol.value),
        kind=kind,
        compared=int(diff.size),
        independent=independent,
    )


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check on one instance (one JSON record of ``harm-horizon check --json``).

    The headline fields (``lhs`` ... ``passed``) are those of the part with the largest
    error-to-tolerance ratio; ``parts`` holds every comparison. ``measurements`` holds numbers the
    check reports without asserting them (e.g. T8's spill-over beyond the horizon for shared
    weights). ``plant`` names the planted error the check ran with (negative controls), if any.
    """

    check: str
    statement: str
    instance: str
    parts: list[Part]
    seconds: float = 0.0
    plant: str | None = None
    measurements: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def worst(self) -> Part:
        """The compared part closest to (or furthest past) its tolerance (an n/a one if none)."""
        live = [p for p in self.parts if p.status != "n/a"] or self.parts
        return max(live, key=lambda p: (p.status in ("fail", "error"), p.ratio))

    @property
    def status(self) -> str:
        """``"error"`` if it raised, ``"fail"`` if a comparison failed, ``"n/a"`` if nothing was
        compared, else ``"pass"``."""
        statuses = {p.status for p in self.parts}
        for s in ("error", "fail", "pass"):
            if s in statuses:
                return s
        return "n/a"

    @property
    def passed(self) -> bool:
        """True only when something was compared and every comparison held."""
        return self.status == "pass"

    @property
    def comparisons(self) -> int:
        """How many values were compared over all parts."""
        return sum(p.compared for p in self.parts if p.status != "error")

    def killed_by_comparison(self) -> bool:
        """A failed comparison between an engine and an independent side (not an exception)."""
        return any(p.status == "fail" and p.independent for p in self.parts)

    def to_json(self) -> dict:
        """Flat record: id, statement, both sides, errors, tolerance and derivation, dtype, passed."""
        w = self.worst
        return {
            "check": self.check,
            "statement": self.statement,
            "instance": self.instance,
            "plant": self.plant,
            "lhs": w.lhs,
            "rhs": w.rhs,
            "lhs_summary": w.lhs_summary,
            "rhs_summary": w.rhs_summary,
            "max_abs_error": _finite(w.max_abs_error),
            "max_rel_error": _finite(w.max_rel_error),
            "tolerance": w.tolerance,
            "tolerance_derivation": w.tolerance_derivation,
            "dtype": w.dtype,
            "passed": self.passed,
            "status": self.status,
            "comparisons": self.comparisons,
            "seconds": self.seconds,
            "parts": [
                {
                    **{
                        k: (_finite(v) if isinstance(v, float) else v)
                        for k, v in dataclasses.asdict(p).items()
                    },
                    "status": p.status,
                }
                for p in self.parts
            ],
            "measurements": self.measurements,
        }


def _finite(x: float):
    """JSON has no inf/nan: write them as strings."""
    return x if math.isfinite(x) else str(x)
