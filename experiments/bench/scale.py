"""``harm-horizon bench --suite markov`` and ``--suite mc``: the routes past exact enumeration.

Suite ``markov`` (the DP engine, :func:`toy_lm.engines.markov_analysis.analyze_markov` with ``--lam``):
``V = 64``, ``S = 16`` automaton states (``harmful_before_refusal`` with ``K = 14``), order 1,
``T`` in ``{256, 1024, 4096}``, per size

* ``first_call_seconds``: the first analysis at this size in the process, compile included (the
  cost a fresh ``harm-horizon analyze-markov`` run pays), ``compile_seconds`` (the scan alone);
* ``seconds``: median of ``repeats`` warm runs;
* ``cpu_seconds``, ``first_call_cpu_seconds``: the same in CPU time of the process (all threads),
  which on a shared machine tells what the run costs with the cores to itself;

and one row pitting the DP engine against the tree engine (``analyze_tree`` on the expanded
tables) at the largest ``T`` the tree engine can hold at ``V = 64`` (``ratio_tree_to_dp``), with the
largest disagreement between the two (``max_abs_error``).

Suite ``mc``: the Monte Carlo per-position KL (the ``"full"`` estimator, as Qi et al. measure it)
against the exact computation, for random tabular policies with ``2**16``, ``2**20``, ``2**24``
responses (``V = 4``, ``T = 8, 10, 12``): ``exact_seconds`` (a numpy pass over the tree),
``mc_seconds`` (batches of ``MC_BATCH`` responses, compile excluded, until every position's
estimate is within 1% of the exact value), ``mc_samples``, the interval half-width reached, and
``ratio_mc_to_exact``; with ``--repeats R`` the medians over ``R`` random instances.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np

__all__ = [
    "LAMBDA",
    "MARKOV_LENGTHS",
    "MARKOV_STATES",
    "MARKOV_VOCAB",
    "MC_BATCH",
    "MC_SIZES",
    "MC_TARGET",
    "bench_markov",
    "bench_markov_vs_tree",
    "bench_mc",
    "exact_per_position_kl",
    "largest_tree_length",
    "markov_instance",
    "suite_markov",
    "suite_mc",
]

MARKOV_LENGTHS = (256, 1024, 4096)
MARKOV_VOCAB, MARKOV_STATES, LAMBDA = 64, 16, 0.5
MC_SIZES = ((4, 8), (4, 10), (4, 12))
MC_BATCH = 4096
MC_TARGET = 0.01


def markov_instance(vocab_size: int, length: int, num_harmful: int, seed: int = 0):
    """Order-1 logits ``N(0, 1)`` and ``harmful_before_refusal`` with ``K + 2`` states (tokens
    ``1 ... 8`` harmful, the last token a refusal)."""
    from toy_lm.models.automata import harmful_before_refusal

    rng = np.random.default_rng(seed)
    dfa = harmful_before_refusal(
        vocab_size, num_harmful, range(1, min(9, vocab_size - 1)), [vocab_size - 1]
    )
    return rng.normal(size=(length, vocab_size, vocab_size)), dfa


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def _timed_cpu(fn, *args, **kwargs):
    """``(wall seconds, CPU seconds of this process, result)``: on a shared machine the CPU time
    shows what the run costs when it has the cores to itself."""
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def bench_markov(vocab_size: int, length: int, num_states: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from toy_lm.engines.markov_analysis import analyze_markov, compiled_program, markov_scan

    logits, dfa = markov_instance(vocab_size, length, num_states - 2)
    first, first_cpu, res = _timed_cpu(analyze_markov, logits, dfa, lam=LAMBDA)
    scan = compiled_program(markov_scan, jax.default_backend(), ("with_lam", "scaled"))
    compile_seconds, _ = _timed(
        lambda: scan.lower(
            jnp.asarray(logits), dfa, jnp.asarray(LAMBDA), with_lam=True, scaled=True
        ).compile()
    )
    runs = [_timed_cpu(analyze_markov, logits, dfa, lam=LAMBDA)[:2] for _ in range(repeats)]
    return {
        "name": f"markov V={vocab_size} S={num_states} k=1 T={length}",
        "vocab_size": vocab_size,
        "length": length,
        "num_states": num_states,
        "order": 1,
        "log10_responses": length * math.log10(vocab_size),
        "seconds": statistics.median(r[0] for r in runs),
        "first_call_seconds": first,
        "compile_seconds": compile_seconds,
        "cpu_seconds": statistics.median(r[1] for r in runs),
        "first_call_cpu_seconds": first_cpu,
        "horizon": res.horizon,
        "expected_harm": res.expected_harm,
    }


def largest_tree_length(vocab_size: int, limit: int = 16) -> int:
    """The largest ``T`` whose full tree analysis passes the enumeration size guard."""
    from toy_lm.errors import EnumerationTooLarge
    from toy_lm.tables import check_enumeration_size

    length = 1
    while length < limit:
        try:
            check_enumeration_size(vocab_size, length + 1)
        except EnumerationTooLarge:
            break
        length += 1
    return length


def bench_markov_vs_tree(
    vocab_size: int, num_states: int, repeats: int, max_length: int = 16
) -> dict:
    from toy_lm.engines.analysis import analyze_tree, choose_backend
    from toy_lm.engines.markov_analysis import analyze_markov, expand_to_tree
    from toy_lm.models.automata import automaton_harm_table
    from toy_lm.models.policies import MarkovPolicy

    length = largest_tree_length(vocab_size, max_length)
    logits, dfa = markov_instance(vocab_size, length, num_states - 2)
    analyze_markov(logits, dfa, lam=LAMBDA)  # warm-up (compile)
    dp_seconds = statistics.median(
        _timed(analyze_markov, logits, dfa, lam=LAMBDA)[0] for _ in range(repeats)
    )
    res = analyze_markov(logits, dfa, lam=LAMBDA)
    tables = [np.asarray(t) for t in MarkovPolicy(vocab_size, length).level_tables(logits[None])]
    harm = np.asarray(automaton_harm_table(dfa, length))
    backend = choose_backend(vocab_size, length)  # what `harm-horizon analyze` would run
    analyze_tree(tables, harm, lam=LAMBDA, backend=backend)  # warm-up (compile)
    tree_seconds, exact = _timed(analyze_tree, tables, harm, lam=LAMBDA, backend=backend)
    errors = [
        np.max(np.abs(a - b)) for a, b in zip(expand_to_tree(res.cond_harm, dfa), exact.cond_harm)
    ]
    errors += [
        np.max(np.abs(res.harm_information - exact.harm_information)),
        np.max(np.abs(res.equilibrium_kl - exact.equilibrium_kl)),
    ]
    return {
        "name": f"markov vs tree V={vocab_size} S={num_states} k=1 T={length}",
        "vocab_size": vocab_size,
        "length": length,
        "num_states": num_states,
        "sequences": vocab_size**length,
        "seconds": dp_seconds,
        "tree_seconds": tree_seconds,
        "tree_backend": backend,
        "ratio_tree_to_dp": tree_seconds / dp_seconds,
        "max_abs_error": float(max(errors)),
    }


def suite_markov(repeats: int, quick: bool, progress) -> list[dict]:
    lengths = (64, 256) if quick else MARKOV_LENGTHS
    vocab_size = 8 if quick else MARKOV_VOCAB
    states = 6 if quick else MARKOV_STATES
    rows = []
    for length in lengths:
        progress(f"markov V={vocab_size} S={states} T={length}")
        rows.append(bench_markov(vocab_size, length, states, repeats))
    progress(f"markov vs tree at V={vocab_size} (largest T the tree engine holds)")
    rows.append(bench_markov_vs_tree(vocab_size, states, repeats, 4 if quick else 16))
    return rows


def exact_per_position_kl(logits, ref_logits) -> np.ndarray:
    """``KL_t(π || π0)`` by one numpy pass over the levels (the exact baseline of the mc suite)."""

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    probs, out = np.ones(1), []
    for z, q in zip(logits, ref_logits):
        logp, logq = log_softmax(np.asarray(z)), log_softmax(np.asarray(q))
        pi = np.exp(logp)
        out.append(float(probs @ np.sum(pi * (logp - logq), axis=1)))
        probs = (probs[:, None] * pi).reshape(-1)
    return np.array(out)


def bench_mc(vocab_size: int, length: int, seed: int = 0, max_samples: int = 1 << 22) -> dict:
    import jax

    from toy_lm.engines import montecarlo as mc
    from toy_lm.models.policies import TabularPolicy

    policy = TabularPolicy(vocab_size, length)
    params, ref = policy.init(jax.random.key(seed)), policy.init(jax.random.key(seed + 1))
    tables = [np.asarray(t[0]) for t in params]
    ref_tables = [np.asarray(t[0]) for t in ref]
    exact_per_position_kl(tables, ref_tables)  # warm the caches
    exact_seconds, exact = _timed(exact_per_position_kl, tables, ref_tables)
    mc.kl_samples(jax.random.key(99), policy, params, policy, ref, MC_BATCH)  # compile
    total, total_sq, count, batch = np.zeros(length), np.zeros(length), 0, 0
    start = time.perf_counter()
    while True:
        terms = mc.kl_samples(jax.random.key(1000 + batch), policy, params, policy, ref, MC_BATCH)
        total += terms.sum(axis=0)
        total_sq += (terms**2).sum(axis=0)
        count += MC_BATCH
        batch += 1
        mean = total / count
        if np.max(np.abs(mean - exact) / exact) <= MC_TARGET or count >= max_samples:
            break
    mc_seconds = time.perf_counter() - start
    stderr = np.sqrt(np.maximum(total_sq / count - mean**2, 0) / (count - 1))
    return {
        "name": f"mc KL V={vocab_size} T={length}",
        "vocab_size": vocab_size,
        "length": length,
        "sequences": vocab_size**length,
        "seconds": mc_seconds,
        "exact_seconds": exact_seconds,
        "mc_samples": count,
        "max_rel_error": float(np.max(np.abs(mean - exact) / exact)),
        "max_rel_halfwidth_95": float(np.max(1.96 * stderr / exact)),
        "reached_target": bool(np.max(np.abs(mean - exact) / exact) <= MC_TARGET),
        "ratio_mc_to_exact": mc_seconds / exact_seconds,
    }


def suite_mc(repeats: int, quick: bool, progress) -> list[dict]:
    sizes = ((4, 6),) if quick else MC_SIZES
    rows = []
    for vocab_size, length in sizes:
        progress(f"mc V={vocab_size} T={length} ({vocab_size**length:.3g} responses)")
        runs = [bench_mc(vocab_size, length, seed=s) for s in range(repeats)]
        row = dict(runs[0])  # per-run fields of the first instance; medians below
        for key in ("seconds", "exact_seconds", "mc_samples", "ratio_mc_to_exact"):
            row[key] = statistics.median(r[key] for r in runs)
        row["repeats"] = len(runs)
        rows.append(row)
    return rows
