"""The numbered demos run (quick mode), and ``harm-horizon demo`` writes a self-contained report."""

import json
import re

import pytest

from experiments import report
from experiments.cli.main import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    status = main(["demo", "--out", str(out), "--quick"])
    return out, status, (out / "report.html").read_text(encoding="utf-8")


def test_every_demo_runs_and_every_check_passes(demo_run):
    out, status, _ = demo_run
    assert status == 0
    scripts = report.demo_scripts()
    assert [s.name[:2] for s in scripts] == ["01", "02", "03", "04", "05", "06", "07"]
    for script in scripts:
        record = json.loads((out / script.stem / "record.json").read_text())
        assert record["quick"] is True
        assert record["figures"], f"{script.stem} saved no figure"
        for fig in record["figures"]:
            assert (out / script.stem / fig["file"]).stat().st_size > 1000
            assert (out / script.stem / fig["file"].replace(".png", ".svg")).exists()
        assert record["instances"], f"{script.stem} registered no instance for the checks"


def test_report_is_self_contained(demo_run):
    out, _, page = demo_run
    # Nothing is fetched when the page is opened: no scripts, stylesheets or remote images.
    assert not re.search(r"<script|<link|<iframe", page, re.I)
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "url(" not in page
    pngs = sum(
        len(json.loads((out / s.stem / "record.json").read_text())["figures"])
        for s in report.demo_scripts()
    )
    assert len(sources) == pngs


def test_report_carries_text_numbers_and_check_results(demo_run):
    _, _, page = demo_run
    for script in report.demo_scripts():
        cells = report.parse_cells(script)
        assert cells[0][0] == "markdown" and "Question." in cells[0][1]
        assert cells[-1][0] == "markdown" and "What you should now believe" in cells[-1][1]
        assert f'id="{script.stem}"' in page
    assert page.count("Theorem checks on this demo's instances") == 7
    assert 'class="fail"' not in page and 'class="pass"' in page
    assert "numbers this run measured" in page


def test_report_links_the_explorer_written_next_to_it(demo_run):
    out, _, page = demo_run
    assert '<a href="explorer.html">' in page
    explorer_page = (out / "explorer.html").read_text(encoding="utf-8")
    assert "const EXPLORER_DATA = " in explorer_page and "ExplorerPort" in explorer_page


def test_demo_scripts_stay_short():
    for script in report.demo_scripts():
        assert len(script.read_text().splitlines()) <= 160, script.name


def test_a_failing_demo_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    demos = tmp_path / "demos"
    demos.mkdir()
    (demos / "01_broken.py").write_text(
        "# %% [markdown]\n# # broken\n# **Question.** Does failure show?\n\n# %%\n"
        "raise RuntimeError('planted failure')\n"
    )
    monkeypatch.setattr(report, "DEMO_DIR", demos)
    runs = report.run_demos(tmp_path / "out", quick=True, progress=lambda msg: None)
    assert len(runs) == 1 and not runs[0].ok and "planted failure" in runs[0].error
    page = report.build_report(runs, tmp_path / "out").read_text()
    assert "This demo failed" in page and "planted failure" in page


def test_parse_cells_splits_markdown_and_code(tmp_path):
    script = tmp_path / "01_x.py"
    script.write_text(
        "# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n# %% [markdown]\n# end\n"
    )
    assert report.parse_cells(script) == [
        ("markdown", "# Title\ntext"),
        ("code", "x = 1"),
        ("markdown", "end"),
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--out", "OUT", "--only", "99"], "no such demo"),
        (["demo", "--out", "FILE"], "is not a folder"),
    ],
)
def test_bad_demo_arguments_give_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a in ("OUT", "FILE") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
