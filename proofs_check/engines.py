"""The engines under test, each through its public entry point, as one common set of outputs.

A theorem check that reads what an engine computes (``H``, ``G``, ``I_t``, the determined masks and
the horizon, the equilibrium KL, ``I_t^MI``) gets it from :func:`engine_outputs`, for the engine
named by the instance (``Instance.engine``):

* ``tree`` - the readable functions of :mod:`toy_lm.engines.tree` (and :func:`toy_lm.models.harms.determined_masks`);
* ``analysis`` - :func:`toy_lm.analyze_tree` with the compiled Numba kernels (the optional numba
  extra; skipped where it is not installed);
* ``xla`` - :func:`toy_lm.analyze_tree` with the XLA chunk kernels (the default backend), run with chunks of
  :data:`XLA_CHUNK_ROWS` rows so that every level of the suite crosses chunk boundaries;
* ``markov`` - :func:`toy_lm.analyze_markov`, the dynamic program over (context, automaton state),
  on Markov policies with an automaton harm, expanded to the tree layout by
  :func:`toy_lm.engines.markov_analysis.expand_to_tree`.

The other side of every comparison is computed in :mod:`proofs_check.enumeration` (plain numpy sums
over whole responses, probabilities from the policy's teacher-forced log-probabilities), which
shares no code with any engine.
"""

from __future__ import annotations

import numpy as np

from proofs_check.autodiff import jit, to_numpy
from toy_lm.engines import tree
from toy_lm.models.harms import determined_masks, horizon_from_masks

__all__ = [
    "ENGINES",
    "XLA_CHUNK_ROWS",
    "available_engines",
    "engine_applies",
    "engine_outputs",
    "numba_available",
    "read_through",
]

#: Every engine name, in the order ``harm-horizon check --engine all`` runs them.
ENGINES = ("tree", "analysis", "xla", "markov")

#: Rows per chunk of the ``xla`` engine in the checks: small, so that chunk boundaries are crossed.
XLA_CHUNK_ROWS = 2


def numba_available() -> bool:
    """Whether the optional Numba backend of :func:`toy_lm.analyze_tree` can run here."""
    from toy_lm.engines.analysis import numba_available as available

    return available()


def available_engines() -> tuple[str, ...]:
    """The engines that can run on this machine (``analysis`` needs numba)."""
    return tuple(e for e in ENGINES if e != "analysis" or numba_available())


def engine_applies(engine: str, inst) -> bool:
    """Whether ``engine`` can analyse ``inst`` (the DP needs a Markov policy and an automaton)."""
    if engine == "markov":
        from toy_lm.models.policies import MarkovPolicy

        return isinstance(inst.policy, MarkovPolicy) and inst.dfa is not None
    return True


@jit
def _tree_outputs(tables, harm, lam):
    tables = tuple(tables)
    eq = tree.equilibrium_policy(tables, harm, lam)
    return {
        "cond_harm": tree.cond_harm(tables, harm),
        "logit_grads": tree.logit_grads(tables, harm),
        "harm_information": tree.harm_information(tables, harm),
        "harm_information_mi": tree.harm_information_mi(tables, harm),
        "equilibrium_logits": eq,
        "equilibrium_kl": tree.per_position_kl(eq, tree.log_policy(tables)),
    }


def _tree(inst) -> dict:
    out = to_numpy(_tree_outputs(inst.tables, inst.harm, inst.lam))
    out["determined"] = [np.asarray(m) for m in determined_masks(inst.harm, inst.vocab_size)]
    return out


def _analysis(inst, backend: str) -> dict:
    from toy_lm.engines.analysis import analyze_tree

    kwargs = {"chunk_rows": XLA_CHUNK_ROWS} if backend == "xla" else {}
    res = analyze_tree(
        inst.tables,
        inst.harm,
        lam=inst.lam,
        mutual_information=inst.binary,
        backend=backend,
        **kwargs,
    )
    return {
        "cond_harm": list(res.cond_harm),
        "logit_grads": list(res.logit_grads),
        "harm_information": np.asarray(res.harm_information),
        "harm_information_mi": res.harm_information_mi,
        "determined": [np.asarray(m) for m in res.determined],
        "equilibrium_logits": list(res.equilibrium_logits),
        "equilibrium_kl": np.asarray(res.equilibrium_kl),
    }


def _markov(inst) -> dict:
    from toy_lm.engines.markov_analysis import analyze_markov, expand_to_tree

    logits = np.asarray(inst.params)[0]  # MarkovPolicy params (prompts, T, V**k, V)
    res = analyze_markov(logits, inst.dfa, lam=inst.lam)
    length = inst.length
    cond = expand_to_tree(res.cond_harm, inst.dfa)
    return {
        "cond_harm": list(cond),
        "logit_grads": None,
        "harm_information": np.asarray(res.harm_information),
        "harm_information_mi": None,
        "determined": list(expand_to_tree(res.determined, inst.dfa, range(length + 1))),
        "equilibrium_logits": None,
        "equilibrium_kl": np.asarray(res.equilibrium_kl),
    }


def engine_outputs(inst, harm=None) -> dict:
    """The outputs of ``inst.engine`` on the instance's tables and harm (cached per instance).

    Returns:
      dict with ``cond_harm`` (``H_0 ... H_T``, tree layout), ``logit_grads`` (``G_0 ... G_{T-1}``,
      or None where the engine has no per-prefix form), ``harm_information`` ``(T,)``,
      ``harm_information_mi`` (binary harm, or None), ``determined`` (``det_0 ... det_T``),
      ``horizon``, ``equilibrium_logits`` (log ``π*_λ`` tables at ``inst.lam``, or None) and
      ``equilibrium_kl`` ``(T,)``. With ``harm`` (a planted error's harm), the outputs for that
      harm instead, not cached.
    """
    if harm is not None and harm is not inst.harm:  # a planted harm: not cached
        import dataclasses

        other = dataclasses.replace(inst, harm=harm)
        other.__dict__["tables"] = inst.tables
        return engine_outputs(other)
    cache = inst.__dict__.setdefault("_engine_cache", {})
    if "outputs" not in cache:
        name = inst.engine
        if name == "tree":
            out = _tree(inst)
        elif name in ("analysis", "xla"):
            out = _analysis(inst, "numba" if name == "analysis" else "xla")
        elif name == "markov":
            out = _markov(inst)
        else:  # pragma: no cover - guarded by the CLI's choices
            raise ValueError(f"unknown engine {name!r}")
        if not inst.binary:
            out["harm_information_mi"] = None
        out["horizon"] = horizon_from_masks(out["determined"])
        cache["outputs"] = out
    return cache["outputs"]


def read_through(instances, engines) -> list:
    """Every instance read through each engine that applies to it (tree first)."""
    from proofs_check.instances import with_engine

    return [with_engine(inst, e) for e in engines for inst in instances if engine_applies(e, inst)]
