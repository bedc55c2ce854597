"""Run the numbered demonstrations and build one self-contained HTML report.

:func:`run_demos` executes each ``experiments/demos/NN_*.py`` script in turn (in-process, with
``HARM_HORIZON_DEMO_OUT`` pointing at ``OUT/NN_name``), catching a failing demo so the others
still run. :func:`build_report` turns the scripts' markdown cells, their figures (embedded as
base64 PNG), the numbers each run recorded and the theorem-check results for the instances each
demo used into ``OUT/report.html`` — one file, no network access needed to view it.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
import re
import runpy
import time
import traceback
from pathlib import Path

__all__ = [
    "DEMO_DIR",
    "DemoRun",
    "build_report",
    "demo_scripts",
    "demo_section",
    "markdown_to_html",
    "parse_cells",
    "run_demos",
    "run_instance_checks",
]

DEMO_DIR = Path(__file__).parent / "demos"


def demo_scripts(only=None) -> list[Path]:
    """The numbered demo scripts in order, optionally only those whose number is in ``only``."""
    scripts = sorted(DEMO_DIR.glob("[0-9][0-9]_*.py"))
    if only:
        wanted = {f"{int(n):02d}" for n in only}
        scripts = [s for s in scripts if s.name[:2] in wanted]
    return scripts


@dataclasses.dataclass
class DemoRun:
    """One executed demo: where it wrote, how long it took, its error (if any) and check results."""

    script: Path
    out_dir: Path
    seconds: float
    error: str | None
    checks: list = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(r["passed"] for r in self.checks)


def run_instance_checks(demo, progress=print) -> list[dict]:
    """Run each registered ``(instance, theorems)`` of a finished demo; one JSON record per result."""
    from proofs_check import select

    records = []
    for instance, theorems in demo.check_instances:
        for check in select(theorems):
            if not check.applies(instance):
                continue
            record = check.run(instance).to_json()
            records.append(record)
            if not record["passed"]:
                progress(f"[demo] check {record['check']} FAILED on {record['instance']}")
    return records


def run_demos(
    out_dir, *, quick: bool = False, only=None, with_checks: bool = True, progress=print
) -> list[DemoRun]:
    """Execute the demos, each writing into ``out_dir/<script stem>``.

    With ``with_checks``, the theorem checks of :mod:`proofs_check` then run on the instances each
    demo registered with ``demo.instance(...)`` (the same policy, parameters and harm it showed).
    """
    from experiments.demos._support import OUT_ENV, QUICK_ENV

    out_dir = Path(out_dir)
    runs = []
    saved = {k: os.environ.get(k) for k in (OUT_ENV, QUICK_ENV)}
    try:
        for script in demo_scripts(only):
            target = out_dir / script.stem
            target.mkdir(parents=True, exist_ok=True)
            os.environ[OUT_ENV] = str(target)
            os.environ[QUICK_ENV] = "1" if quick else "0"
            progress(f"[demo] {script.stem} ...")
            start = time.perf_counter()
            error, checks = None, []
            try:
                namespace = runpy.run_path(str(script), run_name="__main__")
            except Exception:  # a failing demo is reported, the others still run
                error = traceback.format_exc(limit=5)
                progress(f"[demo] {script.stem} FAILED:\n{error}")
            seconds = time.perf_counter() - start
            progress(f"[demo] {script.stem} done in {seconds:.1f} s")
            if error is None and with_checks and "demo" in namespace:
                start = time.perf_counter()
                checks = run_instance_checks(namespace["demo"], progress)
                progress(
                    f"[demo] {script.stem}: {len(checks)} theorem checks in "
                    f"{time.perf_counter() - start:.1f} s"
                )
            runs.append(DemoRun(script, target, seconds, error, checks))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return runs


def parse_cells(script: Path) -> list[tuple[str, str]]:
    """``[(kind, text)]`` of a percent-format script; kind is ``"markdown"`` or ``"code"``."""
    cells, kind, lines = [], None, []
    for line in script.read_text().splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                cells.append((kind, "\n".join(lines).strip("\n")))
            kind = "markdown" if "[markdown]" in line else "code"
            lines = []
        elif kind == "markdown":
            lines.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        cells.append((kind, "\n".join(lines).strip("\n")))
    return [(k, t) for k, t in cells if t.strip()]


_CSS = """
body { font-family: Georgia, serif; max-width: 60em; margin: 2em auto; padding: 0 1em;
       line-height: 1.5; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { color: #334; }
code { background: #f2f2f2; padding: 0 0.2em; font-size: 0.92em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
details { margin: 0.5em 0; } summary { cursor: pointer; color: #555; }
figure { margin: 1em 0; text-align: center; } img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
.pass { color: #186a18; font-weight: bold; } .fail { color: #a01010; font-weight: bold; }
.error { background: #fff0f0; border: 1px solid #d99; padding: 0.5em; }
nav { background: #fafafa; border: 1px solid #ddd; padding: 0.5em 1em; }
"""


def markdown_to_html(text: str) -> str:
    import markdown

    return markdown.markdown(text, extensions=["extra"])


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _numbers_table(numbers: dict) -> str:
    if not numbers:
        return ""
    rows = "".join(
        f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in numbers.items()
    )
    return (
        "<details><summary>numbers this run measured</summary><table>"
        f"<tr><th>name</th><th>value</th></tr>{rows}</table></details>"
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _checks_table(results: list[dict]) -> str:
    if not results:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(r['check'])}</td><td>{html.escape(r['statement'])}</td>"
        f"<td>{html.escape(r['instance'])}</td><td>{r['max_abs_error']:.3g}</td>"
        f"<td>{r['tolerance']:.3g}</td>"
        f'<td class="{"pass" if r["passed"] else "fail"}">{"pass" if r["passed"] else "FAIL"}'
        "</td></tr>"
        for r in results
    )
    return (
        "<h3>Theorem checks on this demo's instances</h3><table><tr><th>check</th>"
        "<th>statement</th><th>instance</th><th>worst error</th><th>tolerance</th>"
        f"<th>status</th></tr>{rows}</table>"
    )


def demo_section(run: DemoRun, check_results: list[dict]) -> str:
    """HTML for one demo: its cells in order, figures after the cell that saved them."""
    record_path = run.out_dir / "record.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    captions = {f["file"]: f["caption"] for f in record.get("figures", [])}
    parts = [f'<section id="{run.script.stem}">']
    for kind, text in parse_cells(run.script):
        if kind == "markdown":
            parts.append(markdown_to_html(text))
            continue
        parts.append(f"<details><summary>code</summary><pre>{html.escape(text)}</pre></details>")
        for stem in re.findall(r'demo\.save\(\s*\w+\s*,\s*"([^"]+)"', text):
            png = run.out_dir / f"{stem}.png"
            if png.exists():
                parts.append(_figure(png, captions.get(png.name, stem)))
    if run.error:
        parts.append(
            f'<div class="error"><b>This demo failed:</b><pre>{html.escape(run.error)}</pre></div>'
        )
    parts.append(_numbers_table(record.get("numbers", {})))
    notes = [i for i in record.get("instances", []) if i.get("note")]
    parts.append(_checks_table(check_results))
    parts.extend(
        f"<p><small>Checked instance <code>{html.escape(i['name'])}</code>: "
        f"{html.escape(i['note'])}.</small></p>"
        for i in notes
    )
    parts.append(
        f"<p><small>ran in {run.seconds:.1f} s"
        f"{' (quick mode)' if record.get('quick') else ''}</small></p></section>"
    )
    return "\n".join(parts)


def build_report(runs: list[DemoRun], out_dir) -> Path:
    """Write ``out_dir/report.html`` (atomically) and return its path."""
    from toy_lm import __version__

    nav = "".join(
        f'<li><a href="#{r.script.stem}">{html.escape(r.script.stem)}</a></li>' for r in runs
    )
    link = ""
    if (Path(out_dir) / "explorer.html").exists():  # written next to the report by the demo command
        link = (
            '<p><a href="explorer.html">The interactive explorer</a>: flip a leaf\'s harm, '
            "drag a probability or move λ and watch H_t, G, I_t and τ* change.</p>"
        )
    body = "\n<hr>\n".join(demo_section(r, r.checks) for r in runs)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>harm-horizon: why alignment gradients stop at the harm horizon</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>harm-horizon demonstrations</h1>"
        "<p>Why RLHF-style alignment only changes the first few tokens of a response, computed "
        "exactly on small models. Every number and figure below was produced by the run that wrote "
        f"this file (harm-horizon {__version__}); the theorem statements are in THEORY.md.</p>"
        f"<nav><b>Contents</b><ol>{nav}</ol>{link}</nav>{body}</body></html>"
    )
    from toy_lm.outputs import write_atomic

    path = Path(out_dir) / "report.html"
    data = page.encode("utf-8")
    write_atomic(str(path), lambda fh: fh.write(data), tag="demo")
    return path
