"""Sweeps on a Ray cluster: ``harm-horizon sweep CONFIG --backend ray [--address ADDR]``.

The same runs, result files and tables as the local process pool (:mod:`experiments.sweep`,
:mod:`experiments.batch_sweep`), with Ray tasks in place of pool workers:

* a task runs one vectorized batch (:class:`experiments.batch_sweep.Batch`: one compiled program
  for many runs), one run that does not vectorize (a transformer, a run alone in its program), or
  trains the base models of one SFT program;
* a task (:mod:`experiments.sweep_ray_tasks`) works in a scratch folder of its own node and sends
  its results (and base models) back; the driver writes them into the output folder with the
  local backend's writers (a temporary file, then a rename). Only the driver writes there, so the
  nodes need no shared file system, a dead task leaves nothing in it, and the result files of
  both backends are the same;
* a task whose worker dies is retried by Ray (``max_retries``: system failures only, not errors of
  the run); a task that still fails is re-submitted by the driver, at most :data:`RESUBMITS` times,
  then its runs count as failed and the same command runs them again, as it does the runs of a
  killed sweep (resuming is the local backend's: the runs without a result file).

Without an address a local Ray instance is started for the sweep and stopped after it
(``num_cpus = jobs``, no dashboard, no usage statistics, its temporary folder under ``/tmp`` and
removed afterwards); with ``--address`` (``host:port`` of a head node, or ``auto``) the sweep joins
that cluster, whose nodes need this package installed at the same version. Ray is imported here
only, when a Ray sweep starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable

from experiments import batch_runs, batch_sweep
from experiments.config import RunConfig, config_from_dict, config_to_dict
from experiments.sweep import format_seconds, missing_bases
from experiments.sweep_ray_tasks import base_task, bases_task, batch_task, fresh_folder, run_task
from experiments.train import base_cache_path, result_path, run_id, write_json_atomic
from toy_lm.errors import ConfigError
from toy_lm.outputs import write_atomic
from toy_lm.tables import memory_budget

__all__ = ["check_address", "execute", "import_ray", "ray_session"]

#: The fix named when Ray is missing.
INSTALL = 'pip install "harm-horizon[ray]"'
#: Ray's retries of a task whose worker or node died (system failures; errors of a run are not
#: retried: they fail the same way again).
MAX_RETRIES = 3
#: Re-submissions by the driver of a task that Ray gave up on; then its runs count as failed.
RESUBMITS = 2
#: Seconds to wait for the head node's port before refusing ``--address``.
CONNECT_TIMEOUT = 5.0
#: Ray's switch for usage statistics, off for the local instances started here.
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
#: Object store of a local instance: results and base models of a few batches at a time.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def import_ray():
    """The ``ray`` module, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import ray
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "ray":
            raise
        raise ConfigError(
            f"--backend ray needs Ray, which is not installed; install it with {INSTALL}"
        ) from None
    return ray


def check_address(address: str) -> None:
    """Refuse at once an ``--address`` whose head node does not answer (Ray itself keeps retrying
    for tens of seconds); ``auto`` is left to Ray."""
    if address == "auto":
        return
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(
            f"--address {address!r} is not host:port (the address `ray start "
            "--head` prints) or auto"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"cannot reach a Ray cluster at --address {address} ({reason}); start "
            "one with `ray start --head` and pass the address it prints, or leave "
            "out --address to start a local Ray instance"
        ) from None


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _init(ray, **options) -> None:
    """``ray.init(**options)``. Ray starts its processes with a preexec_fn, so Python runs its
    fork hooks, and JAX's (when JAX runs in this process) warns that a forked child may deadlock
    on JAX's threads: each of Ray's children execs at once and runs no JAX code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        ray.init(**options)


@contextlib.contextmanager
def ray_session(ray, address: str | None, jobs: int):
    """Ray for one sweep: a caller's running session as it is, the cluster at ``address``, or a
    local instance of ``jobs`` CPUs; whatever this opened is shut down at the end."""
    if ray.is_initialized():
        yield
        return
    quiet = {"log_to_driver": False, "configure_logging": False}
    if address is not None:
        check_address(address)
        try:
            _init(ray, address=address, **quiet)
        except Exception as err:  # Ray's own types vary (connection, authentication, version)
            raise ConfigError(
                f"cannot join the Ray cluster at --address {address}: "
                f"{_one_line(err)} (a cluster with token authentication needs "
                "RAY_AUTH_MODE=token and its token, in RAY_AUTH_TOKEN or "
                "~/.ray/auth_token, as any Ray driver does)"
            ) from None
        temp = None
    else:
        # /tmp, not the output folder: Ray's socket paths must stay under 108 characters
        temp = fresh_folder("harm-horizon-ray-", "/tmp")
        previous = os.environ.get(USAGE_STATS_ENV)
        os.environ[USAGE_STATS_ENV] = "0"  # read by ray.init and the processes it starts
        try:
            _init(
                ray,
                num_cpus=jobs,
                include_dashboard=False,
                _temp_dir=temp,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                **quiet,
            )
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        finally:
            if previous is None:
                os.environ.pop(USAGE_STATS_ENV, None)
            else:
                os.environ[USAGE_STATS_ENV] = previous
    try:
        yield
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


class _Driver:
    """Submits tasks, collects them as they finish, re-submits failed ones (bounded), and writes
    what comes back into ``out``."""

    def __init__(self, ray, out: str, log: Callable[[str], None]):
        self.ray, self.out, self.log = ray, out, log

    def gather(
        self,
        name: str,
        fn: Callable,
        tasks: list[tuple],
        describe: Callable[[int], str],
        done: Callable[[int, object], None],
    ) -> list[tuple[int, str]]:
        """Run ``fn(*args)`` as a Ray task (named ``name``) for each ``args`` of ``tasks``, calling
        ``done(index, value)`` in the driver as each finishes; returns ``(index, error)`` of the
        tasks that failed :data:`RESUBMITS` + 1 times."""
        remote = self.ray.remote(fn).options(
            name=name, num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        pending = {remote.remote(*args): (index, 0) for index, args in enumerate(tasks)}
        lost = []
        try:
            while pending:
                ready, _ = self.ray.wait(list(pending), num_returns=1)
                index, attempt = pending.pop(ready[0])
                try:
                    value = self.ray.get(ready[0])
                except self.ray.exceptions.RayError as err:
                    cause = getattr(err, "cause", None)
                    reason = _one_line(
                        f"{type(cause).__name__}: {cause}"
                        if cause is not None
                        else f"{type(err).__name__}: {err}"
                    )
                    if attempt < RESUBMITS:
                        self.log(
                            f"{describe(index)} failed ({reason}); re-submitted (attempt "
                            f"{attempt + 2} of {RESUBMITS + 1})"
                        )
                        pending[remote.remote(*tasks[index])] = (index, attempt + 1)
                    else:
                        lost.append((index, f"Ray task failed {RESUBMITS + 1} times: {reason}"))
                    continue
                done(index, value)
        except BaseException:
            for ref in pending:  # Ctrl-C or an error here: finished runs are on disk already
                self.ray.cancel(ref, force=True)
            raise
        return lost

    def write_bases(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = os.path.join(self.out, "bases", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, lambda fh, data=data: fh.write(data), tag="base")

    def read_bases(self, configs: list[RunConfig]) -> dict[str, bytes]:
        """The cached base model files that ``configs`` need (those that exist)."""
        files = {}
        for path in sorted({base_cache_path(self.out, c) for c in configs}):
            if os.path.exists(path):
                with open(path, "rb") as fh:
                    files[os.path.basename(path)] = fh.read()
        return files


def execute(
    todo: list[RunConfig],
    out: str,
    jobs: int,
    log: Callable[[str], None],
    per_run: bool = False,
    batch_size: int | None = None,
    address: str | None = None,
) -> list[str]:
    """Run ``todo`` on Ray into ``out``; returns the failures (``"run id: message"``).

    Args:
      todo: the configurations to run (those without a result file).
      out: the sweep's output folder, written by this process only.
      jobs: CPUs of a local instance; with ``address``, the batches are planned for the cluster's
        CPUs and each batch's memory for ``jobs`` of them per machine.
      log: progress sink.
      per_run: every run as its own task (the reference path) instead of vectorized batches.
      batch_size: most runs per vectorized batch.
      address: a Ray cluster to join (``host:port`` or ``auto``); None starts a local instance.
    """
    ray = import_ray()
    with ray_session(ray, address, jobs):
        cpus = int(ray.cluster_resources().get("CPU", jobs))
        log(f"ray: {'joined ' + address if address else 'local instance'}, {cpus} CPU(s)")
        driver = _Driver(ray, out, log)
        if per_run:
            groups, single = [], list(todo)
        else:
            groups, single, reasons = batch_sweep.split_vectorizable(todo)
            for reason in reasons:
                log(f"not vectorized: {reason}")
        failures = _vectorized(driver, groups, jobs, cpus, batch_size) if groups else []
        if single:
            failures += _one_by_one(driver, single)
    return failures


def _vectorized(
    driver: _Driver, groups: list[list[RunConfig]], jobs: int, cpus: int, batch_size: int | None
) -> list[str]:
    out, log = driver.out, driver.log
    runs = [c for g in groups for c in g]
    base_groups = batch_sweep.missing_base_groups(runs, out)
    if base_groups:
        log(f"training {sum(map(len, base_groups))} base model(s) in {len(base_groups)} program(s)")

        def bases_done(_, value):
            report, files = value
            driver.write_bases(files)
            log(
                f"{report.runs} base model(s) ready in {report.seconds:.1f} s (compile "
                f"{report.compile_seconds:.1f} s)"
            )

        driver.gather(
            "harm-horizon-bases",
            bases_task,
            [(g,) for g in base_groups],
            lambda i: f"base models of program {i + 1}",
            bases_done,
        )
    failures = [
        f"{run_id(c)}: its base model could not be trained"
        for c in runs
        if not os.path.exists(base_cache_path(out, c))
    ]
    groups = [[c for c in g if os.path.exists(base_cache_path(out, c))] for g in groups]
    groups = [g for g in groups if g]
    if not groups:
        return failures
    budget = memory_budget() // max(jobs, 1)
    batches = batch_sweep.plan_batches(groups, cpus, batch_size, budget)
    total = sum(len(b.configs) for b in batches)
    log(
        f"vectorized: {total} runs in {len(groups)} program(s), {len(batches)} batch(es) of up "
        f"to {max(b.size for b in batches)} runs"
    )
    tasks = [
        (b, budget, driver.read_bases([config_from_dict(c) for c in b.configs])) for b in batches
    ]
    start, finished = time.perf_counter(), [0, 0]

    def batch_done(_, value):
        report, results = value
        batch_runs.write_results_atomic(out, results)
        finished[0] += 1
        finished[1] += report.runs
        elapsed = time.perf_counter() - start
        eta = elapsed / finished[1] * (total - finished[1])
        log(
            f"[{finished[0]}/{len(batches)}] batch of {report.runs} runs done in "
            f"{format_seconds(report.seconds)} (compile {report.compile_seconds:.1f} s); "
            f"{finished[1]}/{total} runs; elapsed {format_seconds(elapsed)}, ETA "
            f"{format_seconds(eta)}"
        )
        failures.extend(report.failures)

    lost = driver.gather(
        "harm-horizon-batch",
        batch_task,
        tasks,
        lambda i: f"batch {i + 1} of {len(batches)}",
        batch_done,
    )
    for index, error in lost:
        failures += [f"{run_id(config_from_dict(c))}: {error}" for c in batches[index].configs]
    return failures


def _one_by_one(driver: _Driver, todo: list[RunConfig]) -> list[str]:
    out, log = driver.out, driver.log
    bases = missing_bases(todo, out)
    if bases:
        log(f"training {len(bases)} base model(s)")

        def base_done(_, files):
            driver.write_bases(files)
            log(f"base model {', '.join(files)} ready")

        driver.gather(
            "harm-horizon-base",
            base_task,
            [(config_to_dict(c),) for c in bases],
            lambda i: f"base model {i + 1} of {len(bases)}",
            base_done,
        )
    failures = []
    start, count = time.perf_counter(), [0]

    def run_done(index, value):
        seconds, error, result = value
        cfg = todo[index]
        if result is not None:
            write_json_atomic(result_path(out, cfg), result)
        count[0] += 1
        elapsed = time.perf_counter() - start
        eta = elapsed / count[0] * (len(todo) - count[0])
        status = f"FAILED: {error}" if error else f"done in {format_seconds(seconds)}"
        log(
            f"[{count[0]}/{len(todo)}] {run_id(cfg)} {status}; elapsed "
            f"{format_seconds(elapsed)}, ETA {format_seconds(eta)}"
        )
        if error:
            failures.append(f"{run_id(cfg)}: {error}")

    tasks = [(config_to_dict(c), driver.read_bases([c])) for c in todo]
    lost = driver.gather(
        "harm-horizon-run", run_task, tasks, lambda i: f"run {run_id(todo[i])}", run_done
    )
    failures += [f"{run_id(todo[i])}: {error}" for i, error in lost]
    return failures
