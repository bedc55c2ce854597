"""``harm-horizon check``: run every theorem check (or its negative controls) and print a table.

Thin entry point: parse options, build the instances (:func:`proofs_check.instances.builtin_suite`),
run (:func:`proofs_check.runner.run_checks`), print and optionally write JSON. Exit status 0 when
everything passes (or, with ``--negative-controls``, every planted error is detected), 1 otherwise,
2 on bad options.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time

from rich.markup import escape

from toy_lm.errors import InputError

POLICY_CHOICES = ("tabular", "positional", "markov", "transformer", "all")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="run the theorem checks T1-T11 (the main job)",
        description="Check every statement of THEORY.md section 3 on a suite of exact instances: "
                    "each check compares two independent computations within a tolerance "
                    "derived from float64 machine epsilon. With no options: every check on the "
                    "built-in suite (all parameterizations, several sizes, horizons and seeds).")
    p.add_argument("--theorem", nargs="+", metavar="ID",
                   help="checks to run, e.g. T3 T5 (T7 selects T7a-T7e; default: all)")
    p.add_argument("--policy", nargs="+", choices=POLICY_CHOICES, default=["all"],
                   help="parameterizations (default: all)")
    p.add_argument("--vocab", nargs="+", type=int, metavar="V", help="vocabulary sizes")
    p.add_argument("--length", nargs="+", type=int, metavar="T", help="response lengths")
    p.add_argument("--horizon", nargs="+", type=int, metavar="TAU",
                   help="harm horizons of the decided harms (each <= T)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds per setting (default 2; even seeds: binary harm, odd: soft)")
    p.add_argument("--first-seed", type=int, default=0, metavar="S",
                   help="first seed (default 0); use others for held-out instances")
    p.add_argument("--json", metavar="FILE", help="write one JSON record per check and instance")
    p.add_argument("--negative-controls", action="store_true",
                   help="run each check against its planted errors; fail unless all are detected")
    p.add_argument("--list", action="store_true", help="list the checks and their planted errors")
    p.set_defaults(func=run)


def _kinds(policies) -> tuple[str, ...]:
    from proofs_check.instances import POLICY_KINDS

    return POLICY_KINDS if "all" in policies else tuple(k for k in POLICY_KINDS if k in policies)


def _write_json(path: str, records) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(f"--json {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(records, fh, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _console():
    """stdout console; 140 columns when not a terminal (files, pipes, CI logs)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=140)


def _list(checks) -> int:
    from rich.table import Table

    from proofs_check.controls import PLANTS

    table = Table(title="checks (THEORY.md section 3) and their planted errors")
    for col in ("check", "statement", "planted errors"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.id, escape(c.statement),
                      escape("\n".join(f"{p}: {PLANTS[p].description}" for p in c.plants)))
    _console().print(table)
    return 0


def _fmt(x: float, kind: str = "exact") -> str:
    """A number for the table; statistical errors are in Bernstein radii, rate errors in slope."""
    text = f"{x:.2e}" if isinstance(x, float) and x == x else str(x)
    return text + {"statistical": " radii", "rate": " slope"}.get(kind, "")


def print_report(summaries, *, negative_controls: bool, console=None) -> None:
    """The result table (and, for checks, the measured shared-weight spill-over)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if negative_controls:
        table = Table(title="negative controls: every planted error must be flagged")
        for col in ("check", "planted error", "instances", "detected", "weakest detection", "tolerance",
                    "status"):
            table.add_column(col, justify="right" if col in ("instances", "detected") else "left",
                             no_wrap=col != "planted error")
        for s in summaries:
            table.add_row(s.check, escape(s.plant), str(s.instances), str(s.failed),
                          _fmt(s.worst.max_abs_error, s.worst.kind),
                          _fmt(s.worst.tolerance, s.worst.kind),
                          "[green]DETECTED[/]" if s.ok else "[red]MISSED[/]")
    else:
        table = Table(title="theorem checks (two independent computations each)")
        for col in ("check", "statement", "instances", "worst error", "tolerance", "status"):
            table.add_column(col, justify="right" if col == "instances" else "left",
                             no_wrap=col != "statement")
        for s in summaries:
            table.add_row(s.check, escape(s.statement), str(s.instances),
                          _fmt(s.worst.max_abs_error, s.worst.kind),
                          _fmt(s.worst.tolerance, s.worst.kind),
                          "[green]PASS[/]" if s.ok else f"[red]FAIL[/] ({s.failed})")
    console.print(table)


def print_spill_over(results, console=None) -> None:
    """Measured (not asserted) spill-over of shared-weight training beyond the horizon (T8)."""
    from rich.console import Console
    from rich.table import Table

    rows = [(r.instance, r.measurements["shared_weight_spill_over"]) for r in results
            if r.plant is None and "shared_weight_spill_over" in r.measurements]
    if not rows:
        return
    table = Table(title="measured, not asserted: training the shared weights themselves on L_λ "
                        f"({escape(rows[0][1]['optimizer'])}) moves the policy beyond the horizon (T8)")
    for col in ("instance", "max Σ_{t>τ*} KL_t", "max Σ_{t<=τ*} KL_t", "max |Δ log π| determined"):
        table.add_column(col, no_wrap=col != "instance")
    for name, m in rows:
        beyond = m["max_kl_beyond_horizon"]
        table.add_row(escape(name), "n/a (τ* = T)" if beyond is None else _fmt(beyond),
                      _fmt(m["max_kl_within_horizon"]), _fmt(m["max_determined_change"]))
    (console or Console()).print(table)


def run(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from proofs_check import instances as suite
    from proofs_check.registry import select
    from proofs_check.runner import plan, run_tasks, summarize
    from toy_lm.progress import heartbeat

    checks = select(args.theorem)
    if args.list:
        return _list(checks)
    if args.json:
        _write_json(args.json, [])  # fail early on an unwritable path, before the long run
    start = time.perf_counter()
    instances = suite.builtin_suite(
        _kinds(args.policy), vocab=args.vocab, length=args.length, horizon=args.horizon,
        seeds=suite.BUILTIN_SEEDS if args.seeds is None else args.seeds, first_seed=args.first_seed)
    tasks = plan(checks, instances, negative_controls=args.negative_controls)
    if not tasks:
        raise InputError("no check applies to the chosen instances; widen --theorem or the sizes")
    err = Console(stderr=True)
    console = _console()
    # Without a terminal the bar is not drawn: a heartbeat line every few seconds instead.
    pipe = (contextlib.nullcontext() if err.is_terminal
            else heartbeat("check", f"0/{len(tasks)} runs"))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar, pipe as beat:
        job = bar.add_task("checking", total=len(tasks))

        def advance(task, done):
            label = task.check.id + (f" [{task.plant}]" if task.plant else "")
            bar.update(job, advance=int(done),
                       description=escape(f"{label:>28} {task.instance.name:<33}"))
            if beat is not None:
                beat.update(f"{bar.tasks[job].completed:.0f}/{len(tasks)} runs ({label}, "
                            f"{task.instance.name})")

        results = run_tasks(tasks, advance)
    summaries = summarize(results)
    print_report(summaries, negative_controls=args.negative_controls, console=console)
    if not args.negative_controls:
        print_spill_over(results, console)
    bad = [s for s in summaries if not s.ok]
    what = "planted errors missed" if args.negative_controls else "checks failed"
    console.print(f"{len(results)} runs on {len(instances)} instances in "
                  f"{time.perf_counter() - start:.1f} s: "
                  + (f"[red]{len(bad)} {what}[/]" if bad else "[green]all good[/]"))
    if args.json:
        _write_json(args.json, [r.to_json() for r in results])
    return 1 if bad else 0
