"""Print pip constraints pinning every dependency of harm-horizon to its floor (``>=X`` -> ``==X``).

The core dependencies and the ``numba`` and ``experiments`` extras, read from pyproject.toml, so
the floors are written once. ``.ci/run`` installs them into a separate venv and runs a subset of
the tests there: a floor that is older than an API the code uses fails CI.
"""

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
for req in project["dependencies"] + extras["numba"] + extras["experiments"]:
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9][0-9A-Za-z.]*)", req.replace(" ", ""))
    if match is None:
        raise SystemExit(f"pyproject.toml: {req!r} has no plain >= floor")
    print(f"{match[1]}=={match[2]}")
# Transitive pins of the floors' own time: matplotlib before 3.11 calls pyparsing's camelCase
# API, which pyparsing 3.3 deprecates with a warning (an error under the tests' filterwarnings).
print("pyparsing<3.3")
