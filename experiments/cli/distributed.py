"""``harm-horizon analyze --distributed``: the options and the two ways to run
(:mod:`toy_lm.engines.distributed`): launch ``--local-processes N`` here, or be one process of a run.

A distributed run prints the same table (or JSON) as ``analyze``; ``--out`` holds the per-level
results (:func:`summary_arrays`), not the per-prefix tables, which stay spread over the
processes that computed them.
"""

from __future__ import annotations

import sys

import numpy as np

from experiments.cli.analyze import report
from toy_lm.errors import InputError
from toy_lm.io import table_keys
from toy_lm.outputs import check_output

__all__ = ["check_options", "run", "summary_arrays"]

DISTRIBUTED_OPTIONS = (
    "local_processes",
    "coordinator",
    "num_processes",
    "process_id",
    "split",
    "timeout",
)


def check_options(args) -> None:
    """Refuse inconsistent ``--distributed`` options (one line each)."""
    given = [o for o in DISTRIBUTED_OPTIONS if getattr(args, o, None) is not None]
    if not args.distributed:
        if given:
            raise InputError(f"--{given[0].replace('_', '-')} needs --distributed")
        return
    if args.local_processes is not None and args.local_processes < 1:
        raise InputError(f"--local-processes {args.local_processes}: need at least 1")
    if args.local_processes is not None and (
        args.coordinator or args.num_processes is not None or args.process_id is not None
    ):
        raise InputError(
            "--local-processes starts the processes itself; give it without "
            "--coordinator, --num-processes and --process-id"
        )
    if args.num_processes is not None and args.num_processes < 1:
        raise InputError(f"--num-processes {args.num_processes}: need at least 1")
    if args.process_id is not None and not 0 <= args.process_id < (args.num_processes or 1):
        raise InputError(f"--process-id {args.process_id} must be in 0 ... --num-processes - 1")
    if args.coordinator is not None and not args.coordinator.rpartition(":")[2].isdigit():
        raise InputError(f"--coordinator {args.coordinator!r}: write HOST:PORT")
    if args.split is not None and args.split < 0:
        raise InputError(f"--split {args.split}: the split level must be >= 0")
    if args.timeout is not None and not args.timeout > 0:
        raise InputError(f"--timeout {args.timeout}: give a positive number of seconds")


def summary_arrays(result) -> dict[str, np.ndarray]:
    """The ``--out`` keys of a distributed run: the per-level results (no per-prefix tables)."""
    out = {
        "expected_harm": np.float64(result.expected_harm),
        "harm_information": result.harm_information,
        "horizon": np.int64(result.horizon),
        "grad_abs_sum": result.grad_abs_sum(),
        "determined_fraction": result.determined_fraction(),
    }
    for key in ("equilibrium_kl", "per_position_kl"):
        if getattr(result, key) is not None:
            out[key] = getattr(result, key)
    return out


def run(args) -> int:
    """``analyze --distributed``: launch local processes, or be one process of a run."""
    from toy_lm.engines import distributed

    if args.tables is None:
        raise InputError(
            "--distributed reads TABLES.npz (each process maps its rows); "
            "write a random instance with --random V T TAU --save-tables FILE"
        )
    if args.mi:
        raise InputError(
            "--mi is not available with --distributed (the sharded engine has no I_t^MI)"
        )
    if args.out is not None:
        check_output(args.out, flag="--out", tag="analyze", inputs=[args.tables])
    if args.local_processes is None:
        return distributed.run_process(
            args, lambda result, v, t: report(args, result, summary_arrays(result), v, t)
        )
    _, _, ref_keys, vocab_size, length = table_keys(args.tables)  # refuse here, before launching
    if args.split is not None:
        distributed.check_share(
            vocab_size,
            length,
            args.split,
            args.local_processes,
            f"analyzing {args.tables}",
            ref=bool(ref_keys),
        )
    argv = ["analyze", args.tables, "--distributed"]
    for flag in ("lam", "split", "timeout", "out"):
        if getattr(args, flag) is not None:
            argv += [f"--{flag}", str(getattr(args, flag))]
    argv += ["--json"] * args.json
    command = [sys.executable, "-m", "experiments.cli.main"]
    return distributed.launch_local(command, argv, args.local_processes, args.timeout)
