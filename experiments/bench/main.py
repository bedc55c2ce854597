"""``harm-horizon bench``: speed measured side by side in one run, printed as ratios.

Suite ``tree``: the full analysis (everything ``harm-horizon analyze --lam`` computes) on ``2**20``,
``2**22`` and ``2**24`` responses (``V=4, T=10..12`` and ``V=2, T=20..24``), reporting per size

* ``seconds``: median wall time of several runs (5 unless ``--repeats``) after a warm-up, with the
  default backend (``backend="xla"``: the level step of :mod:`toy_lm.engines.level_step` in jitted
  chunk kernels);
* ``xla_compile_seconds``: compiling those kernels from empty caches for that size;
* ``floor_seconds``: a memory-traffic floor measured in the same run - the time numpy takes to read
  every input array once (a sum) and write every output array once (a fill), the best of its runs;
* ``ratio_to_floor`` = seconds / floor_seconds;
* ``numba_seconds`` / ``numba_ratio_to_floor`` (only where the optional Numba extra is installed):
  the same analysis with ``backend="numba"``;
* ``resident_floor_seconds`` / ``ratio_to_resident_floor`` (and ``numba_ratio_to_resident_floor``):
  the floor with every output kept until the last one is written, as the analysis, which returns
  them all, must. Both fault in and zero every output's pages, but the plain floor frees each
  output before making the next and so never holds more than one; holding them all needs
  several times that memory at once, and on a VM whose host takes freed guest memory back (this
  one: ``page_reporting``) memory beyond what was freed moments ago must be backed afresh, at a
  cost from nothing to several seconds a gigabyte, varying by the minute;
* ``floor_system_seconds``, ``resident_floor_system_seconds``, ``system_seconds`` and
  ``numba_system_seconds``: the median system CPU seconds of each call (all threads of the
  process), where that cost shows: page faults and the zeroing of fresh pages;
* ``paired_ratio_to_floor`` (and ``numba_paired_ratio_to_floor``): the runs are interleaved - in
  each round the floor, the resident floor, then XLA, then Numba, back to back - and this is the
  median over rounds of the round's time over the round's floor. A shared VM's speed drifts by
  tens of percent within a minute, and a slow spell then slows both sides of a pair: in three
  runs (README, "Benchmarks") pairing shrank the worst run-to-run spread of a row (1.95x against
  3.11x for XLA) but not the typical one;
* ``compile_seconds`` (only with ``--compile``, and Numba installed): compiling the Numba kernels
  from scratch (every specialization; they do not depend on ``V`` or ``T``, so this is measured
  once per run and repeated in every row). Compiled Numba kernels are cached on disk: a user pays
  this once per install, and a run without ``--compile`` uses the cache (compiling once, with a
  progress line, if it is empty);
* ``ratio_to_reference`` = reference seconds / seconds, the speed-up of the default backend over
  the plain per-level numpy implementation of :mod:`toy_lm.engines.reference` (run once: it is slow).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from experiments.bench import best_seconds
from experiments.bench.gpu import suite_gpu
from experiments.bench.scale import suite_markov, suite_mc
from toy_lm.cli_output import Column, print_json, print_table, say
from toy_lm.errors import InputError
from toy_lm.outputs import null_nonfinite

__all__ = [
    "DEFAULT_REPEATS",
    "LAMBDA",
    "NO_SHORTCUT_SIZES",
    "SUITES",
    "TREE_SIZES",
    "bench_tree",
    "interleaved_seconds",
    "memory_floor",
    "output_shapes",
    "paired_ratio",
    "register",
    "run",
    "suite_distributed",
    "suite_sweep",
    "suite_tree",
]

TREE_SIZES = ((4, 10), (4, 11), (4, 12), (2, 20), (2, 22), (2, 24))
#: Sizes also timed without the horizon's shortcut: harm decided only at ``tau = T`` (no
#: determined prefix before the last level, so no level is skipped).
NO_SHORTCUT_SIZES = ((4, 12), (2, 24))
LAMBDA = 0.5


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmarks with ratios measured in the same run",
        description="Speed measured side by side in one run and printed as ratios: the tree "
        "analysis against a memory-traffic floor, the numpy reference and the XLA "
        "backend (tree); the DP engine (markov); Monte Carlo against exact (mc); "
        "devices (gpu).",
    )
    p.add_argument(
        "--suite",
        default="tree",
        choices=sorted(SUITES),
        help="which benchmark suite to run (default: tree)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of result objects")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per size (default 5 for tree, 3 for the other suites)",
    )
    p.add_argument("--quick", action="store_true", help="small sizes only (a smoke test)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="tree suite: also measure compiling the Numba kernels from scratch "
        "(needs the numba extra; about a minute on 2 cores; rewrites their "
        "on-disk cache)",
    )
    p.set_defaults(func=run)


def _instance(vocab_size, length, tau, seed=0):
    """Random level tables and a harm decided at level ``tau``."""
    rng = np.random.default_rng(seed)
    logits = [rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)]
    harm = np.repeat(
        (rng.random(vocab_size**tau) < 0.5).astype(np.float64), vocab_size ** (length - tau)
    )
    return logits, harm


def _touch(inputs, output_shapes, resident: bool = False):
    """One pass of the memory floor: read every input once, write every output once (``resident``:
    keep every output until the last one is written, as a call that returns them all must)."""

    def touch():
        for x in inputs:
            np.add.reduce(x, axis=None)
        kept = []
        for shape, dtype in output_shapes:
            if resident:
                kept.append(np.empty(shape, dtype))
                kept[-1].fill(0)
            else:
                np.empty(shape, dtype).fill(0)  # gone before the next one is made

    return touch


def memory_floor(inputs, output_shapes, repeats: int = 3, resident: bool = False) -> float:
    """Seconds numpy takes to read every input once and write every output once (best of runs;
    ``resident``: with every output kept until the last one is written)."""
    return best_seconds(_touch(inputs, output_shapes, resident), repeats)


def output_shapes(vocab_size, length):
    shapes = [((vocab_size**l,), np.float64) for l in range(length + 1)]  # H_l
    shapes += [((vocab_size**l,), np.bool_) for l in range(length + 1)]  # determined_l
    shapes += [((vocab_size**l, vocab_size), np.float64) for l in range(length)] * 2  # grad, eq
    return shapes


def _system_seconds() -> float:
    """System CPU seconds of this process so far, all threads (microseconds where ``resource``
    exists; ``os.times`` counts in clock ticks, 10 ms on Linux)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return os.times().system
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def interleaved_seconds(
    fns: dict, repeats: int, system: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Each of ``fns`` once as a warm-up, then ``repeats`` rounds calling each once, in order:
    the seconds of every call by name (round ``i`` at index ``i``). ``system``: a dict to fill,
    alike, with the system CPU seconds of the process (all threads) during each call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sys_start = _system_seconds()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if system is not None:
                system.setdefault(name, []).append(_system_seconds() - sys_start)
    return times


def paired_ratio(times: list[float], floors: list[float]) -> float:
    """The median over rounds of ``times[i] / floors[i]`` (see ``paired_ratio_to_floor``)."""
    return statistics.median(t / f for t, f in zip(times, floors, strict=True))


def bench_tree(
    vocab_size: int,
    length: int,
    repeats: int = 3,
    reference: bool = True,
    compile_seconds: float | None = None,
    numba: bool | None = None,
    tau: int | None = None,
) -> dict:
    """One row of the tree suite (see the module docstring for the fields); ``numba``: also time
    the Numba backend (default: where it is installed); ``tau``: the level where the harm is
    decided (default ``T // 2``; ``T`` is the no-shortcut case)."""
    import jax

    from toy_lm.engines.analysis import analyze_tree, compile_kernels, numba_available
    from toy_lm.engines.reference import reference_analysis

    numba = numba_available() if numba is None else numba
    tau = length // 2 if tau is None else tau
    logits, harm = _instance(vocab_size, length, tau)
    # Start from empty caches: otherwise a size whose kernels have the same shapes as an earlier
    # size's would report the time of a cache lookup instead of a compile.
    jax.clear_caches()
    xla_compile = compile_kernels(vocab_size, length, lam=True)
    shapes = output_shapes(vocab_size, length)
    runs = {
        "floor": _touch(logits + [harm], shapes),
        "resident_floor": _touch(logits + [harm], shapes, resident=True),
        "xla": lambda: analyze_tree(logits, harm, lam=LAMBDA, backend="xla"),
    }
    if numba:
        runs["numba"] = lambda: analyze_tree(logits, harm, lam=LAMBDA, backend="numba")
    system: dict[str, list[float]] = {}
    times = interleaved_seconds(runs, repeats, system)
    floor = min(times["floor"])
    resident = min(times["resident_floor"])
    seconds = statistics.median(times["xla"])
    row = {
        "name": f"tree V={vocab_size} T={length} tau={tau}",
        "vocab_size": vocab_size,
        "length": length,
        "tau": tau,
        "sequences": vocab_size**length,
        "backend": "xla",
        "seconds": seconds,
        "xla_compile_seconds": xla_compile,
        "floor_seconds": floor,
        "ratio_to_floor": seconds / floor,
        "paired_ratio_to_floor": paired_ratio(times["xla"], times["floor"]),
        "resident_floor_seconds": resident,
        "ratio_to_resident_floor": seconds / resident,
        "floor_system_seconds": statistics.median(system["floor"]),
        "resident_floor_system_seconds": statistics.median(system["resident_floor"]),
        "system_seconds": statistics.median(system["xla"]),
    }
    if numba:
        numba_seconds = statistics.median(times["numba"])
        row.update(
            numba_seconds=numba_seconds,
            numba_ratio_to_floor=numba_seconds / floor,
            numba_paired_ratio_to_floor=paired_ratio(times["numba"], times["floor"]),
            numba_ratio_to_resident_floor=numba_seconds / resident,
            numba_system_seconds=statistics.median(system["numba"]),
            **({} if compile_seconds is None else {"compile_seconds": compile_seconds}),
        )
    if reference:
        start = time.perf_counter()
        reference_analysis(logits, harm, lam=LAMBDA)
        ref_seconds = time.perf_counter() - start
        row.update(reference_seconds=ref_seconds, ratio_to_reference=ref_seconds / seconds)
    return row


def suite_tree(repeats: int, quick: bool, progress, measure_compile: bool = False) -> list[dict]:
    from toy_lm.engines.analysis import numba_available
    from toy_lm.progress import heartbeat

    sizes = ((4, 6), (2, 12)) if quick else TREE_SIZES
    no_shortcut = ((2, 12),) if quick else NO_SHORTCUT_SIZES
    compile_seconds = None
    numba = numba_available()
    if not numba:
        progress(
            "numba not installed: timing the XLA backend only (pip install "
            '"harm-horizon[numba]" for the Numba columns)'
        )
    elif measure_compile:
        from toy_lm.engines.analysis import compile_numba_kernels

        progress("compiling the Numba kernels from scratch (once; they serve every size)")
        with heartbeat("bench", "compiling the Numba kernels from scratch"):
            compile_seconds = compile_numba_kernels()
    else:
        from toy_lm.engines.cpu_kernels import cached_on_disk

        if not cached_on_disk():
            progress(
                "compiling the Numba kernels (no on-disk cache yet; about a minute on 2 cores)"
            )
    rows = []
    cases = [(v, t, None) for v, t in sizes] + [(v, t, t) for v, t in no_shortcut]
    for vocab_size, length, tau in cases:
        shortcut = "" if tau is None else " tau=T (no shortcut)"
        progress(f"tree V={vocab_size} T={length}{shortcut} ({vocab_size**length:.3g} responses)")
        rows.append(
            bench_tree(
                vocab_size,
                length,
                repeats,
                compile_seconds=compile_seconds,
                numba=numba,
                tau=tau,
            )
        )
    return rows


#: Timed runs per size when ``--repeats`` is not given. The tree suite's runs take well under a
#: second each; a median of 5 rides out the occasional stall of a shared 2-core VM (most likely
#: a vCPU descheduled for ~0.1 s, holding up both threads of a parallel level).
DEFAULT_REPEATS = {"tree": 5}


def suite_sweep(repeats: int, quick: bool, progress) -> list[dict]:
    """Runs per minute of ``harm-horizon sweep``, per-run vs vectorized
    (:mod:`experiments.bench.sweep`), and when Ray is installed a row with the same grid swept by
    the local pool and by Ray (:mod:`experiments.bench.ray_overhead`)."""
    import importlib.util

    from experiments.bench.sweep import bench_grid
    from experiments.bench.sweep import suite_sweep as run_suite

    rows = run_suite(repeats, quick, progress)
    if importlib.util.find_spec("ray") is not None:
        from experiments.bench.ray_overhead import ray_overhead

        rows.append(ray_overhead(bench_grid(quick), min(2, os.cpu_count() or 1), progress))
    return rows


def suite_distributed(repeats: int, quick: bool, progress) -> list[dict]:
    """The sharded engine on 1 process and on 2 (:mod:`experiments.bench.distributed`)."""
    from experiments.bench.distributed import suite_distributed as run_suite

    return run_suite(repeats, quick, progress)


SUITES = {
    "tree": suite_tree,
    "markov": suite_markov,
    "mc": suite_mc,
    "gpu": suite_gpu,
    "sweep": suite_sweep,
    "distributed": suite_distributed,
}


def run(args) -> int:
    repeats = DEFAULT_REPEATS.get(args.suite, 3) if args.repeats is None else args.repeats
    if repeats < 1:
        raise InputError(f"--repeats {repeats} must be at least 1")

    def progress(msg):
        say(f"[bench] {msg}")

    if args.compile and args.suite != "tree":
        raise InputError("--compile applies to --suite tree only")
    extra = {"measure_compile": True} if args.compile else {}
    rows = SUITES[args.suite](repeats, args.quick, progress, **extra)
    if args.json:
        print_json(null_nonfinite(rows))
    else:
        keys = [
            k
            for k in dict.fromkeys(k for row in rows for k in row)  # rows may differ
            if k not in ("vocab_size", "length")
        ]
        print_table(f"harm-horizon bench --suite {args.suite}", [Column(k, k) for k in keys], rows)
    return 0
