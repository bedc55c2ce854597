"""``harm-horizon train | sweep | figures | experiment``: thin commands over :mod:`experiments`.

* ``harm-horizon train CONFIG [--out DIR]`` - one run of a preset or a ``.toml``/``.json`` file;
* ``harm-horizon sweep CONFIG --out DIR [--jobs N] [--per-run] [--batch-size N]
  [--backend local|ray] [--address ADDR]`` - a sweep (built-in name or file with a ``[sweep]``
  table), vectorized (one compiled program per group of runs) unless ``--per-run``, in local
  processes or on Ray; resumable: rerun the same command to finish an interrupted sweep;
* ``harm-horizon figures DIR`` - the figures of a sweep or experiment folder;
* ``harm-horizon experiment shallow-vs-deep [--quick] --out DIR`` - the headline experiment;
* ``harm-horizon experiment optimum-vs-dynamics [--quick] --out DIR`` - which part of shallowness
  the objective explains and which the optimizer does (THEORY.md T14).
"""

from __future__ import annotations

import os

from experiments.config import POLICY_KINDS
from toy_lm.cli_output import Column, print_json, print_table
from toy_lm.errors import ConfigError
from toy_lm.outputs import check_output_folder, null_nonfinite

__all__ = [
    "RUN_COLUMNS",
    "register",
    "run_experiment",
    "run_figures",
    "run_optimum_vs_dynamics",
    "run_rows",
    "run_sweep",
    "run_train",
    "show",
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train and measure one configuration",
        description="One run: base model by SFT, alignment, exact "
        "measurements, fine-tuning attack. CONFIG is a preset name "
        "(default, quick, transformer, quick-transformer, markov) or a "
        ".toml/.json file.",
    )
    p.add_argument("config", metavar="CONFIG")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output folder (default: results/<config name>)"
    )
    p.add_argument("--figures", action="store_true", help="also draw the figures")
    _json_flag(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "sweep",
        help="run a grid or list of configurations (resumable)",
        description="Run a sweep; interrupted, the same command completes "
        "the missing runs only. CONFIG is a built-in sweep (quick, "
        "objectives, lambda, baselines) or a file with a [sweep] table.",
    )
    p.add_argument("config", metavar="CONFIG")
    _out_and_jobs(p)
    p.add_argument(
        "--per-run",
        action="store_true",
        help="one run at a time (the reference path) instead of vectorized batches",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="most runs per vectorized batch (default 256; memory may cap it lower)",
    )
    _json_flag(p)
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: a pool of --jobs processes (default); ray: Ray tasks, on a local "
        "Ray instance of --jobs CPUs or the cluster at --address (needs "
        'pip install "harm-horizon[ray]")',
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="with --backend ray: join the Ray cluster at ADDR (host:port of its head "
        "node, or auto) instead of starting a local instance",
    )
    p.set_defaults(func=run_sweep)

    p = subparsers.add_parser(
        "figures",
        help="draw the figures of a results folder",
        description="PNG and SVG figures into DIR/figures.",
    )
    p.add_argument("dir", metavar="DIR")
    _json_flag(p)
    p.set_defaults(func=run_figures)

    p = subparsers.add_parser(
        "experiment",
        help="run a named experiment (shallow-vs-deep, optimum-vs-dynamics)",
        description="shallow-vs-deep, the headline experiment: base, "
        "KL-regularized RLHF, DPO, recovery augmentation and the recovery "
        "penalty. optimum-vs-dynamics: prefill ASR at decided and undecided "
        "forced prefixes for the optimum and for plain gradient descent, "
        "natural gradient and Adam over budgets 10 ... 10^4 (THEORY.md T14). "
        "Both write figures and summary.json.",
    )
    p.add_argument("name", choices=("shallow-vs-deep", "optimum-vs-dynamics"))
    p.add_argument(
        "--quick", action="store_true", help="the small, fast variant (minutes on 2 cores)"
    )
    _out_and_jobs(p)
    p.add_argument(
        "--policy",
        default="tabular",
        choices=POLICY_KINDS,
        help="policy parameterization (default: tabular)",
    )
    _json_flag(p)
    p.set_defaults(func=run_experiment)


def _json_flag(p) -> None:
    p.add_argument(
        "--json", action="store_true", help="print the results as JSON on stdout instead of a table"
    )


#: The columns of a table of measured policies (train, sweep, experiment shallow-vs-deep).
RUN_COLUMNS = (
    Column("name", "policy", justify="left"),
    Column("expected_harm", "E[h]", "{:.3f}"),
    Column("utility", "utility", "{:.3f}"),
    Column("prefill_asr", "prefill ASR(k)", "{:.3f}", justify="left"),
    Column("per_position_kl", "KL_t (teacher-forced)", "{:.3f}", justify="left"),
)


def run_rows(results) -> list[dict]:
    """One row per measured policy: the shared base model, then each run's aligned policy."""
    from experiments.labels import labels

    keys = [c.key for c in RUN_COLUMNS[1:]]
    base = results[0]["base"]
    rows = [
        {
            "name": "base",
            **{k: base.get(k) for k in keys},
            "harm_information": base["harm_information"],
        }
    ]
    for result, name in zip(results, labels(results)):
        rows.append(
            {
                "name": name,
                "run_id": result["run_id"],
                **{k: result["aligned"].get(k) for k in keys},
            }
        )
    return rows


def show(
    title: str, rows: list[dict], payload: dict, *, as_json: bool, caption: str, columns=RUN_COLUMNS
) -> None:
    """The one output of the experiment commands: ``payload`` as JSON, or ``rows`` as a table."""
    if as_json:
        print_json(null_nonfinite(payload))
    else:
        print_table(title, columns, rows, caption=caption)


def _setup() -> None:
    from toy_lm.compile_options import enable_compilation_cache

    enable_compilation_cache()


def _out_and_jobs(p) -> None:
    """The ``--out DIR`` (required) and ``--jobs N`` options of ``sweep`` and ``experiment``."""
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel worker processes (default: 2, or 1 on one core)",
    )


def _check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise ConfigError(f"--jobs={jobs} must be at least 1")


def run_train(args) -> int:
    _setup()
    from experiments import figures, results
    from experiments.config import check_run_memory
    from experiments.presets import load_config
    from experiments.train import result_path, train_and_evaluate

    cfg = load_config(args.config)
    out = check_output_folder(
        os.path.join("results", cfg.name) if args.out is None else args.out, flag="--out"
    )
    check_run_memory(cfg)
    from toy_lm.progress import heartbeat

    with heartbeat("train", f"training and measuring {cfg.name}"):
        result = train_and_evaluate(cfg, out)
    results.write_tables([result], out)
    if args.figures:
        figures.make_figures(out, [result])
    path = result_path(out, cfg)
    show(
        f"train {cfg.name}",
        run_rows([result]),
        {"result": path, "runs": run_rows([result])},
        as_json=args.json,
        caption=f"result: {path} ({result['seconds']['total']:.1f} s)",
    )
    return 0


def run_sweep(args) -> int:
    _setup()
    from experiments import sweep

    _check_jobs(args.jobs)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} must be at least 1")
    configs = sweep.load_sweep(args.config)
    check_output_folder(args.out, flag="--out")
    from toy_lm.progress import heartbeat

    with heartbeat("sweep", f"running {len(configs)} configurations"):
        results = sweep.run_sweep(
            configs,
            args.out,
            jobs=args.jobs,
            per_run=args.per_run,
            batch_size=args.batch_size,
            backend=args.backend,
            address=args.address,
        )
    rows = run_rows(results)
    show(
        f"sweep {args.config}: {len(results)} runs",
        rows,
        {"out": args.out, "runs": rows},
        as_json=args.json,
        caption=f"results: {os.path.join(args.out, 'runs')}",
    )
    return 0


def run_figures(args) -> int:
    from experiments import figures

    paths = figures.make_figures(args.dir)
    show(
        f"figures of {args.dir}",
        [{"file": p} for p in paths],
        {"figures": paths},
        as_json=args.json,
        caption=f"wrote {len(paths)} files into {os.path.join(args.dir, 'figures')}",
        columns=(Column("file", "file", justify="left"),),
    )
    return 0


def run_experiment(args) -> int:
    _setup()
    _check_jobs(args.jobs)
    if args.name == "optimum-vs-dynamics":  # checks its own options before touching --out
        return run_optimum_vs_dynamics(args)
    check_output_folder(args.out, flag="--out")
    from experiments import headline
    from toy_lm.progress import heartbeat

    with heartbeat("experiment", "training and measuring (a line per finished run)"):
        summary = headline.run_headline(
            args.out, quick=args.quick, jobs=args.jobs, policy=args.policy
        )
    rows = [{"name": "base", **summary["base"]}] + [
        {"name": name, **row} for name, row in summary["objectives"].items() if name != "base"
    ]
    shape = "; ".join(
        f"{key}: {value['holds']}"
        for key, value in summary["shape"].items()
        if isinstance(value, dict)
    )
    show(
        f"shallow-vs-deep ({'quick' if args.quick else 'full'}, {summary['policy']}) in "
        f"{summary['seconds']:.0f} s",
        rows,
        summary,
        as_json=args.json,
        caption=f"{summary['horizon']['explanation']}\n{shape}\nsummary: "
        f"{os.path.join(args.out, 'summary.json')}; figures: {os.path.join(args.out, 'figures')}",
    )
    return 0


def run_optimum_vs_dynamics(args) -> int:
    from experiments.dynamics import run_dynamics

    if args.policy != "tabular":
        raise ConfigError(
            "--policy does not apply to optimum-vs-dynamics: it always trains tabular "
            "policies (plain GD, natural gradient, Adam) and a transformer with Adam"
        )
    check_output_folder(args.out, flag="--out")
    summary = run_dynamics(args.out, quick=args.quick)
    show(
        f"optimum-vs-dynamics ({'quick' if args.quick else 'full'}) in {summary['seconds']:.0f} s",
        [{"finding": line} for line in summary["findings"]],
        summary,
        as_json=args.json,
        columns=(Column("finding", "finding", justify="left"),),
        caption=f"summary: {os.path.join(args.out, 'summary.json')}; figures: "
        f"{os.path.join(args.out, 'figures')}",
    )
    return 0
