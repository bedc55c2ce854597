"""What every demonstration shares: where figures go, quick mode, and a record for the report.

A demo calls :func:`setup` first; the returned :class:`Demo` saves figures (PNG and SVG) into the
demo's output folder, records the numbers the text refers to and the instances it used (so the
report can run ``harm-horizon check`` on exactly those), keeping ``record.json`` up to date. The runner sets ``HARM_HORIZON_DEMO_OUT`` and ``HARM_HORIZON_DEMO_QUICK``; run
directly, a demo writes into ``demo_out/<name>`` in full mode.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

OUT_ENV = "HARM_HORIZON_DEMO_OUT"
QUICK_ENV = "HARM_HORIZON_DEMO_QUICK"


@dataclasses.dataclass
class Demo:
    """A running demonstration: output folder, quick flag and what it recorded."""

    name: str
    out_dir: Path
    quick: bool
    figures: list = dataclasses.field(default_factory=list)
    numbers: dict = dataclasses.field(default_factory=dict)
    instances: list = dataclasses.field(default_factory=list)
    check_instances: list = dataclasses.field(default_factory=list)

    def save(self, fig, stem: str, caption: str) -> None:
        """Save ``fig`` as ``<stem>.png`` and ``<stem>.svg`` with a caption for the report."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(self.out_dir / f"{stem}.{ext}", dpi=110)
        plt.close(fig)
        self.figures.append({"file": f"{stem}.png", "caption": caption})
        self._write()

    def note(self, **numbers) -> None:
        """Record numbers (floats, ints, lists) that the demo's text talks about."""
        self.numbers.update({k: _plain(v) for k, v in numbers.items()})
        print_numbers(self.name, {k: _plain(v) for k, v in numbers.items()})
        self._write()

    def instance(self, instance, theorems, note: str = "") -> None:
        """Register a :class:`proofs_check.Instance` the report runs ``theorems`` on.

        Pass the demo's own policy, parameters and harm, so the report checks exactly what the
        demo shows (``note`` says so when it cannot, e.g. a tree too large to enumerate).
        """
        self.check_instances.append((instance, tuple(theorems)))
        self.instances.append({"name": instance.name, "theorems": list(theorems), "note": note})
        self._write()

    def _write(self) -> None:
        """Rewrite ``record.json`` (after every change, so a demo needs no closing call)."""
        record = {
            "name": self.name,
            "quick": self.quick,
            "figures": self.figures,
            "numbers": self.numbers,
            "instances": self.instances,
        }
        from toy_lm.outputs import write_atomic

        data = json.dumps(record, indent=2).encode()
        write_atomic(str(self.out_dir / "record.json"), lambda fh: fh.write(data), tag="demo")


def format_value(value, items: int = 8) -> str:
    """A number for the console: 4 significant digits, long lists cut to ``items`` entries."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v, items)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        shown = " ".join(format_value(v, items) for v in value[:items])
        more = f" … ({len(value)} values)" if len(value) > items else ""
        return f"[{shown}{more}]"
    return str(value)


def print_numbers(title: str, numbers: dict) -> None:
    """The numbers a demo recorded, as a two-column table (:mod:`toy_lm.cli_output`)."""
    from toy_lm.cli_output import Column, print_table

    print_table(
        f"{title}: numbers recorded",
        (Column("name", "name", justify="left"), Column("value", "value", justify="left")),
        [{"name": key, "value": format_value(value)} for key, value in numbers.items()],
    )


def _plain(value):
    try:
        import numpy as np

        if isinstance(value, np.ndarray) or hasattr(value, "tolist"):
            return np.asarray(value).tolist()
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return value


def setup(name: str) -> Demo:
    """Turn on float64, make the output folder, return the :class:`Demo`.

    A demo is an entry point (a script, or a notebook's first cell), so it turns float64 on; it
    leaves matplotlib's backend alone (a notebook shows its figures inline; ``harm-horizon demo``
    selects Agg for the whole run).
    """
    from toy_lm.precision import require_x64

    require_x64()
    out_dir = Path(os.environ.get(OUT_ENV) or Path("demo_out") / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    quick = os.environ.get(QUICK_ENV, "0") not in ("", "0", "false")
    return Demo(name=name, out_dir=out_dir, quick=quick)
