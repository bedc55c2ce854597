"""The ids of the registered checks, importable without JAX (argument errors answer at once).

``CHECK_IDS`` lists what :func:`proofs_check.registry.all_checks` registers, in the same order; a
test keeps the two equal. :func:`matches` is the selection rule of ``--theorem``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CHECK_IDS", "matches", "unknown"]

CHECK_IDS = (
    "T1",
    "T1-orth",
    "T1-sum",
    "T1-var",
    "T2",
    "T3",
    "T3-prompts",
    "T3-total",
    "T4",
    "T5",
    "T5-kl",
    "T6",
    "T7a",
    "T7b",
    "T7c",
    "T7d",
    "T7e",
    "T8",
    "T9",
    "T9-train",
    "T9b",
    "T10",
    "T11",
    "T11-train",
    "T12",
    "T13",
    "T14",
    "T14-natural",
)


def matches(check_id: str, wanted: str) -> bool:
    """``T7`` selects ``T7a`` ... ``T7e``; ``T1`` selects ``T1`` and ``T1-*`` but not ``T10``."""
    cid, want = check_id.upper(), wanted.upper()
    if cid == want:
        return True
    rest = cid[len(want) :] if cid.startswith(want) else None
    return bool(rest) and not rest[0].isdigit()


def unknown(wanted: Sequence[str], ids: Sequence[str] = CHECK_IDS) -> str | None:
    """The first of ``wanted`` that selects no id, or None."""
    for want in wanted:
        if not any(matches(cid, want) for cid in ids):
            return want
    return None
