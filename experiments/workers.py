"""The worker processes of a sweep: one set-up for the per-run pool and the vectorized pool.

Every sweep computation runs in a worker process started by :func:`init_pool_worker`, which

- ignores SIGINT (the sweep process handles Ctrl-C, ends the pool and prints one line; a
  worker that took the signal itself printed the start of a traceback);
- dies with the sweep process (``PR_SET_PDEATHSIG`` on Linux and a parent-pid watchdog
  everywhere), so a killed sweep leaves no worker behind;
- pins itself to its own share of the cores (:func:`worker_cores`);
- runs XLA with :data:`WORKER_XLA_FLAGS`, float64 and the persistent compilation cache.

Why pinned: on the 2-core CPU, two vectorized workers each running a 256-run batch of the quick
preset (warm, same program) took 5.5-6.3 s each unpinned and 4.3-4.5 s each pinned to a core of
their own, side by side in one session; one worker alone takes 2.9-3.6 s unpinned (its XLA runtime
threads use part of the other core). Unpinned, the two workers' threads migrate between the cores
and get in each other's way.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

from toy_lm.compile_options import enable_compilation_cache

__all__ = [
    "WORKER_XLA_FLAGS",
    "die_with_parent",
    "init_pool_worker",
    "init_worker",
    "usable_cores",
    "worker_cores",
    "worker_pool",
]

#: XLA settings of the worker processes: one thread each, so that parallel workers share the cores
#: instead of competing for them. Every sweep computation runs in such a worker (even with one
#: job), so a sweep's numbers do not depend on --jobs; a run made in a process with other
#: settings (``harm-horizon train``) agrees with them to rounding (about 1e-15).
WORKER_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def worker_cores(index: int, workers: int, cores) -> set[int] | None:
    """The cores worker ``index`` of a pool of ``workers`` runs on: every ``workers``-th of
    ``cores`` (sorted) from ``index``, so the workers' sets are disjoint and cover ``cores``; or
    ``None`` (leave the worker where it is) for a pool of one, or of more workers than cores.

    >>> worker_cores(0, 2, {0, 1}), worker_cores(1, 2, {0, 1})
    ({0}, {1})
    >>> worker_cores(1, 2, range(8))
    {1, 3, 5, 7}
    >>> worker_cores(0, 1, {0, 1}) is None, worker_cores(0, 3, {0, 1}) is None
    (True, True)
    """
    cores = sorted(cores)
    if workers < 2 or workers > len(cores):
        return None
    return set(cores[index % workers :: workers])


def usable_cores() -> int:
    """How many cores this process may run on (its affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _pin(slots, workers: int) -> None:
    """Pin this process to :func:`worker_cores` of the next slot of ``slots`` (a shared
    ``multiprocessing.Value`` counter). Only speed depends on it, so nothing here may fail a
    worker (a pool whose initializer raises starts new workers forever): a worker that replaces
    a dead one (slot ``>= workers``), or one the system does not let choose its cores, runs
    where it is."""
    if slots is None or not hasattr(os, "sched_setaffinity"):
        return
    with slots.get_lock():
        index = slots.value
        slots.value += 1
    if index >= workers:
        return
    try:
        cores = worker_cores(index, workers, os.sched_getaffinity(0))
        if cores:
            os.sched_setaffinity(0, cores)
    except OSError:  # a sandbox that forbids it, a cpuset that changed meanwhile
        pass


def die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the worker processes
    """End this worker when the sweep process ``parent`` ends (SIGKILL included)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        pass  # not Linux (Windows: CDLL(None) is a TypeError): the watchdog does it within a second

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def init_worker(flags: str = WORKER_XLA_FLAGS) -> None:
    """The XLA side of a worker: ``flags`` added to ``$XLA_FLAGS`` (before JAX starts its
    backend), float64, the persistent compilation cache. Ray's tasks use this alone."""
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    from toy_lm.precision import require_x64

    enable_compilation_cache()
    require_x64()


def init_pool_worker(
    parent: int, slots=None, workers: int = 1, flags: str = WORKER_XLA_FLAGS
) -> None:  # pragma: no cover - runs in the worker processes
    """Initializer of a sweep's ``multiprocessing`` pool (see the module docstring): ``parent``
    the sweep's pid, ``slots`` a shared counter (``ctx.Value("i", 0)``) giving each worker its
    index, ``workers`` the pool's size."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    die_with_parent(parent)
    _pin(slots, workers)
    init_worker(flags)


def worker_pool(workers: int, flags: str = WORKER_XLA_FLAGS):
    """A ``spawn`` pool of ``workers`` processes set up by :func:`init_pool_worker` (the caller
    is the parent they die with; each takes its slot from a counter shared by the pool)."""
    ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(workers, init_pool_worker, (os.getpid(), ctx.Value("i", 0), workers, flags))
