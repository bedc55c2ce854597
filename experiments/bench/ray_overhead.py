"""The Ray backend's overhead: one grid swept by the local process pool and by Ray, side by side.

The optional row of ``harm-horizon bench --suite sweep`` when Ray is installed. Both backends run
:func:`experiments.sweep.run_sweep` end to end into fresh folders (base models, batches, result
files, tables) with ``jobs`` workers, after one untimed local sweep has filled a compilation
cache of this benchmark's own, so that neither pays for compiling and both pay for loading the
programs into fresh workers. The Ray time includes starting and stopping the local Ray instance
(``ray_start_seconds`` and ``ray_stop_seconds`` apart): ``overhead_seconds`` = Ray total - local.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

from experiments import sweep, sweep_ray
from experiments.config import RunConfig
from toy_lm.compile_options import CACHE_ENV

__all__ = ["ray_overhead"]


def _timed_sweep(configs: list[RunConfig], out: str, jobs: int, **backend) -> float:
    start = time.perf_counter()
    sweep.run_sweep(configs, out, jobs=jobs, log=lambda _: None, **backend)
    return time.perf_counter() - start


def ray_overhead(configs: list[RunConfig], jobs: int, progress: Callable[[str], None]) -> dict:
    """Wall seconds of ``configs`` on the local pool and on a local Ray instance (see above)."""
    ray = sweep_ray.import_ray()
    if ray.is_initialized():
        raise RuntimeError(
            "the Ray benchmark starts its own local Ray instance; call it outside a Ray session"
        )
    previous = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory() as folder:
        os.environ[CACHE_ENV] = os.path.join(folder, "jax-cache")
        try:
            progress(f"ray overhead: warming the compilation cache ({len(configs)} runs, local)")
            _timed_sweep(configs, os.path.join(folder, "warm-up"), jobs)
            local = _timed_sweep(configs, os.path.join(folder, "local"), jobs)
            progress(f"ray overhead: local pool {local:.1f} s")
            start = time.perf_counter()
            with sweep_ray.ray_session(ray, None, jobs):
                started = time.perf_counter()
                on_ray = _timed_sweep(configs, os.path.join(folder, "ray"), jobs, backend="ray")
                stopping = time.perf_counter()
            stopped = time.perf_counter()
        finally:
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous
    total = stopped - start
    progress(
        f"ray overhead: Ray {total:.1f} s (start {started - start:.1f} s, sweep "
        f"{on_ray:.1f} s, stop {stopped - stopping:.1f} s)"
    )
    return {
        "name": f"sweep on ray vs local, {configs[0].name.split('-')[0]} "
        f"T={configs[0].world.length}",
        "runs": len(configs),
        "jobs": jobs,
        "local_seconds": local,
        "ray_seconds": total,
        "ray_start_seconds": started - start,
        "ray_sweep_seconds": on_ray,
        "ray_stop_seconds": stopped - stopping,
        "overhead_seconds": total - local,
        "ray_over_local": total / local,
    }
