"""Mechanical (tool-generated) mutants of the engine modules against the theorem checks (issue 11).

Opt-in, not part of CI or of the test suite: it needs ``mutmut`` 2.x (``pip install "mutmut==2.5.1"``;
mutmut 3 forks after importing the code under test, which is not safe with JAX's threads, and
runs pytest only) and takes about 40-60 minutes per 150 mutants on 2 cores.

How it works. mutmut 2 writes one mutant at a time into the module *on disk* (this checkout must
be the editable install) and runs the test command, which is this script's ``test`` mode:

* ``test`` identifies the mutant by ``git diff`` of the mutated modules, runs the ``inner`` mode
  in a fresh process under a timeout (:data:`TIMEOUT_S`), appends one JSON line to the log
  (:data:`LOG`) and exits **1 iff a theorem check failed a comparison**. mutmut 2.5 counts only
  exit status 1 as a kill, so an exception, a timeout or a crash leaves the mutant "survived" in
  mutmut's own tally: the project counts only failed comparisons as kills. The log tells those
  apart (``verdict``: ``killed``, ``exception``, ``timeout``, ``survived``).
* ``inner`` runs the checks in-process (:func:`proofs_check.runner.run_tasks`) on a tiny suite
  (:data:`SUITE`: a tabular automaton instance, V=3, T=3, binary harm with varying response
  horizons and determined prefixes, and a soft decided harm of the same shapes), cheap checks first,
  and stops at the first failed comparison. JAX's persistent compilation cache
  (:data:`JAX_CACHE`) keeps the programs that the mutant does not touch compiled across processes.
* ``run`` starts mutmut with the configuration below passed as options (nothing is read from
  ``pyproject.toml``/``setup.cfg``); ``report`` prints the tally and the survivors' diffs.

Usage (from the repository root, with a clean ``git status`` for the mutated modules)::

    pip install "mutmut==2.5.1"
    nice -n 19 python experiments/mechanical_mutants.py run toy_lm/engines/tree.py   # default: tree.py
    python experiments/mechanical_mutants.py report
    mutmut results; mutmut show 17   # mutmut's own view (its "survived" includes exceptions)

If a run is interrupted, ``git checkout -- toy_lm/`` restores any module left mutated (mutmut
restores it from ``<module>.bak`` on a normal exit). Results: ``experiments/mechanical_mutants.md``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

__all__ = [
    "DEFAULT_MODULES",
    "JAX_CACHE",
    "LOG",
    "MUTMUT_OPTIONS",
    "ROOT",
    "SLOW",
    "SUITE",
    "TIMEOUT_S",
    "main",
]

ROOT = Path(__file__).resolve().parents[1]
#: Per-mutant log, one JSON object a line (appended; ``run`` starts it afresh).
LOG = Path(os.environ.get("MECHANICAL_MUTANTS_LOG", ROOT / "out" / "mechanical_mutants.jsonl"))
#: JAX persistent compilation cache shared by the mutant processes (keys include the program, so a
#: mutated program never hits an unmutated entry).
JAX_CACHE = Path(os.environ.get("MECHANICAL_MUTANTS_JAX_CACHE", ROOT / "out" / "jax_cache"))
#: Wall-clock limit of one mutant's checks, seconds (an unmutated run takes 20-70 s on 2 busy cores).
TIMEOUT_S = float(os.environ.get("MECHANICAL_MUTANTS_TIMEOUT", 240))
#: The modules mutated by default.
DEFAULT_MODULES = ("toy_lm/engines/tree.py",)
#: mutmut 2 options (passed on its command line; no config file is read or written).
#: String mutants are disabled: in these modules strings are injection-point names (read only while
#: a ``proofs_check.mutants`` mutant is active) and labels of error messages; see the report.
MUTMUT_OPTIONS = (
    "--disable-mutation-types",
    "string",
    "--tests-dir",
    "experiments",
    "--no-progress",
    "--simple-output",
)
#: The checks' instances: (kind, V, T, keyword arguments of make_instance).
SUITE = (
    ("tabular", 3, 3, dict(seed=0, harm_kind="automaton", lam=0.5)),
    ("tabular", 3, 3, dict(seed=1, tau=2, harm_kind="soft")),
)
#: Checks run last (training loops and Monte Carlo: the slowest).
SLOW = ("T8", "T9-train", "T10", "T11-train", "T14", "T14-natural")


def _inner() -> int:
    """Run the checks; print one JSON object: failures, exceptions, checks run, seconds."""
    start = time.perf_counter()
    import jax

    JAX_CACHE.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    from proofs_check import instances as suite
    from proofs_check.engines import read_through
    from proofs_check.registry import select
    from proofs_check.runner import plan, run_tasks

    out = {"failed": [], "errors": [], "ran": 0}
    try:
        insts = read_through(
            [suite.make_instance(k, v, t, **kw) for k, v, t, kw in SUITE], ("tree",)
        )
    except Exception as err:  # noqa: BLE001 - the mutant broke instance building: an exception
        out["errors"].append(f"building the suite: {type(err).__name__}: {err}"[:300])
        insts = []
    tasks = []
    for (
        inst
    ) in insts:  # plan() per check: a mutant that breaks one check's `applies` spares the rest
        for check in select(None):
            try:
                tasks += plan([check], [inst])
            except Exception as err:  # noqa: BLE001
                out["errors"].append(
                    f"{check.id} applies on {inst.name}: {type(err).__name__}: {err}"[:300]
                )
    tasks.sort(key=lambda task: task.check.id in SLOW)  # stable: statement order within each group
    for task in tasks:
        result = run_tasks([task])[0]
        out["ran"] += 1
        where = f"{task.check.id} on {task.instance.name}"
        if result.status == "error":
            out["errors"].append(f"{where}: {result.parts[0].lhs}"[:300])
        elif result.status == "fail":
            bad = [p for p in result.parts if not p.passed]
            out["failed"].append(
                f"{where}: "
                + "; ".join(
                    f"{p.name} (err {p.max_abs_error:.3g}, tol {p.tolerance:.3g})" for p in bad
                )[:300]
            )
            break
    out["seconds"] = round(time.perf_counter() - start, 1)
    print("MECHANICAL_MUTANTS_RESULT " + json.dumps(out))
    return 0


def _mutated_diff() -> str:
    """``git diff`` of the engine modules: the mutant under test ("" for the baseline run)."""
    return subprocess.run(
        ["git", "diff", "-U0", "--", "toy_lm/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _last_error(stderr: str) -> str:
    """The exception line of a traceback (JAX appends a note after it), else the tail."""
    lines = [ln for ln in stderr.splitlines() if "Error" in ln.split(":", 1)[0]]
    return (lines[-1] if lines else stderr[-300:])[:300]


def _test() -> int:
    """mutmut's test command: exit 1 iff a check failed a comparison; log the verdict."""
    diff = _mutated_diff()
    record = {"diff": diff, "time": time.strftime("%H:%M:%S")}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "inner"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        lines = [
            ln for ln in proc.stdout.splitlines() if ln.startswith("MECHANICAL_MUTANTS_RESULT ")
        ]
        if lines:
            result = json.loads(lines[-1].split(" ", 1)[1])
        else:  # the process died (e.g. an abort in native code): not a kill
            result = {
                "failed": [],
                "errors": [f"process exited {proc.returncode}: " + _last_error(proc.stderr)],
                "ran": 0,
            }
    except subprocess.TimeoutExpired:
        result = {"failed": [], "errors": [], "ran": None, "timeout": True}
    result["wall"] = round(time.perf_counter() - start, 1)
    record.update(result)
    record["verdict"] = (
        "killed"
        if result["failed"]
        else "timeout"
        if result.get("timeout")
        else "exception"
        if result["errors"]
        else "survived"
    )
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"[mechanical mutants] {record['verdict']} in {record['wall']} s", file=sys.stderr)
    return 1 if result["failed"] else (3 if record["verdict"] != "survived" else 0)


def _run(modules) -> int:
    """Start mutmut over ``modules`` with :data:`MUTMUT_OPTIONS` and this script as the runner."""
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if dirty.strip():
        print(f"refusing to mutate modified modules:\n{dirty}", file=sys.stderr)
        return 2
    if LOG.exists():
        LOG.rename(LOG.with_suffix(f".{int(time.time())}.jsonl"))
    runner = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} test"
    mutmut = [
        sys.executable,
        "-m",
        "mutmut",
        "run",
        "--paths-to-mutate",
        ",".join(modules),
        "--runner",
        runner,
        *MUTMUT_OPTIONS,
    ]
    print(" ".join(shlex.quote(a) for a in mutmut), file=sys.stderr)
    return subprocess.run(mutmut, cwd=ROOT).returncode


def _report() -> int:
    """Tally of the log, as markdown (the record with an empty diff is mutmut's baseline run)."""
    records = [json.loads(ln) for ln in LOG.read_text().splitlines() if ln.strip()]
    mutants = [r for r in records if r["diff"]]
    tally = {}
    for r in mutants:
        tally[r["verdict"]] = tally.get(r["verdict"], 0) + 1
    nonfinite = sum(
        r["verdict"] == "killed"
        and any(f"err {x}," in r["failed"][0].split(";")[0] for x in ("inf", "nan"))
        for r in mutants
    )
    print(
        f"{len(mutants)} mutants: {tally}; killed with an inf/NaN error in the first failed part: "
        f"{nonfinite}"
    )
    killers = {}
    for r in mutants:
        if r["verdict"] == "killed":
            check = r["failed"][0].split(" on ", 1)[0]
            killers[check] = killers.get(check, 0) + 1
    print(f"first failing check of the killed mutants: {killers}")
    for n, r in enumerate(mutants):
        body = [
            ln for ln in r["diff"].splitlines() if ln[:1] in "+-@" and ln[:3] not in ("+++", "---")
        ]
        why = (r["failed"] or r["errors"] or [""])[0]
        why = _last_error(why) if r["errors"] and not r["failed"] else why
        print(
            f"\n#### {n}. {r['verdict']} ({r['wall']} s) {why[:200]}\n"
            "```diff\n" + "\n".join(body) + "\n```"
        )
    return 0


def main(argv) -> int:
    mode = argv[0] if argv else "help"
    if mode == "inner":
        return _inner()
    if mode == "test":
        return _test()
    if mode == "run":
        return _run(tuple(argv[1:]) or DEFAULT_MODULES)
    if mode == "report":
        return _report()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
