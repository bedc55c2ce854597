"""``harm-horizon check``: run every theorem check (or its negative controls) and print a table.

Thin entry point: parse options, build the instances (:func:`proofs_check.instances.builtin_suite`),
run (:func:`proofs_check.runner.run_checks`), print and optionally write JSON. Exit status 0 when
everything passes (or, with ``--negative-controls``, every planted error is detected), 1 otherwise,
2 on bad options.
"""

from __future__ import annotations

import contextlib
import time

from rich.markup import escape

from proofs_check.ids import CHECK_IDS, unknown
from toy_lm.bounds import MAX_SEED, check_count
from toy_lm.cli_output import console as cli_console
from toy_lm.cli_output import make_table, say
from toy_lm.errors import InputError
from toy_lm.outputs import check_output, null_nonfinite, write_json

__all__ = [
    "ENGINE_CHOICES",
    "MAX_SEEDS",
    "POLICY_CHOICES",
    "print_report",
    "print_spill_over",
    "register",
    "run",
    "run_mutants",
]

#: toy_lm.models.policy_factory.POLICY_KINDS and "all", spelled out: parsing must not import JAX
#: (tests/test_policy_factory.py holds the two lists equal).
POLICY_CHOICES = ("tabular", "positional", "markov", "transformer", "mlp", "all")
ENGINE_CHOICES = ("tree", "analysis", "xla", "markov", "all")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help="run the theorem checks T1-T14 on every engine (the main job)",
        description="Check every statement of THEORY.md section 3 on a suite of exact instances: "
        "each check compares two independent computations within a tolerance "
        "derived from float64 machine epsilon. With no options: every check on the "
        "built-in suite (all parameterizations, several sizes, horizons and seeds).",
    )
    p.add_argument(
        "--theorem",
        nargs="+",
        metavar="ID",
        help="checks to run, e.g. T3 T5 (T7 selects T7a-T7e; default: all)",
    )
    p.add_argument(
        "--policy",
        nargs="+",
        choices=POLICY_CHOICES,
        default=["all"],
        help="parameterizations (default: all)",
    )
    p.add_argument("--vocab", nargs="+", type=int, metavar="V", help="vocabulary sizes")
    p.add_argument("--length", nargs="+", type=int, metavar="T", help="response lengths")
    p.add_argument(
        "--horizon",
        nargs="+",
        type=int,
        metavar="TAU",
        help="harm horizons of the decided harms (each <= T)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="seeds per setting (default 2; even seeds: binary harm, odd: soft)",
    )
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        metavar="S",
        help="first seed (default 0); use others for held-out instances",
    )
    p.add_argument("--json", metavar="FILE", help="write one JSON record per check and instance")
    p.add_argument(
        "--negative-controls",
        action="store_true",
        help="run each check against its planted errors; fail unless all are detected",
    )
    p.add_argument("--list", action="store_true", help="list the checks and their planted errors")
    p.add_argument(
        "--engine",
        nargs="+",
        choices=ENGINE_CHOICES,
        default=["all"],
        help="engines whose outputs the engine-reading checks compare: tree (the readable "
        "functions), analysis (analyze_tree, Numba), xla (analyze_tree, XLA chunks), "
        "markov (the DP, on Markov x automaton instances); default: all available",
    )
    p.add_argument(
        "--mutants",
        nargs="*",
        metavar="NAME",
        default=None,
        help="plant each engine mutant (proofs_check.mutants; or only the named ones) and "
        "report which checks kill it by a failed comparison; fail if one survives",
    )
    p.set_defaults(func=run)


def _engines(chosen) -> tuple[str, ...]:
    """The engines to check; ``all`` means every engine available on this machine."""
    from proofs_check.engines import ENGINES, available_engines

    if "all" in chosen:
        left_out = [e for e in ENGINES if e not in available_engines()]
        if left_out:  # say so: a table without the engine must not read as checked on it
            say(
                f"[check] engine {', '.join(left_out)} left out: it needs numba "
                '(pip install "harm-horizon[numba]")'
            )
        return available_engines()
    missing = [e for e in chosen if e not in available_engines()]
    if missing:
        raise InputError(
            f"--engine {' '.join(missing)}: not available here (the analysis engine "
            'needs numba: pip install "harm-horizon[numba]")'
        )
    return tuple(e for e in ENGINES if e in chosen)


def run_mutants(args) -> int:
    """``check --mutants``: every engine mutant against the checks that read what it changes."""

    from proofs_check.mutants import MUTANTS
    from proofs_check.mutants import run_mutants as run_all

    start = time.perf_counter()
    err = cli_console(stderr=True)

    def progress(mutant, done):
        if not done:
            err.print(
                f"[{time.perf_counter() - start:6.0f} s] mutant {escape(mutant.name)} ...",
                highlight=False,
            )

    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.mutants if n not in known]
    if unknown:
        raise InputError(
            f"--mutants {' '.join(unknown)}: no such mutant; choose from {', '.join(known)}"
        )
    reports = run_all([known[n] for n in args.mutants] if args.mutants else MUTANTS, progress)
    table = make_table(
        "engine mutants: each must be killed by a failed comparison with an "
        "independent side (an exception is not a kill)"
    )
    for col in ("mutant", "bug", "size", "killed by", "status"):
        table.add_column(col, no_wrap=col in ("mutant", "size", "status"))
    colour = {"KILLED": "green", "EQUIVALENT": "yellow"}
    for r in reports:
        killed = ", ".join(r.killed_by) or "-"
        note = r.equivalent if r.status == "EQUIVALENT" else "; ".join(r.errors)[:200]
        table.add_row(
            escape(r.name),
            escape(r.description + (f" [{note}]" if note else "")),
            f"{r.size:.1e}" if r.size == r.size else "—",
            escape(killed),
            f"[{colour.get(r.status, 'red')}]{r.status}[/]",
        )
    console = cli_console()
    console.print(table)
    live = [r for r in reports if not r.equivalent]
    killed = sum(r.status == "KILLED" for r in live)
    console.print(
        f"mutation score {killed}/{len(live)} (equivalent mutants excluded: "
        f"{len(reports) - len(live)}) in {time.perf_counter() - start:.0f} s"
    )
    if args.json:
        _write_json(args.json, [r.to_json() for r in reports])
    return 0 if killed == len(live) else 1


def _kinds(policies) -> tuple[str, ...]:
    from toy_lm.models.policy_factory import POLICY_KINDS

    return POLICY_KINDS if "all" in policies else tuple(k for k in POLICY_KINDS if k in policies)


def _write_json(path: str, records) -> None:
    write_json(path, null_nonfinite(records), tag="check", flag="--json", indent=1)


#: Bounds of the size options: V**T <= 1024 responses (instances.MAX_RESPONSES) caps V and T.
MAX_SEEDS = 1000


def _check_bounds(args) -> None:
    """Refuse out-of-range sizes and empty check ids before any instance is built."""
    for theorem in args.theorem or []:
        if not theorem.strip():
            raise InputError("--theorem got an empty id; give ids such as T3 T5 (see --list)")
    missing = unknown(args.theorem or [])
    if missing is not None:
        raise InputError(f"--theorem {missing}: no such check; choose from {', '.join(CHECK_IDS)}")
    for flag, values, low, high in (
        ("--vocab", args.vocab, 2, 1024),
        ("--length", args.length, 1, 10),
        ("--horizon", args.horizon, 0, 10),
    ):
        for value in values or []:
            check_count(value, flag, low, high, why="the checks enumerate V**T <= 1024 responses")
    if args.seeds is not None:
        check_count(args.seeds, "--seeds", 1, MAX_SEEDS)
    check_count(args.first_seed, "--first-seed", 0, MAX_SEED - MAX_SEEDS)


def _list(checks) -> int:
    from proofs_check.controls import PLANTS

    table = make_table("checks (THEORY.md section 3) and their planted errors")
    for col in ("check", "statement", "planted errors"):
        table.add_column(col)
    for c in checks:
        table.add_row(
            c.id,
            escape(c.statement),
            escape("\n".join(f"{p}: {PLANTS[p].description}" for p in c.plants)),
        )
    cli_console().print(table)
    return 0


def _fmt(x: float, kind: str = "exact") -> str:
    """A number for the table; statistical errors are in Bernstein radii, rate errors in slope."""
    text = f"{x:.2e}" if isinstance(x, float) and x == x else str(x)
    return text + {"statistical": " radii", "rate": " slope"}.get(kind, "")


def print_report(summaries, *, negative_controls: bool, console=None) -> None:
    """The result table (and, for checks, the measured shared-weight spill-over)."""
    console = console or cli_console()
    colour = {"PASS": "green", "DETECTED": "green", "N/A": "yellow"}
    if negative_controls:
        table = make_table(
            "negative controls: every planted error must be flagged by a failed "
            "comparison (an exception is not a detection)"
        )
        for col in (
            "check",
            "planted error",
            "instances",
            "detected",
            "weakest detection",
            "tolerance",
            "status",
        ):
            table.add_column(
                col,
                justify="right" if col in ("instances", "detected") else "left",
                no_wrap=col != "planted error",
            )
        for s in summaries:
            table.add_row(
                s.check,
                escape(s.plant),
                str(s.instances),
                str(s.failed),
                _fmt(s.worst.max_abs_error, s.worst.kind),
                _fmt(s.worst.tolerance, s.worst.kind),
                f"[{colour.get(s.status, 'red')}]{s.status}[/]"
                + (f" ({s.errors} raised)" if s.errors else ""),
            )
    else:
        table = make_table("theorem checks (two independent computations each)")
        for col in (
            "check",
            "statement",
            "instances",
            "compared",
            "worst error",
            "tolerance",
            "dtype",
            "status",
        ):
            table.add_column(
                col,
                justify="right" if col in ("instances", "compared") else "left",
                no_wrap=col != "statement",
            )
        for s in summaries:
            count = "" if s.status == "PASS" else f" ({s.failed + s.errors})"
            table.add_row(
                s.check,
                escape(s.statement),
                str(s.instances) + (f" ({s.na} n/a)" if s.na else ""),
                str(s.comparisons),
                _fmt(s.worst.max_abs_error, s.worst.kind),
                _fmt(s.worst.tolerance, s.worst.kind),
                s.worst.dtype,
                f"[{colour.get(s.status, 'red')}]{s.status}[/]{count if s.status in ('FAIL', 'ERROR') else ''}",
            )
    console.print(table)


def print_spill_over(results, console=None) -> None:
    """Measured (not asserted) spill-over of shared-weight training beyond the horizon (T8)."""
    rows = [
        (r.instance, r.measurements["shared_weight_spill_over"])
        for r in results
        if r.plant is None and "shared_weight_spill_over" in r.measurements
    ]
    if not rows:
        return
    table = make_table(
        "measured, not asserted: training the shared weights themselves on L_λ "
        f"({rows[0][1]['optimizer']}) moves the policy beyond the horizon (T8)"
    )
    for col in ("instance", "max Σ_{t>τ*} KL_t", "max Σ_{t<=τ*} KL_t", "max |Δ log π| determined"):
        table.add_column(col, no_wrap=col != "instance")
    for name, m in rows:
        beyond = m["max_kl_beyond_horizon"]
        table.add_row(
            escape(name),
            "n/a (τ* = T)" if beyond is None else _fmt(beyond),
            _fmt(m["max_kl_within_horizon"]),
            _fmt(m["max_determined_change"]),
        )
    (console or cli_console()).print(table)


def run(args) -> int:
    _check_bounds(args)  # argument errors answer before JAX is imported
    from toy_lm.compile_options import one_off_compiles

    # Most of a first check is compiling small programs that each run a few times; the flags
    # take effect if JAX's backend starts inside (the CLI) and are taken back after, so nothing
    # spawned later (or a test process that ran the command in-process) inherits them.
    with one_off_compiles():
        return _run(args)


def _run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from proofs_check import instances as suite
    from proofs_check.engines import read_through
    from proofs_check.registry import select
    from proofs_check.runner import plan, run_tasks, summarize
    from toy_lm.compile_options import enable_compilation_cache
    from toy_lm.progress import heartbeat

    checks = select(args.theorem)
    if args.list:
        return _list(checks)
    enable_compilation_cache()  # a later check reuses what this one compiles (most of its time)
    if args.json is not None:
        check_output(args.json, flag="--json", tag="check")  # before the long run; target untouched
    if args.mutants is not None:
        return run_mutants(args)
    start = time.perf_counter()
    instances = suite.builtin_suite(
        _kinds(args.policy),
        vocab=args.vocab,
        length=args.length,
        horizon=args.horizon,
        seeds=suite.BUILTIN_SEEDS if args.seeds is None else args.seeds,
        first_seed=args.first_seed,
    )
    instances = read_through(instances, _engines(args.engine))
    tasks = plan(checks, instances, negative_controls=args.negative_controls)
    if not tasks:
        raise InputError("no check applies to the chosen instances; widen --theorem or the sizes")
    err = cli_console(stderr=True)
    console = cli_console()
    # Without a terminal the bar is not drawn: a heartbeat line every few seconds instead.
    pipe = (
        contextlib.nullcontext() if err.is_terminal else heartbeat("check", f"0/{len(tasks)} runs")
    )
    with (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar,
        pipe as beat,
    ):
        job = bar.add_task("checking", total=len(tasks))

        def advance(task, done):
            label = task.check.id + (f" [{task.plant}]" if task.plant else "")
            bar.update(
                job, advance=int(done), description=escape(f"{label:>28} {task.instance.name:<33}")
            )
            if beat is not None:
                beat.update(
                    f"{bar.tasks[job].completed:.0f}/{len(tasks)} runs ({label}, "
                    f"{task.instance.name})"
                )

        results = run_tasks(tasks, advance)
    summaries = summarize(results)
    print_report(summaries, negative_controls=args.negative_controls, console=console)
    if not args.negative_controls:
        print_spill_over(results, console)
    bad = [s for s in summaries if not s.ok]
    what = "planted errors missed" if args.negative_controls else "checks failed"
    console.print(
        f"{len(results)} runs on {len(instances)} instances in "
        f"{time.perf_counter() - start:.1f} s: "
        + (f"[red]{len(bad)} {what}[/]" if bad else "[green]all good[/]")
    )
    if args.json is not None:
        _write_json(args.json, [r.to_json() for r in results])
    return 1 if bad else 0
