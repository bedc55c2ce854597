"""``harm-horizon demo --notebooks DIR``: the demos as notebooks, one executed by a real kernel."""

import nbformat
import pytest
from nbclient import NotebookClient

from experiments import report
from experiments.cli.main import main
from experiments.demos._support import OUT_ENV, QUICK_ENV


def test_every_demo_becomes_a_notebook_with_the_same_cells(tmp_path, capsys):
    assert main(["demo", "--notebooks", str(tmp_path / "nb")]) == 0
    assert f"wrote {len(report.demo_scripts())} notebooks" in capsys.readouterr().out
    for script in report.demo_scripts():
        nb = nbformat.read(tmp_path / "nb" / f"{script.stem}.ipynb", as_version=4)
        nbformat.validate(nb)
        cells = [(c.cell_type, c.source.strip("\n")) for c in nb.cells if c.source.strip()]
        want = report.parse_cells(script)
        assert [k for k, _ in cells] == [k for k, _ in want], script.name
        for (_, got), (kind, text) in zip(cells, want):
            if kind == "code":
                assert got == text
        assert nb.metadata.kernelspec.name == "python3"


def test_a_notebook_runs_through_a_jupyter_kernel(tmp_path, monkeypatch):
    main(["demo", "--notebooks", str(tmp_path), "--only", "1"])
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv(OUT_ENV, str(out))  # the kernel inherits the environment
    monkeypatch.setenv(QUICK_ENV, "1")
    nb = nbformat.read(tmp_path / "01_harm_martingale.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = " ".join(
        o.get("text", "") + " ".join(map(str, o.get("data", {}).values())) for o in outputs
    )  # rich prints rich display data inside Jupyter
    assert "numbers recorded" in shown and "case0_tau_star" in shown
    assert (out / "martingale_paths.png").stat().st_size > 1000
    assert (out / "record.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo"], "give --out DIR"),
        (["demo", "--notebooks", "FILE"], "is not a folder"),
    ],
)
def test_bad_notebook_arguments_give_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("x")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
