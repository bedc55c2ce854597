"""``harm-horizon demo``: run the numbered demonstrations and write one self-contained HTML report."""

from __future__ import annotations

import os

from toy_lm.cli_output import say
from toy_lm.errors import InputError

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the teaching demonstrations and write a self-contained HTML report",
        description="Runs experiments/demos/NN_*.py in order, then the theorem checks on the "
        "instances each demo used, and writes OUT/report.html (figures embedded). "
        "With --notebooks DIR, also (or, without --out, only) writes the demos as "
        "Jupyter notebooks.",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (created if needed)")
    p.add_argument(
        "--notebooks",
        metavar="DIR",
        help="write the demos as .ipynb notebooks into DIR (needs jupytext)",
    )
    p.add_argument("--quick", action="store_true", help="smaller settings (what the tests run)")
    p.add_argument("--only", nargs="+", type=int, metavar="N", help="only these demo numbers")
    p.add_argument(
        "--no-checks", action="store_true", help="skip the theorem checks on the demos' instances"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from experiments.report import build_report, demo_scripts, run_demos

    if args.out is None and args.notebooks is None:
        raise InputError("give --out DIR (run the demos) and/or --notebooks DIR (write notebooks)")
    for flag, folder in (("--out", args.out), ("--notebooks", args.notebooks)):
        if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
            raise InputError(f"{flag} {folder} exists and is not a folder; choose another path")
    if args.only:
        known = sorted(int(s.name[:2]) for s in demo_scripts())
        unknown = sorted(set(args.only) - set(known))
        if unknown:
            raise InputError(f"--only {unknown}: no such demo; choose from {known}")
    if args.notebooks is not None:
        from experiments.notebooks import write_notebooks

        paths = write_notebooks(args.notebooks, args.only)
        print(f"wrote {len(paths)} notebooks into {args.notebooks}")
        if args.out is None:
            return 0
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create --out {args.out}: {err.strerror}") from None

    from toy_lm.progress import heartbeat

    with heartbeat("demo", "starting") as beat:

        def progress(msg):
            say(msg)
            beat.update(f"working (last: {msg.removeprefix('[demo] ').splitlines()[0]})")
            beat.touch()

        runs = run_demos(
            args.out,
            quick=args.quick,
            only=args.only,
            with_checks=not args.no_checks,
            progress=progress,
        )
        from experiments.explorer import write_explorer

        progress("[demo] writing the interactive explorer (explorer.html) ...")
        write_explorer(os.path.join(args.out, "explorer.html"))
    path = build_report(runs, args.out)
    failed = [r.script.stem for r in runs if not r.ok]
    checks = sum(len(r.checks) for r in runs)
    print(
        f"report: {path} ({len(runs)} demos, {checks} theorem checks"
        f"{', failed: ' + ', '.join(failed) if failed else ', all passed'})"
    )
    return 1 if failed else 0
