"""``harm-horizon bench --suite distributed``: the sharded engine on 1 process and on 2.

Per size (``V = 2``, ``T = 20, 22, 24``; ``--quick``: ``T = 12``), with the tables in an
uncompressed ``.npz`` that every process maps (as ``analyze --distributed`` does), split level
``m = 1``:

* ``one_seconds``: one process running every subtree (:func:`toy_lm.engines.sharded.summarize_share`,
  median of warm runs, in a fresh process), and ``responses_per_second`` = ``V**T / one_seconds``;
* ``two_seconds``: two local processes joined by ``jax.distributed`` (gloo), each running half
  the subtrees then the one all-gather and the combine; the median over warm runs of process 0's
  wall time, split into ``two_local_seconds`` (its subtrees), ``two_gather_seconds`` (the
  all-gather, including any wait for the slower peer) and ``two_combine_seconds`` (the levels
  above the split and the per-level combine);
* ``overhead_ratio`` = ``two_seconds / one_seconds`` (1 would be no gain, 0.5 perfect halving);
* ``peak_rss_bytes_one`` / ``peak_rss_bytes_two``: the peak resident memory of the measuring
  process (of process 0 with two; the mapped tables count as they are read), next to ``share_bytes_one`` /
  ``share_bytes_two``, the guard's estimates (:func:`toy_lm.engines.sharded.share_bytes`);
* ``load_average``: the 1-minute load average when the row finished (the machine is shared).

Process start-up, joining and compiling are excluded from every time (each process runs once
before timing): they are paid once per run, not per response.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

__all__ = ["bench_distributed", "suite_distributed", "worker", "write_instance"]

SIZES = ((2, 20), (2, 22), (2, 24))
QUICK_SIZES = ((2, 12),)
SPLIT, LAMBDA = 1, 0.5


def write_instance(path: str, vocab_size: int, length: int, seed: int = 0) -> None:
    """A random tabular policy and a binary harm decided by the first ``T // 2`` tokens."""
    rng = np.random.default_rng(seed)
    tau = length // 2
    harm = np.repeat(
        (rng.random(vocab_size**tau) < 0.5).astype(np.float64), vocab_size ** (length - tau)
    )
    np.savez(
        path,
        harm=harm,
        **{f"logits_{l}": rng.normal(size=(vocab_size**l, vocab_size)) for l in range(length)},
    )


def _timed_share(path: str, index: int, count: int, repeats: int, gather) -> list[dict]:
    """Phase times of ``repeats`` warm runs of one process's share (one untimed run first)."""
    import jax

    from toy_lm.engines.sharded import make_mesh, plan, summarize_share
    from toy_lm.io import map_npz

    data = map_npz(path, [k for k in np.load(path).files])
    length = sum(k.startswith("logits_") for k in data)
    logits, vocab_size = [data[f"logits_{l}"] for l in range(length)], data["logits_0"].shape[1]
    share = plan(vocab_size, length, split=SPLIT, process_index=index, process_count=count)
    mesh = make_mesh(jax.local_devices())
    runs = []
    for _ in range(repeats + 1):
        marks = {}

        def timed_gather(tree, marks=marks):
            marks["gather"] = time.perf_counter()
            out = gather(tree)
            marks["combine"] = time.perf_counter()
            return out

        start = time.perf_counter()
        summarize_share(logits, data["harm"], share, mesh=mesh, lam=LAMBDA, gather=timed_gather)
        end = time.perf_counter()
        runs.append(
            {
                "seconds": end - start,
                "local_seconds": marks["gather"] - start,
                "gather_seconds": marks["combine"] - marks["gather"],
                "combine_seconds": end - marks["combine"],
            }
        )
    return runs[1:]


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(path: str, coordinator: str, index: int, count: int, repeats: int) -> None:
    """One of the two measuring processes; process 0 prints its phase times as JSON."""
    import jax

    from toy_lm.engines.distributed import all_gather, initialize
    from toy_lm.engines.sharded import local_gather

    jax.config.update("jax_enable_x64", True)
    if count > 1:
        initialize(coordinator, count, index, 120)
    runs = _timed_share(path, index, count, repeats, all_gather if count > 1 else local_gather)
    if index == 0:
        print(json.dumps({"runs": runs, "peak_rss_bytes": _peak_rss()}), flush=True)


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


def _measure(path: str, count: int, repeats: int) -> dict:
    """Process 0's phase times and peak memory, ``count`` measuring processes joined locally."""
    from toy_lm.engines.distributed import free_port

    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.bench.distributed",
                path,
                f"127.0.0.1:{port}",
                str(i),
                str(count),
                str(repeats),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    try:
        out = procs[0].communicate(timeout=3600)[0]
        for p in procs[1:]:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a measuring process failed: {[p.returncode for p in procs]}")
    return json.loads(out.strip().splitlines()[-1])


def bench_distributed(vocab_size: int, length: int, repeats: int, folder: str) -> dict:
    """One row of the suite (see the module docstring)."""
    from toy_lm.engines.sharded import share_bytes

    path = os.path.join(folder, f"tables_{vocab_size}_{length}.npz")
    write_instance(path, vocab_size, length)
    one, two = (_measure(path, count, repeats) for count in (1, 2))
    os.remove(path)
    responses = vocab_size**length
    one_seconds, two_seconds = _median(one["runs"], "seconds"), _median(two["runs"], "seconds")
    return {
        "name": f"distributed V={vocab_size} T={length}",
        "vocab_size": vocab_size,
        "length": length,
        "sequences": responses,
        "split": SPLIT,
        "one_seconds": one_seconds,
        "responses_per_second": responses / one_seconds,
        "two_seconds": two_seconds,
        **{
            f"two_{k}": _median(two["runs"], k)
            for k in ("local_seconds", "gather_seconds", "combine_seconds")
        },
        "overhead_ratio": two_seconds / one_seconds,
        "peak_rss_bytes_one": one["peak_rss_bytes"],
        "peak_rss_bytes_two": two["peak_rss_bytes"],
        "share_bytes_one": share_bytes(vocab_size, length, SPLIT, 1),
        "share_bytes_two": share_bytes(vocab_size, length, SPLIT, 2),
        "load_average": os.getloadavg()[0],
    }


def suite_distributed(repeats: int, quick: bool, progress) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="harm-horizon-bench-") as folder:
        for vocab_size, length in QUICK_SIZES if quick else SIZES:
            progress(
                f"distributed V={vocab_size} T={length} ({vocab_size**length:.3g} "
                "responses): 1 process, then 2"
            )
            rows.append(bench_distributed(vocab_size, length, repeats, folder))
    return rows


if __name__ == "__main__":  # a measuring process: PATH COORDINATOR INDEX COUNT REPEATS
    worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
