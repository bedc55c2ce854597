"""The sharded tree engine across processes (``jax.distributed``): ``analyze --distributed``.

Each of ``N`` processes runs the sharded engine of :mod:`toy_lm.engines.sharded` on its local devices
over a contiguous share of the ``V**m`` subtrees rooted at the split level ``m`` (the first ``m``
tokens), reading only its share's rows of the tables (memory maps of the uncompressed ``.npz``).
Then one all-gather (gloo collectives on CPU) hands every process the subtrees' root values and
per-subtree level sums, from which each runs the ``m`` levels above the split and the one
combine of :func:`toy_lm.engines.sharded.level_totals`: the per-level results are bitwise those of the
one-process sharded engine at the same ``m``. Process 0 prints them and writes ``--out``.

Memory. Each process refuses, before it joins, a share whose estimate
(:func:`toy_lm.engines.sharded.share_bytes`) exceeds its budget (``$HARM_HORIZON_MEMORY_LIMIT`` or 80%
of available memory), so a tree one process refuses runs on enough processes. The per-prefix
tables (``H_l``, ``G_l``, masks) stay in the processes that computed them and are not written:
``--out`` holds the per-level results.

Failures end in one line, never a hang: a process waits ``--timeout`` seconds (default
:data:`JOIN_TIMEOUT_S`) for its peers to join (a given ``--timeout`` also bounds the whole
run); an error after joining is printed on one line and the process exits at once
(``os._exit``: the shutdown barrier would wait for peers that are gone). The local launcher (``--local-processes N``) stops the others when one
fails and reports that process's one-line error.

Launch. ``harm-horizon analyze T.npz --distributed --local-processes 2`` (one machine);
``--coordinator HOST:PORT --num-processes N --process-id I`` on each host; or no coordinator
arguments under SLURM, where ``jax.distributed.initialize()`` reads them from the environment
(README, "Distributed").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from toy_lm.cli_output import say
from toy_lm.errors import ConfigError, EnumerationTooLarge, HarmHorizonError, InputError
from toy_lm.tables import human_bytes, memory_budget

__all__ = ["all_gather", "check_share", "free_port", "initialize", "launch_local", "run_process"]

#: Seconds a process waits for its peers to join when ``--timeout`` is not given.
JOIN_TIMEOUT_S = 120


def check_share(
    vocab_size: int, length: int, split: int, processes: int, what: str, *, ref: bool = False
) -> int:
    """Refuse a share that would not fit this process's memory budget; returns its estimate."""
    from toy_lm.engines.sharded import share_bytes

    need, budget = share_bytes(vocab_size, length, split, processes, ref=ref), memory_budget()
    if need > budget:
        raise EnumerationTooLarge(
            f"{what} at V={vocab_size}, T={length} on {processes} process(es) needs about "
            f"{human_bytes(need)} per process (estimated, split level m={split}), more than the "
            f"{human_bytes(budget)} available (limit set by HARM_HORIZON_MEMORY_LIMIT); run it "
            "on more processes (--local-processes N, or more hosts)"
        )
    return need


def initialize(
    coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: float
) -> tuple[int, int]:
    """Join the run with ``jax.distributed`` (gloo collectives on CPU); ``(index, count)``.

    Without ``coordinator`` the cluster is detected from the environment (SLURM, ...).
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's own deadlines end the process with a fatal log and a stack trace: they are set past
    # the caller's watchdog (:func:`run_process`), which ends it first with one line.
    late = int(timeout_s) + 60
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            initialization_timeout=late,
            heartbeat_timeout_seconds=late,
        )
    except Exception as err:  # DEADLINE_EXCEEDED, a refused connection, no cluster found ...
        where = coordinator or "from the environment"
        reason = " ".join(str(err).split())[:300].rstrip(".")
        raise ConfigError(
            f"could not join the distributed run (coordinator {where}, process "
            f"{process_id} of {num_processes}): {reason}; give --coordinator "
            "HOST:PORT, or run under SLURM"
        ) from None
    return jax.process_index(), jax.process_count()


def all_gather(tree: dict) -> dict:
    """Every process's ``{name: array}`` stacked along a leading process axis (in process order)."""
    from jax.experimental import multihost_utils

    # gloo announces its connections on stdout ("[Gloo] Rank 0 is connected ..."), which would
    # corrupt process 0's --json: stdout points at stderr while the collective runs.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        return {k: np.asarray(v) for k, v in multihost_utils.process_allgather(tree).items()}
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _check_rows(logits, harm, ref_logits, plan) -> None:
    """The finite-logit and harm-range checks of the tables, on this process's rows only."""
    for name, tables in (("logits", logits), ("ref_logits", ref_logits)):
        if tables is None:
            continue
        for level in range(plan.split, plan.length):
            n = plan.vocab_size ** (level - plan.split)
            if not np.isfinite(tables[level][plan.first * n : (plan.first + plan.count) * n]).all():
                raise InputError(
                    f"{name}_{level} has non-finite entries (NaN or inf); logits must be finite"
                )
        for level in range(plan.split):
            if not np.isfinite(tables[level]).all():
                raise InputError(f"{name}_{level} has non-finite entries (NaN or inf)")
    n = plan.vocab_size ** (plan.length - plan.split)
    rows = np.asarray(harm[plan.first * n : (plan.first + plan.count) * n], np.float64)
    if not ((rows >= 0) & (rows <= 1)).all():  # NaN fails both
        raise InputError("harm has values outside [0, 1] (or NaN); rescale or clip it")


def _watchdog(seconds: float, label: str) -> threading.Timer:
    """End the process with one line after ``seconds`` (peers that never join, or a hang)."""

    def expire():
        say(
            f"harm-horizon analyze: error: {label}: no result after {seconds:g} s (a peer "
            "process failed, hangs or never joined; --timeout sets the limit); stopping"
        )
        os._exit(2)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def run_process(args, output) -> int:
    """One process of a distributed ``analyze`` (``output(result, V, T)`` prints and writes)."""
    from toy_lm.engines.sharded import split_level
    from toy_lm.io import map_npz, table_keys

    shapes, keys, ref_keys, vocab_size, length = table_keys(args.tables)
    timeout = JOIN_TIMEOUT_S if args.timeout is None else args.timeout
    count = args.num_processes
    if count is not None and args.split is not None:  # refuse before joining
        check_share(
            vocab_size, length, args.split, count, f"analyzing {args.tables}", ref=bool(ref_keys)
        )
    watchdog = None
    if count == 1:
        index = 0
    else:
        watchdog = _watchdog(timeout, f"process {args.process_id} of {count}")
        index, count = initialize(args.coordinator, count, args.process_id, timeout)
        if args.timeout is None:  # the default limits the join only
            watchdog.cancel()
    label = f"process {index} of {count}"
    try:
        import jax

        from toy_lm.engines.sharded import local_gather, make_mesh, plan, summarize_share

        mesh = make_mesh(jax.local_devices())
        split = (
            split_level(vocab_size, length, count * mesh.devices.size)
            if args.split is None
            else args.split
        )
        check_share(
            vocab_size, length, split, count, f"analyzing {args.tables}", ref=bool(ref_keys)
        )
        share = plan(vocab_size, length, split=split, process_index=index, process_count=count)
        data = map_npz(args.tables, keys + ref_keys + ["harm"])
        logits = [data[k] for k in keys]
        ref = [data[k] for k in ref_keys] or None
        _check_rows(logits, data["harm"], ref, share)
        result = summarize_share(
            logits,
            data["harm"],
            share,
            mesh=mesh,
            lam=args.lam,
            ref_logits=ref,
            gather=all_gather if count > 1 else local_gather,
        )
        if index == 0:
            say(
                f"[analyze] backend: sharded over {count} process(es) x {mesh.devices.size} "
                f"device(s) (xla, split level m={split})"
            )
            output(result, vocab_size, length)
    except BaseException as err:
        if count == 1:
            raise
        text = " ".join(str(err).split())[:400] or type(err).__name__
        if not isinstance(err, HarmHorizonError):
            text = f"{type(err).__name__}: {text}"
        say(f"harm-horizon analyze: error: {label}: {text}")
        sys.stdout.flush()
        os._exit(2)  # not the shutdown barrier: the peers may be gone
    if watchdog is not None:
        watchdog.cancel()
    return 0


def free_port() -> int:
    """A TCP port free on this machine now (for the local coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_error(path: str) -> str:
    with open(path, errors="replace") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    errors = [line.rsplit("error: ", 1)[-1] for line in lines if "error: " in line]
    return (errors or lines or ["(no message)"])[-1]


def launch_local(
    command: list[str], argv: list[str], processes: int, timeout_s: float | None = None
) -> int:
    """Run ``command <argv> --coordinator 127.0.0.1:PORT --num-processes N --process-id I``
    as ``N`` local processes (``command``: the program, e.g. ``harm-horizon``'s entry point as
    ``[python, "-m", module]``; this layer does not name it); process 0's stdout is this process's. One failure stops the rest
    and raises its one-line error; so does a run that outlives ``timeout_s`` (when given; plus a
    start-up allowance of :data:`JOIN_TIMEOUT_S`). Peers that never join are the processes' own
    watchdog's to report."""
    if processes < 1:
        raise ConfigError(f"--local-processes {processes}: need at least 1")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="harm-horizon-dist-") as folder:
        procs, logs = [], []
        for i in range(processes):
            log = os.path.join(folder, f"process{i}.err")
            logs.append(log)
            with open(log, "w") as err:
                procs.append(
                    subprocess.Popen(
                        command
                        + argv
                        + [
                            "--coordinator",
                            f"127.0.0.1:{port}",
                            "--num-processes",
                            str(processes),
                            "--process-id",
                            str(i),
                        ],
                        stdout=None if i == 0 else subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        deadline = (
            float("inf") if timeout_s is None else time.monotonic() + timeout_s + JOIN_TIMEOUT_S
        )
        failed = None
        try:
            while True:
                codes = [p.poll() for p in procs]  # every process, every round
                failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
                if failed is not None or all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    raise ConfigError(
                        f"the {processes} local processes gave no result within "
                        f"{timeout_s:g} s (--timeout) and {JOIN_TIMEOUT_S} s to "
                        "start; stopped them"
                    )
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if failed is not None:
            raise ConfigError(
                f"process {failed} of {processes} failed (exit "
                f"{procs[failed].returncode}): "
                + _last_error(logs[failed]).removeprefix(f"process {failed} of {processes}: ")
            )
        with open(logs[0], errors="replace") as fh:
            sys.stderr.write("".join(line for line in fh if not line.startswith("[Gloo]")))
    return 0
