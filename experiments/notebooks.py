"""The demonstrations as Jupyter notebooks (``harm-horizon demo --notebooks DIR``).

The demos are percent-format scripts (``# %%`` cells); :func:`write_notebooks` converts each one
with jupytext into an ``.ipynb`` file with the same cells in the same order (markdown cells as
markdown, code cells as code, no outputs), ready to open and run in Jupyter. A notebook run from
its own folder writes its figures into ``demo_out/<name>`` there, as the script does.
"""

from __future__ import annotations

from pathlib import Path

from toy_lm.errors import InputError
from toy_lm.outputs import write_text

__all__ = ["KERNEL", "write_notebooks"]

#: The kernel the notebooks ask for (ipykernel's default name).
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write_notebooks(out_dir, only=None) -> list[Path]:
    """Write ``out_dir/NN_name.ipynb`` for every demo (or those numbered in ``only``).

    Returns:
      The paths written, in demo order. Each file is written atomically.

    Raises:
      InputError: when jupytext is not installed or ``out_dir`` cannot be created.
    """
    try:
        import jupytext
    except ImportError:
        raise InputError(
            '--notebooks needs jupytext: pip install jupytext (or pip install -e ".[test]")'
        ) from None
    from experiments.report import demo_scripts

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create --notebooks {out_dir}: {err.strerror}") from None
    paths = []
    for script in demo_scripts(only):
        notebook = jupytext.read(script, fmt=".py:percent")
        notebook.metadata["kernelspec"] = dict(KERNEL)
        notebook.metadata.pop("jupytext", None)  # a plain notebook, not paired with the script
        path = out_dir / f"{script.stem}.ipynb"
        write_text(str(path), jupytext.writes(notebook, fmt=".ipynb"), tag="notebooks")
        paths.append(path)
    return paths
