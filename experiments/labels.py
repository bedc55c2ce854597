"""Names for runs in tables and legends: what each objective is called, and a label per run that
tells the runs of a sweep apart. Light on purpose (no matplotlib, no pyarrow): the tables that
``harm-horizon train`` and ``sweep`` print use it too.
"""

from __future__ import annotations

from experiments.config import config_from_dict, flat_config

__all__ = ["NAMES", "labels", "objective"]

#: The display name of each ``align.objective``.
NAMES = {
    "none": "base",
    "rlhf": "KL-regularized RLHF",
    "reinforce": "REINFORCE",
    "dpo": "DPO",
    "dpo_sampled": "DPO (sampled)",
    "sft_refusal": "SFT on refusals",
    "augmentation": "recovery augmentation",
    "recovery_prefill": "recovery penalty (prefill)",
    "recovery_dense": "recovery penalty (dense, on-policy)",
}


def objective(result: dict) -> str:
    """The ``align.objective`` of a result dict."""
    return result["config"]["align"]["objective"]


def labels(results: list[dict]) -> list[str]:
    """A legend label per run: the objective, plus every other setting that varies between runs."""
    flats = [flat_config(config_from_dict(r["config"])) for r in results]
    objectives = [objective(r) for r in results]
    if len(set(objectives)) == len(objectives):  # the objective alone tells the runs apart
        return [NAMES.get(o, o) for o in objectives]
    varying = [
        k
        for k in flats[0]
        if k not in ("name", "align.objective") and len({str(f.get(k)) for f in flats}) > 1
    ]
    out = []
    for result, flat in zip(results, flats):
        extra = ", ".join(f"{k.split('.')[-1]}={flat[k]}" for k in varying)
        out.append(
            NAMES.get(objective(result), objective(result)) + (f" ({extra})" if extra else "")
        )
    return out
