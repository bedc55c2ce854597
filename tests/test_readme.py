"""Every Python block of README.md runs as written, in a fresh interpreter.

Each block is extracted and executed in its own process (no conftest, no Hypothesis profile: what
a reader who copies it gets); a block that defines ``test_*`` functions has them called too, as
pytest would. So the README cannot rot silently.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CALL_TESTS = """
for _name, _fn in list(globals().items()):
    if _name.startswith("test_") and callable(_fn):
        _fn()
        print("called", _name)
"""


def python_blocks(text: str) -> list[str]:
    """The contents of the fenced ```python blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_readme_has_python_blocks():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3 and all(b.strip() for b in blocks)


def test_python_blocks_are_found():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = 2\n"]


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text(encoding="utf-8")))))
def test_readme_python_block_runs_as_written(index, tmp_path):
    block = python_blocks(README.read_text(encoding="utf-8"))[index]
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(block + CALL_TESTS, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"README block {index} failed:\n{block}\n{proc.stderr[-3000:]}"
    defined = re.findall(r"^def (test_\w+)", block, re.M)
    assert proc.stdout.count("called ") == len(defined)
